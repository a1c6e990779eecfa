/* ModelInfer of the Open Inference Protocol (KServe V2) over the serving core: VG_CALL_INFER of vg_core_handle.
 *
 * One request is one input tensor "features" (FP32 [N, F], as raw_input_contents or as fp32_contents) scored by
 * one model: the version it names when that version is serving, else champion or challenger routed like Predict
 * (by the "request_id" parameter, else the request id, else at random). The answer carries the outputs
 * "probability" (FP32 [N]) and "is_fraud" (BOOL [N]) as raw_output_contents, in the order the request asked for
 * them (both, in that order, when it asked for none). Rows are counted, drift-binned and logged like Predict's.
 * No allocation: values are read from the request bytes twice (validated, then scored).
 */
#include <math.h>
#include <string.h>

#include "pb.h"
#include "score.h"

#define INPUT_NAME "features"
#define OUTPUT_PROBABILITY "probability"
#define OUTPUT_IS_FRAUD "is_fraud"
#define ROUTE_PARAMETER "request_id"

enum { OUT_PROBABILITY = 0, OUT_IS_FRAUD = 1, NUM_OUTPUTS = 2 };

typedef struct span {
    const uint8_t *data;
    size_t len;
} span;

/* What a ModelInferRequest says, pointing into its bytes. */
typedef struct infer_request {
    span model_name, model_version, id, route_key;
    int num_inputs;
    span input_name, datatype, contents;
    int64_t shape[2];
    int shape_dims;
    int num_raw;
    span raw;
    int num_outputs;
    int outputs[NUM_OUTPUTS];
} infer_request;

/* Reads the values of the input tensor in order: raw little-endian floats, or the fp32_contents of an
 * InferTensorContents (packed runs or single fixed32 values). */
typedef struct value_reader {
    const uint8_t *buf; /* raw bytes, or the contents message */
    size_t len, pos;
    int raw;
    size_t run_pos, run_end; /* the packed run being read (contents only) */
} value_reader;

static int span_is(span s, const char *text) {
    size_t n = strlen(text);
    return s.len == n && memcmp(s.data, text, n) == 0;
}

static int read_span(const uint8_t *buf, size_t len, size_t *pos, span *out, const char *what, char *err,
                     size_t errcap) {
    uint64_t n;
    if (read_varint(buf, len, pos, &n) != 0 || n > len - *pos) {
        return fail(err, errcap, "malformed request: %s runs past the end of the message", what);
    }
    out->data = buf + *pos;
    out->len = (size_t)n;
    *pos += (size_t)n;
    return VG_OK;
}

static int read_string(const uint8_t *buf, size_t len, size_t *pos, span *out, const char *what, char *err,
                       size_t errcap) {
    int status = read_span(buf, len, pos, out, what, err, errcap);
    if (status == VG_OK && !valid_utf8(out->data, out->len)) {
        return fail(err, errcap, "%s is not valid UTF-8", what);
    }
    return status;
}

/* A field expected as length-delimited `what`: its bytes, or a message when it has another wire type. */
static int expect_len(int wire, const uint8_t *buf, size_t len, size_t *pos, span *out, const char *what, char *err,
                      size_t errcap) {
    if (wire != WT_LEN) {
        return fail(err, errcap, "malformed request: %s has wire type %d", what, wire);
    }
    return read_span(buf, len, pos, out, what, err, errcap);
}

