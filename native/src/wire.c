/* Protobuf wire codec of the FraudDetection messages (see vg_wire.h). */
#include "voxguard/vg_wire.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "pb.h"

static int add_feature(vg_request *req, float value, char *err, size_t errcap) {
    if (req->num_features >= VG_MAX_FEATURES) {
        return fail(err, errcap, "features: more than %d values", VG_MAX_FEATURES);
    }
    if (isinf(value)) {
        return fail(err, errcap, "features[%d] is %cInf; send finite values (NaN means missing)", req->num_features,
                    value > 0 ? '+' : '-');
    }
    req->features[req->num_features++] = value;
    return VG_OK;
}

int vg_wire_decode_request(const uint8_t *buf, size_t len, vg_request *req, char *err, size_t errcap) {
    size_t pos = 0;
    req->num_features = 0;
    req->request_id = NULL;
    req->request_id_len = 0;
    req->explain_top_k = 0;
    while (pos < len) {
        uint32_t field;
        int wire;
        int status = read_tag(buf, len, &pos, &field, &wire, err, errcap);
        if (status != VG_OK) {
            return status;
        }
        if (field == 1 && wire == WT_LEN) {
            uint64_t n;
            if (read_varint(buf, len, &pos, &n) != 0 || n > len - pos) {
                return fail(err, errcap, "malformed request: packed features run past the end of the message");
            }
            if (n % 4 != 0) {
                return fail(err, errcap, "malformed request: packed features of %llu bytes, not a multiple of 4",
                            (unsigned long long)n);
            }
            for (size_t end = pos + (size_t)n; pos < end; pos += 4) {
                if ((status = add_feature(req, load_float(buf + pos), err, errcap)) != VG_OK) {
                    return status;
                }
            }
        } else if (field == 1 && wire == WT_FIXED32) {
            if (len - pos < 4) {
                return fail(err, errcap, "malformed request: truncated feature value");
            }
            if ((status = add_feature(req, load_float(buf + pos), err, errcap)) != VG_OK) {
                return status;
            }
            pos += 4;
        } else if (field == 2 && wire == WT_LEN) {
            uint64_t n;
            if (read_varint(buf, len, &pos, &n) != 0 || n > len - pos) {
                return fail(err, errcap, "malformed request: request_id runs past the end of the message");
            }
            if (!valid_utf8(buf + pos, (size_t)n)) {
                return fail(err, errcap, "request_id is not valid UTF-8");
            }
            req->request_id = buf + pos;
            req->request_id_len = (size_t)n;
            pos += (size_t)n;
        } else if (field == 3 && wire == WT_VARINT) {
            uint64_t k;
            if (read_varint(buf, len, &pos, &k) != 0) {
                return fail(err, errcap, "malformed request: truncated varint of field 3 (explain_top_k)");
            }
            req->explain_top_k = (uint32_t)k; /* proto3 keeps the low 32 bits of a wider varint */
        } else if ((status = skip_value(buf, len, &pos, field, wire, 0, err, errcap)) != VG_OK) {
            return status; /* unknown fields, and known ones with another wire type (as protobuf does), skipped */
        }
    }
    return VG_OK;
}

int vg_wire_next_row(const uint8_t *buf, size_t len, size_t *pos, const uint8_t **row, size_t *row_len, char *err,
                     size_t errcap) {
    while (*pos < len) {
        uint32_t field;
        int wire;
        if (read_tag(buf, len, pos, &field, &wire, err, errcap) != VG_OK) {
            return -1;
        }
        if (field == 1 && wire == WT_LEN) {
            uint64_t n;
            if (read_varint(buf, len, pos, &n) != 0 || n > len - *pos) {
                fail(err, errcap, "malformed request: a row runs past the end of the message");
                return -1;
            }
            *row = buf + *pos;
            *row_len = (size_t)n;
            *pos += (size_t)n;
            return 1;
        }
        if (skip_value(buf, len, pos, field, wire, 0, err, errcap) != VG_OK) {
            return -1;
        }
    }
    return 0;
}

/* A Reason message's body: feature = 1, value = 2, contribution = 3 (defaults left out). */
static size_t reason_size(const vg_reason *r) {
    return (r->feature_len ? bytes_size(r->feature_len) : 0) + (float_bits(r->value) ? 5 : 0) +
           (float_bits(r->contribution) ? 5 : 0);
}

/* proto3 canonical form: fields holding their default (false, +0.0, "") are left out. The explanation fields are
 * reasons = 5, bias = 6, explain_error = 7 of a PredictionResponse and one number later in a ScoredPrediction. */
size_t vg_wire_response_size(const vg_response *r) {
    size_t n = 0;
    n += r->is_fraud ? 2 : 0;
    n += float_bits(r->probability) ? 5 : 0;
    n += r->model_version_len ? bytes_size(r->model_version_len) : 0;
    n += float_bits(r->latency_ms) ? 5 : 0;
    n += (r->scored && r->request_id_len) ? bytes_size(r->request_id_len) : 0;
    for (int32_t i = 0; i < r->num_reasons; ++i) {
        n += bytes_size(reason_size(&r->reasons[i]));
    }
    n += (r->explained && float_bits(r->bias)) ? 5 : 0;
    n += r->explain_error_len ? bytes_size(r->explain_error_len) : 0;
    return n;
}

uint8_t *vg_wire_encode_response(const vg_response *r, uint8_t *out) {
    const uint32_t shift = r->scored ? 1 : 0;
    if (r->is_fraud) {
        *out++ = 0x08;
        *out++ = 1;
    }
    if (float_bits(r->probability)) {
        out = put_float(out, 0x15, r->probability);
    }
    if (r->model_version_len) {
        out = put_bytes(out, 0x1A, r->model_version, r->model_version_len);
    }
    if (float_bits(r->latency_ms)) {
        out = put_float(out, 0x25, r->latency_ms);
    }
    if (r->scored && r->request_id_len) {
        out = put_bytes(out, 0x2A, r->request_id, r->request_id_len);
    }
    for (int32_t i = 0; i < r->num_reasons; ++i) {
        const vg_reason *reason = &r->reasons[i];
        *out++ = (uint8_t)(((5 + shift) << 3) | WT_LEN);
        out = put_varint(out, reason_size(reason));
        if (reason->feature_len) {
            out = put_bytes(out, 0x0A, reason->feature, reason->feature_len);
        }
        if (float_bits(reason->value)) {
            out = put_float(out, 0x15, reason->value);
        }
        if (float_bits(reason->contribution)) {
            out = put_float(out, 0x1D, reason->contribution);
        }
    }
    if (r->explained && float_bits(r->bias)) {
        out = put_float(out, ((6 + shift) << 3) | WT_FIXED32, r->bias);
    }
    if (r->explain_error_len) {
        out = put_bytes(out, ((7 + shift) << 3) | WT_LEN, r->explain_error, r->explain_error_len);
    }
    return out;
}

size_t vg_wire_item_size(const vg_response *r) {
    size_t body = vg_wire_response_size(r);
    return 1 + varint_size(body) + body;
}

uint8_t *vg_wire_encode_item(const vg_response *r, uint32_t field, uint8_t *out) {
    *out++ = (uint8_t)((field << 3) | WT_LEN);
    out = put_varint(out, vg_wire_response_size(r));
    return vg_wire_encode_response(r, out);
}
