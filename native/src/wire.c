/* Protobuf wire codec of the FraudDetection messages (see vg_wire.h). */
#include "voxguard/vg_wire.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

enum { WT_VARINT = 0, WT_FIXED64 = 1, WT_LEN = 2, WT_SGROUP = 3, WT_EGROUP = 4, WT_FIXED32 = 5 };
#define MAX_GROUP_DEPTH 32

static int fail(char *err, size_t errcap, const char *fmt, ...) {
    if (errcap > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errcap, fmt, ap);
        va_end(ap);
    }
    return VG_INVALID_ARGUMENT;
}

/* Reads a varint at *pos; returns 0, or -1 when truncated or longer than 10 bytes. */
static int read_varint(const uint8_t *buf, size_t len, size_t *pos, uint64_t *value) {
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (*pos >= len) {
            return -1;
        }
        uint8_t b = buf[(*pos)++];
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *value = v;
            return 0;
        }
    }
    return -1;
}

static float load_float(const uint8_t *p) {
    uint32_t bits = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Reads a tag; returns 0, or a status with a message when the tag is malformed. */
static int read_tag(const uint8_t *buf, size_t len, size_t *pos, uint32_t *field, int *wire, char *err, size_t errcap) {
    size_t at = *pos;
    uint64_t tag;
    *field = 0;
    *wire = 0;
    if (read_varint(buf, len, pos, &tag) != 0) {
        return fail(err, errcap, "malformed request: truncated tag at byte %zu", at);
    }
    *field = (uint32_t)(tag >> 3);
    *wire = (int)(tag & 7);
    if (tag >> 3 == 0 || tag >> 3 > 0x1FFFFFFF) {
        return fail(err, errcap, "malformed request: invalid field number at byte %zu", at);
    }
    return VG_OK;
}

/* Skips the value of a field of wire type `wire` (groups up to their matching end tag). */
static int skip_value(const uint8_t *buf, size_t len, size_t *pos, uint32_t field, int wire, int depth, char *err,
                      size_t errcap) {
    uint64_t n;
    size_t at = *pos;
    switch (wire) {
    case WT_VARINT:
        if (read_varint(buf, len, pos, &n) != 0) {
            return fail(err, errcap, "malformed request: truncated varint of field %u at byte %zu", field, at);
        }
        return VG_OK;
    case WT_FIXED64:
        if (len - *pos < 8) {
            return fail(err, errcap, "malformed request: truncated 64-bit value of field %u", field);
        }
        *pos += 8;
        return VG_OK;
    case WT_FIXED32:
        if (len - *pos < 4) {
            return fail(err, errcap, "malformed request: truncated 32-bit value of field %u", field);
        }
        *pos += 4;
        return VG_OK;
    case WT_LEN:
        if (read_varint(buf, len, pos, &n) != 0 || n > len - *pos) {
            return fail(err, errcap, "malformed request: field %u's length runs past the end of the message", field);
        }
        *pos += (size_t)n;
        return VG_OK;
    case WT_SGROUP:
        if (depth >= MAX_GROUP_DEPTH) {
            return fail(err, errcap, "malformed request: groups nested deeper than %d", MAX_GROUP_DEPTH);
        }
        for (;;) {
            uint32_t f;
            int w;
            if (*pos >= len) {
                return fail(err, errcap, "malformed request: group %u is not closed", field);
            }
            int status = read_tag(buf, len, pos, &f, &w, err, errcap);
            if (status != VG_OK) {
                return status;
            }
            if (w == WT_EGROUP) {
                if (f != field) {
                    return fail(err, errcap, "malformed request: group %u closed by end tag %u", field, f);
                }
                return VG_OK;
            }
            status = skip_value(buf, len, pos, f, w, depth + 1, err, errcap);
            if (status != VG_OK) {
                return status;
            }
        }
    case WT_EGROUP:
        return fail(err, errcap, "malformed request: unexpected end-group tag of field %u", field);
    default:
        return fail(err, errcap, "malformed request: invalid wire type %d of field %u", wire, field);
    }
}

/* Valid UTF-8 (no overlong forms, no surrogates, at most U+10FFFF), as proto3 requires of a string. */
static int valid_utf8(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i += 1;
            continue;
        }
        size_t n;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            n = 1, cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2, cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3, cp = c & 0x07;
        } else {
            return 0;
        }
        if (len - i <= n) {
            return 0;
        }
        for (size_t k = 1; k <= n; ++k) {
            if ((s[i + k] & 0xC0) != 0x80) {
                return 0;
            }
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
            return 0;
        }
        i += n + 1;
    }
    return 1;
}

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

static size_t varint_size(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        ++n;
    }
    return n;
}

static uint8_t *put_varint(uint8_t *out, uint64_t v) {
    while (v >= 0x80) {
        *out++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *out++ = (uint8_t)v;
    return out;
}

static uint32_t float_bits(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    return bits;
}

static uint8_t *put_float(uint8_t *out, uint32_t tag, float f) {
    uint32_t bits = float_bits(f);
    *out++ = (uint8_t)tag;
    out[0] = (uint8_t)bits;
    out[1] = (uint8_t)(bits >> 8);
    out[2] = (uint8_t)(bits >> 16);
    out[3] = (uint8_t)(bits >> 24);
    return out + 4;
}

static uint8_t *put_bytes(uint8_t *out, uint32_t tag, const void *data, size_t n) {
    *out++ = (uint8_t)tag;
    out = put_varint(out, n);
    memcpy(out, data, n);
    return out + n;
}

static size_t bytes_size(size_t n) {
    return 1 + varint_size(n) + n;
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