/* One entry of the request's parameters map: keeps the "request_id" string as the routing key. */
static int decode_parameter(span entry, infer_request *r, char *err, size_t errcap) {
    size_t pos = 0;
    span key = {0}, value = {0};
    int has_value = 0;
    while (pos < entry.len) {
        uint32_t field;
        int wire, status = read_tag(entry.data, entry.len, &pos, &field, &wire, err, errcap);
        if (status == VG_OK && field == 1) {
            status = expect_len(wire, entry.data, entry.len, &pos, &key, "a parameter name", err, errcap);
        } else if (status == VG_OK && field == 2) {
            status = expect_len(wire, entry.data, entry.len, &pos, &value, "a parameter value", err, errcap);
            has_value = 1;
        } else if (status == VG_OK) {
            status = skip_value(entry.data, entry.len, &pos, field, wire, 0, err, errcap);
        }
        if (status != VG_OK) {
            return status;
        }
    }
    if (!span_is(key, ROUTE_PARAMETER) || !has_value) {
        return VG_OK; /* other parameters do not change how a request is scored */
    }
    pos = 0;
    r->route_key.len = 0;
    while (pos < value.len) {
        uint32_t field;
        int wire, status = read_tag(value.data, value.len, &pos, &field, &wire, err, errcap);
        if (status == VG_OK && field == 3 && wire == WT_LEN) {
            status = read_string(value.data, value.len, &pos, &r->route_key, "parameter request_id", err, errcap);
        } else if (status == VG_OK && (field == 1 || field == 2)) {
            return fail(err, errcap, "parameter request_id must be a string_param");
        } else if (status == VG_OK) {
            status = skip_value(value.data, value.len, &pos, field, wire, 0, err, errcap);
        }
        if (status != VG_OK) {
            return status;
        }
    }
    return VG_OK;
}

static int decode_shape(int wire, const uint8_t *buf, size_t len, size_t *pos, infer_request *r, char *err,
                        size_t errcap) {
    uint64_t v;
    if (wire == WT_VARINT) {
        if (read_varint(buf, len, pos, &v) != 0) {
            return fail(err, errcap, "malformed request: truncated shape");
        }
        if (r->shape_dims < 2) {
            r->shape[r->shape_dims] = (int64_t)v;
        }
        ++r->shape_dims;
        return VG_OK;
    }
    span packed = {0};
    int status = expect_len(wire, buf, len, pos, &packed, "the shape", err, errcap);
    for (size_t p = 0; status == VG_OK && p < packed.len;) {
        if (read_varint(packed.data, packed.len, &p, &v) != 0) {
            return fail(err, errcap, "malformed request: truncated shape");
        }
        if (r->shape_dims < 2) {
            r->shape[r->shape_dims] = (int64_t)v;
        }
        ++r->shape_dims;
    }
    return status;
}

static int decode_input(span tensor, infer_request *r, char *err, size_t errcap) {
    size_t pos = 0;
    while (pos < tensor.len) {
        uint32_t field;
        int wire, status = read_tag(tensor.data, tensor.len, &pos, &field, &wire, err, errcap);
        if (status != VG_OK) {
            return status;
        }
        switch (field) {
        case 1:
            status = expect_len(wire, tensor.data, tensor.len, &pos, &r->input_name, "the input name", err, errcap);
            break;
        case 2:
            status = expect_len(wire, tensor.data, tensor.len, &pos, &r->datatype, "the input datatype", err, errcap);
            break;
        case 3:
            status = decode_shape(wire, tensor.data, tensor.len, &pos, r, err, errcap);
            break;
        case 5:
            status = expect_len(wire, tensor.data, tensor.len, &pos, &r->contents, "the input contents", err, errcap);
            break;
        default:
            status = skip_value(tensor.data, tensor.len, &pos, field, wire, 0, err, errcap);
        }
        if (status != VG_OK) {
            return status;
        }
    }
    return VG_OK;
}

static int decode_output(span tensor, infer_request *r, char *err, size_t errcap) {
    size_t pos = 0;
    span name = {0};
    while (pos < tensor.len) {
        uint32_t field;
        int wire, status = read_tag(tensor.data, tensor.len, &pos, &field, &wire, err, errcap);
        if (status == VG_OK && field == 1) {
            status = read_string(tensor.data, tensor.len, &pos, &name, "an output name", err, errcap);
        } else if (status == VG_OK) {
            status = skip_value(tensor.data, tensor.len, &pos, field, wire, 0, err, errcap);
        }
        if (status != VG_OK) {
            return status;
        }
    }
    int which = span_is(name, OUTPUT_PROBABILITY) ? OUT_PROBABILITY
                : span_is(name, OUTPUT_IS_FRAUD)  ? OUT_IS_FRAUD
                                                  : -1;
    if (which < 0) {
        return fail(err, errcap,
                    "unknown output '%.*s': this model's outputs are '" OUTPUT_PROBABILITY
                    "' (FP32 [N]) and '" OUTPUT_IS_FRAUD "' (BOOL [N])",
                    (int)(name.len < 64 ? name.len : 64), (const char *)name.data);
    }
    for (int i = 0; i < r->num_outputs; ++i) {
        if (r->outputs[i] == which) {
            return fail(err, errcap, "output '%.*s' is asked for twice", (int)name.len, (const char *)name.data);
        }
    }
    r->outputs[r->num_outputs++] = which;
    return VG_OK;
}

static int decode_infer_request(const uint8_t *buf, size_t len, infer_request *r, char *err, size_t errcap) {
    memset(r, 0, sizeof *r);
    size_t pos = 0;
    while (pos < len) {
        uint32_t field;
        int wire, status = read_tag(buf, len, &pos, &field, &wire, err, errcap);
        span value;
        if (status != VG_OK) {
            return status;
        }
        switch (field) {
        case 1:
            status = expect_len(wire, buf, len, &pos, &r->model_name, "model_name", err, errcap);
            break;
        case 2:
            status = expect_len(wire, buf, len, &pos, &r->model_version, "model_version", err, errcap);
            break;
        case 3:
            status = expect_len(wire, buf, len, &pos, &r->id, "id", err, errcap);
            if (status == VG_OK && !valid_utf8(r->id.data, r->id.len)) {
                status = fail(err, errcap, "id is not valid UTF-8");
            }
            break;
        case 4:
            status = expect_len(wire, buf, len, &pos, &value, "a parameter", err, errcap);
            if (status == VG_OK) {
                status = decode_parameter(value, r, err, errcap);
            }
            break;
        case 5:
            status = expect_len(wire, buf, len, &pos, &value, "an input", err, errcap);
            if (status == VG_OK && ++r->num_inputs == 1) {
                status = decode_input(value, r, err, errcap);
            }
            break;
        case 6:
            status = expect_len(wire, buf, len, &pos, &value, "an output", err, errcap);
            if (status == VG_OK && r->num_outputs == NUM_OUTPUTS) {
                status = fail(err, errcap, "more than %d outputs asked for", NUM_OUTPUTS);
            } else if (status == VG_OK) {
                status = decode_output(value, r, err, errcap);
            }
            break;
        case 7:
            status = expect_len(wire, buf, len, &pos, &value, "raw_input_contents", err, errcap);
            if (status == VG_OK && ++r->num_raw == 1) {
                r->raw = value;
            }
            break;
        default:
            status = skip_value(buf, len, &pos, field, wire, 0, err, errcap);
        }
        if (status != VG_OK) {
            return status;
        }
    }
    if (r->num_outputs == 0) {
        r->outputs[0] = OUT_PROBABILITY;
        r->outputs[1] = OUT_IS_FRAUD;
        r->num_outputs = NUM_OUTPUTS;
    }
    return VG_OK;
}

/* Next value of the tensor: 1 and *value, 0 at the end. Only called on contents validated by count_values. */
static int next_value(value_reader *v, float *value) {
    if (v->raw) {
        if (v->len - v->pos < 4) {
            return 0;
        }
        *value = load_float(v->buf + v->pos);
        v->pos += 4;
        return 1;
    }
    while (v->run_pos + 4 > v->run_end) {
        uint32_t field;
        int wire;
        char err[8];
        if (v->pos >= v->len || read_tag(v->buf, v->len, &v->pos, &field, &wire, err, sizeof err) != VG_OK) {
            return 0;
        }
        if (field == 6 && wire == WT_FIXED32) {
            *value = load_float(v->buf + v->pos);
            v->pos += 4;
            return 1;
        }
        if (field == 6 && wire == WT_LEN) {
            uint64_t n = 0;
            read_varint(v->buf, v->len, &v->pos, &n);
            v->run_pos = v->pos;
            v->run_end = v->pos + (size_t)n;
            v->pos = v->run_end;
        } else {
            skip_value(v->buf, v->len, &v->pos, field, wire, 0, err, sizeof err);
        }
    }
    *value = load_float(v->buf + v->run_pos);
    v->run_pos += 4;
    return 1;
}

/* Checks the contents message holds only FP32 values (whole ones) and counts them into *count. */
static int check_contents(span contents, size_t *count, char *err, size_t errcap) {
    size_t pos = 0;
    *count = 0;
    while (pos < contents.len) {
        uint32_t field;
        int wire, status = read_tag(contents.data, contents.len, &pos, &field, &wire, err, errcap);
        span run = {0};
        if (status != VG_OK) {
            return status;
        }
        if (field == 6 && wire == WT_FIXED32) {
            if (contents.len - pos < 4) {
                return fail(err, errcap, "malformed request: truncated fp32_contents");
            }
            pos += 4;
            ++*count;
            continue;
        }
        if (wire != WT_LEN) {
            return fail(err, errcap,
                        "input '" INPUT_NAME "' is FP32: send its values as fp32_contents or "
                        "raw_input_contents");
        }
        if ((status = read_span(contents.data, contents.len, &pos, &run, "the input contents", err, errcap)) != VG_OK) {
            return status;
        }
        if (field == 6 && run.len % 4 != 0) {
            return fail(err, errcap, "malformed request: fp32_contents of %zu bytes", run.len);
        }
        if (field == 6) {
            *count += run.len / 4;
        } else if (run.len != 0) {
            return fail(err, errcap,
                        "input '" INPUT_NAME "' is FP32: send its values as fp32_contents or "
                        "raw_input_contents");
        }
    }
    return VG_OK;
}

/* The request's tensor checked against the model: name, datatype, shape [N, F], exactly N * F finite values. */
static int check_input(const vg_core *core, const infer_request *r, int32_t num_feature, value_reader *values,
                       size_t *rows, char *err, size_t errcap) {
    if (r->num_inputs != 1) {
        return fail(err, errcap, "expected 1 input ('" INPUT_NAME "', FP32 [N, %d]), got %d", (int)num_feature,
                    r->num_inputs);
    }
    if (!span_is(r->input_name, INPUT_NAME)) {
        return fail(err, errcap, "unknown input '%.*s': this model's input is '" INPUT_NAME "' (FP32 [N, %d])",
                    (int)(r->input_name.len < 64 ? r->input_name.len : 64), (const char *)r->input_name.data,
                    (int)num_feature);
    }
    if (!span_is(r->datatype, "FP32")) {
        return fail(err, errcap, "input '" INPUT_NAME "' must have datatype FP32, got '%.*s'",
                    (int)(r->datatype.len < 16 ? r->datatype.len : 16), (const char *)r->datatype.data);
    }
    if (r->shape_dims != 2 || r->shape[0] < 1 || r->shape[1] != num_feature) {
        char got[64];
        if (r->shape_dims == 2) {
            snprintf(got, sizeof got, "[%lld, %lld]", (long long)r->shape[0], (long long)r->shape[1]);
        } else {
            snprintf(got, sizeof got, "%d dimensions", r->shape_dims);
        }
        return fail(err, errcap,
                    "input '" INPUT_NAME "' must have shape [N, %d] (N >= 1 rows of the model's %d "
                    "features), got %s",
                    (int)num_feature, (int)num_feature, got);
    }
    if ((uint64_t)r->shape[0] > core->max_batch_rows) {
        return fail(err, errcap, "input '" INPUT_NAME "' has %lld rows; at most %zu", (long long)r->shape[0],
                    core->max_batch_rows);
    }
    *rows = (size_t)r->shape[0];
    size_t expected = *rows * (size_t)num_feature, count;
    memset(values, 0, sizeof *values);
    if (r->num_raw > 0) {
        if (r->num_raw != 1 || r->contents.len != 0) {
            return fail(err, errcap, "send the input either as one raw_input_contents or as contents, not both");
        }
        if (r->raw.len != expected * 4) {
            return fail(err, errcap, "raw_input_contents of '" INPUT_NAME "' has %zu bytes; [%zu, %d] FP32 is %zu",
                        r->raw.len, *rows, (int)num_feature, expected * 4);
        }
        values->buf = r->raw.data;
        values->len = r->raw.len;
        values->raw = 1;
    } else {
        int status = check_contents(r->contents, &count, err, errcap);
        if (status != VG_OK) {
            return status;
        }
        if (count != expected) {
            return fail(err, errcap, "input '" INPUT_NAME "' has %zu values; shape [%zu, %d] needs %zu", count, *rows,
                        (int)num_feature, expected);
        }
        values->buf = r->contents.data;
        values->len = r->contents.len;
    }
    value_reader scan = *values;
    float x;
    for (size_t i = 0; next_value(&scan, &x); ++i) {
        if (isinf(x)) {
            return fail(err, errcap,
                        "input '" INPUT_NAME "' row %zu feature %zu is %cInf; send finite values (NaN "
                        "means missing)",
                        i / (size_t)num_feature, i % (size_t)num_feature, x > 0 ? '+' : '-');
        }
    }
    return VG_OK;
}

/* The slot a request goes to: the version it names (NULL when that version is not serving), else routed. */
static const slot_config *choose_slot(const config *cfg, const infer_request *r, vg_request *key) {
    key->request_id = r->route_key.len ? r->route_key.data : r->id.data;
    key->request_id_len = r->route_key.len ? r->route_key.len : r->id.len;
    if (r->model_version.len == 0) {
        return route(cfg, key, random32());
    }
    for (int s = 0; s < 2; ++s) {
        const slot_config *slot = &cfg->slot[s];
        if (slot->model != NULL && slot->id_len == r->model_version.len &&
            memcmp(slot->id, r->model_version.data, slot->id_len) == 0) {
            return slot;
        }
    }
    return NULL;
}

static int not_served(const config *cfg, const infer_request *r, char *err, size_t errcap) {
    const slot_config *champion = &cfg->slot[VG_CHAMPION], *challenger = &cfg->slot[VG_CHALLENGER];
    return vg_fail(VG_NOT_FOUND, err, errcap, "version '%.*s' of model '%s' is not serving (serving: %s%s%s)",
                   (int)(r->model_version.len < 64 ? r->model_version.len : 64), (const char *)r->model_version.data,
                   cfg->model_name, champion->id, challenger->model ? ", " : "",
                   challenger->model ? challenger->id : "");
}

/* An InferOutputTensor body: name, datatype, shape [rows]. */
static size_t output_size(int which, size_t rows) {
    size_t name = which == OUT_PROBABILITY ? sizeof OUTPUT_PROBABILITY - 1 : sizeof OUTPUT_IS_FRAUD - 1;
    return bytes_size(name) + bytes_size(4) /* "FP32" or "BOOL" */ + 1 + varint_size(varint_size(rows)) +
           varint_size(rows);
}

static uint8_t *put_output(uint8_t *w, int which, size_t rows) {
    w = put_varint(w, (5 << 3) | WT_LEN);
    w = put_varint(w, output_size(which, rows));
    if (which == OUT_PROBABILITY) {
        w = put_bytes(w, (1 << 3) | WT_LEN, OUTPUT_PROBABILITY, sizeof OUTPUT_PROBABILITY - 1);
        w = put_bytes(w, (2 << 3) | WT_LEN, "FP32", 4);
    } else {
        w = put_bytes(w, (1 << 3) | WT_LEN, OUTPUT_IS_FRAUD, sizeof OUTPUT_IS_FRAUD - 1);
        w = put_bytes(w, (2 << 3) | WT_LEN, "BOOL", 4);
    }
    *w++ = (3 << 3) | WT_LEN; /* shape, packed */
    w = put_varint(w, varint_size(rows));
    return put_varint(w, rows);
}

static size_t raw_size(int which, size_t rows) {
    return which == OUT_PROBABILITY ? rows * 4 : rows;
}

size_t vg_infer_output_bound(size_t len) {
    /* model_name and model_version (tag, length, id), the id (at most the request), two outputs, two raw
     * contents (tag, length) and at most len / 4 rows (a row holds at least one 4-byte value) of 5 bytes each. */
    return 2 * (1 + 2 + VG_MODEL_ID_MAX) + (1 + 5 + len) + 2 * (2 + 64) + 2 * (1 + 5) + 5 * (len / 4) + 16;
}

int vg_infer_handle(vg_core *core, const uint8_t *req, size_t len, uint8_t *out, size_t cap, size_t *out_len, char *err,
                    size_t errcap, uint64_t t0) {
    if (len > core->max_batch_bytes) {
        return vg_fail(VG_INVALID_ARGUMENT, err, errcap, "request of %zu bytes exceeds the limit of %zu bytes", len,
                       core->max_batch_bytes);
    }
    infer_request r;
    int status = decode_infer_request(req, len, &r, err, errcap);
    if (status != VG_OK) {
        return status;
    }
    vg_reader reader;
    const config *cfg = vg_reader_enter(core, &reader);
    const slot_config *slot = NULL;
    value_reader values;
    vg_request row;
    size_t rows = 0;
    if (!span_is(r.model_name, cfg->model_name)) {
        status = vg_fail(VG_NOT_FOUND, err, errcap, "unknown model '%.*s': this server serves '%s'",
                         (int)(r.model_name.len < 64 ? r.model_name.len : 64), (const char *)r.model_name.data,
                         cfg->model_name);
    } else if (cfg->slot[VG_CHAMPION].model == NULL) {
        status = vg_fail(VG_UNAVAILABLE, err, errcap, "no verified champion model is loaded yet; retry later");
    } else if ((slot = choose_slot(cfg, &r, &row)) == NULL) {
        status = not_served(cfg, &r, err, errcap);
    } else {
        status = check_input(core, &r, slot->model->num_feature, &values, &rows, err, errcap);
    }
    size_t body =
        bytes_size(cfg->model_name_len) + (slot ? bytes_size(slot->id_len) : 0) + (r.id.len ? bytes_size(r.id.len) : 0);
    for (int i = 0; i < r.num_outputs; ++i) {
        size_t o = output_size(r.outputs[i], rows);
        body += 1 + varint_size(o) + o + bytes_size(raw_size(r.outputs[i], rows));
    }
    if (status == VG_OK && body > cap) {
        status = vg_fail(VG_INTERNAL, err, errcap, "response buffer too small");
    }
    if (status != VG_OK) {
        vg_reader_leave(&reader);
        return status;
    }
    uint8_t *w = put_bytes(out, (1 << 3) | WT_LEN, cfg->model_name, cfg->model_name_len);
    w = put_bytes(w, (2 << 3) | WT_LEN, slot->id, slot->id_len);
    if (r.id.len) {
        w = put_bytes(w, (3 << 3) | WT_LEN, r.id.data, r.id.len);
    }
    for (int i = 0; i < r.num_outputs; ++i) {
        w = put_output(w, r.outputs[i], rows);
    }
    uint8_t *area[NUM_OUTPUTS] = {NULL, NULL}; /* where each output's values go; NULL: not asked for */
    for (int i = 0; i < r.num_outputs; ++i) {
        *w++ = (6 << 3) | WT_LEN;
        w = put_varint(w, raw_size(r.outputs[i], rows));
        area[r.outputs[i]] = w;
        w += raw_size(r.outputs[i], rows);
    }
    uint8_t *probability = area[OUT_PROBABILITY], *is_fraud = area[OUT_IS_FRAUD];
    row.num_features = slot->model->num_feature;
    row.explain_top_k = 0;
    for (size_t i = 0; i < rows; ++i) {
        uint64_t t_row = i == 0 ? t0 : vg_now_ns();
        for (int32_t f = 0; f < row.num_features; ++f) {
            next_value(&values, &row.features[f]);
        }
        vg_response resp;
        vg_reason reasons[VG_MAX_REASONS];
        score(core, &reader, cfg, slot, &row, t0, t_row, &resp, reasons);
        if (probability != NULL) {
            uint32_t bits = float_bits(resp.probability);
            probability[4 * i] = (uint8_t)bits;
            probability[4 * i + 1] = (uint8_t)(bits >> 8);
            probability[4 * i + 2] = (uint8_t)(bits >> 16);
            probability[4 * i + 3] = (uint8_t)(bits >> 24);
        }
        if (is_fraud != NULL) {
            is_fraud[i] = (uint8_t)(resp.is_fraud != 0);
        }
    }
    *out_len = (size_t)(w - out);
    vg_reader_leave(&reader);
    return VG_OK;
}
