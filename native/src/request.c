/* The request path of the serving core: decode, route, score, count, encode; one call per request.
 *
 * No lock is taken: a request enters the current snapshot as a reader (see struct vg_core) and leaves it at the
 * end, so a model swapped out meanwhile is released only after the request ends. Counters go to the calling
 * thread's shard.
 */
#include <string.h>

#include "score.h"

/* The random draw of row `i` of a batch: the same in both passes, independent between rows. */
static inline uint32_t row_draw(uint32_t seed, size_t i) {
    return vg_fmix32(seed ^ (uint32_t)(i * 0x9E3779B9u));
}

static inline int check_row(const slot_config *slot, const vg_request *req, char *err, size_t errcap,
                            const char *where) {
    if (req->num_features != slot->model->num_feature) {
        return vg_fail(VG_INVALID_ARGUMENT, err, errcap,
                       "%sexpected %d features (in the model's feature order), got %d", where,
                       (int)slot->model->num_feature, (int)req->num_features);
    }
    return VG_OK;
}

/* Largest encoded response or batch item besides its request id's bytes and its reasons: item tag + length varint
 * (5) + is_fraud (2) + probability (5) + model_version (tag, 2-byte length, id) + latency_ms (5) + request_id tag
 * and length varint (1 + 5) + bias (5) + explain_error (tag, length, under 96 bytes). The request id's own bytes
 * are counted separately (at most the request's length). */
#define ITEM_BOUND (1 + 5 + 2 + 5 + (1 + 2 + VG_MODEL_ID_MAX) + 5 + (1 + 5) + 5 + (1 + 1 + 96))
/* One Reason: tag, length, feature (tag, length, name), value, contribution. */
#define REASON_BOUND (1 + 1 + (1 + 1 + VG_FEATURE_NAME_MAX) + 5 + 5)

/* Space for the reasons of one row whatever its answer turns out to be. */
static size_t reasons_bound(const vg_core *core, const uint8_t *row, size_t len) {
    if (core->explain_policy == VG_EXPLAIN_OFF) {
        return 0;
    }
    vg_request req;
    char err[8];
    if (vg_wire_decode_request(row, len, &req, err, sizeof err) != VG_OK) {
        return 0; /* refused by handle before anything is encoded */
    }
    uint32_t k = reasons_wanted(core, &req, 1);
    return (k < VG_MAX_REASONS ? k : VG_MAX_REASONS) * REASON_BOUND;
}

VG_API size_t vg_core_output_bound(const vg_core *core, int call, const uint8_t *req, size_t len) {
    if (call == VG_CALL_BATCH) {
        size_t pos = 0, row_len, need = len + 16;
        const uint8_t *row;
        char err[8];
        while (vg_wire_next_row(req, len, &pos, &row, &row_len, err, sizeof err) == 1) {
            need += ITEM_BOUND + reasons_bound(core, row, row_len);
        }
        return need;
    }
    if (call == VG_CALL_INFER) {
        return vg_infer_output_bound(len);
    }
    return ITEM_BOUND + len + 16 + reasons_bound(core, req, len);
}

static int handle_one(vg_core *core, int call, const uint8_t *req, size_t len, uint8_t *out, size_t cap,
                      size_t *out_len, char *err, size_t errcap, uint64_t t0) {
    vg_request row;
    if (len > core->max_request_bytes) {
        return vg_fail(VG_INVALID_ARGUMENT, err, errcap, "request of %zu bytes exceeds the limit of %zu bytes", len,
                       core->max_request_bytes);
    }
    int status = vg_wire_decode_request(req, len, &row, err, errcap);
    if (status != VG_OK) {
        return status;
    }
    vg_reader reader;
    const config *cfg = vg_reader_enter(core, &reader);
    if (cfg->slot[VG_CHAMPION].model == NULL) {
        vg_reader_leave(&reader);
        return vg_fail(VG_UNAVAILABLE, err, errcap, "no verified champion model is loaded yet; retry later");
    }
    const slot_config *slot = route(cfg, &row, random32());
    if ((status = check_row(slot, &row, err, errcap, "")) != VG_OK) {
        vg_reader_leave(&reader);
        return status;
    }
    vg_response resp;
    vg_reason reasons[VG_MAX_REASONS];
    score(core, &reader, cfg, slot, &row, t0, t0, &resp, reasons);
    resp.scored = call == VG_CALL_STREAM;
    resp.request_id = resp.scored ? row.request_id : NULL;
    resp.request_id_len = resp.scored ? row.request_id_len : 0;
    if (vg_wire_response_size(&resp) > cap) {
        vg_reader_leave(&reader);
        return vg_fail(VG_INTERNAL, err, errcap, "response buffer too small");
    }
    *out_len = (size_t)(vg_wire_encode_response(&resp, out) - out);
    vg_reader_leave(&reader);
    return VG_OK;
}

static int handle_batch(vg_core *core, const uint8_t *req, size_t len, uint8_t *out, size_t cap, size_t *out_len,
                        char *err, size_t errcap, uint64_t t0) {
    if (len > core->max_batch_bytes) {
        return vg_fail(VG_INVALID_ARGUMENT, err, errcap, "batch of %zu bytes exceeds the limit of %zu bytes", len,
                       core->max_batch_bytes);
    }
    vg_reader reader;
    const config *cfg = vg_reader_enter(core, &reader);
    if (cfg->slot[VG_CHAMPION].model == NULL) {
        vg_reader_leave(&reader);
        return vg_fail(VG_UNAVAILABLE, err, errcap, "no verified champion model is loaded yet; retry later");
    }
    /* Pass 1 validates every row, so a refused batch scores and counts nothing. */
    vg_request row;
    const uint8_t *data;
    size_t pos = 0, row_len, rows = 0, need = 0;
    int more, status = VG_OK;
    char where[48];
    uint32_t seed = random32();
    while (status == VG_OK && (more = vg_wire_next_row(req, len, &pos, &data, &row_len, err, errcap)) == 1) {
        snprintf(where, sizeof where, "requests[%zu]: ", rows);
        if (++rows > core->max_batch_rows) {
            status = vg_fail(VG_INVALID_ARGUMENT, err, errcap, "batch has more than %zu rows", core->max_batch_rows);
        } else if (row_len > core->max_request_bytes) { /* a row obeys the limit of a single request */
            status = vg_fail(VG_INVALID_ARGUMENT, err, errcap, "%srequest of %zu bytes exceeds the limit of %zu bytes",
                             where, row_len, core->max_request_bytes);
        } else if ((status = vg_wire_decode_request(data, row_len, &row, err, errcap)) != VG_OK) {
            size_t used = strlen(err);
            if (used + strlen(where) < errcap) {
                memmove(err + strlen(where), err, used + 1);
                memcpy(err, where, strlen(where));
            }
        } else {
            status = check_row(route(cfg, &row, row_draw(seed, rows)), &row, err, errcap, where);
            need += ITEM_BOUND + row.request_id_len + reasons_bound(core, data, row_len);
        }
    }
    if (status == VG_OK && more < 0) {
        status = VG_INVALID_ARGUMENT;
    }
    if (status == VG_OK && need > cap) {
        status = vg_fail(VG_INTERNAL, err, errcap, "response buffer too small");
    }
    if (status != VG_OK) {
        vg_reader_leave(&reader);
        return status;
    }
    /* Pass 2 scores the validated rows, routing each exactly as pass 1 did. */
    uint8_t *w = out;
    pos = 0;
    for (size_t i = 1; vg_wire_next_row(req, len, &pos, &data, &row_len, err, errcap) == 1; ++i) {
        uint64_t t_row = vg_now_ns();
        vg_wire_decode_request(data, row_len, &row, err, errcap);
        const slot_config *slot = route(cfg, &row, row_draw(seed, i));
        vg_response resp;
        vg_reason reasons[VG_MAX_REASONS];
        score(core, &reader, cfg, slot, &row, t0, t_row, &resp, reasons);
        resp.scored = 1;
        resp.request_id = row.request_id;
        resp.request_id_len = row.request_id_len;
        w = vg_wire_encode_item(&resp, 1, w);
    }
    *out_len = (size_t)(w - out);
    vg_reader_leave(&reader);
    return VG_OK;
}

VG_API int vg_core_handle(vg_core *core, int call, const uint8_t *req, size_t len, uint8_t *out, size_t cap,
                          size_t *out_len, char *err, size_t errcap) {
    uint64_t t0 = vg_now_ns();
    int status;
    *out_len = 0;
    if (call == VG_CALL_BATCH) {
        status = handle_batch(core, req, len, out, cap, out_len, err, errcap, t0);
    } else if (call == VG_CALL_PREDICT || call == VG_CALL_STREAM) {
        status = handle_one(core, call, req, len, out, cap, out_len, err, errcap, t0);
    } else if (call == VG_CALL_INFER) {
        status = vg_infer_handle(core, req, len, out, cap, out_len, err, errcap, t0);
    } else {
        status = vg_fail(VG_INTERNAL, err, errcap, "unknown call kind %d", call);
    }
    if (status != VG_OK) {
        vg_add(&core->shards[vg_shard()].errors[status < VG_STATUS_MAX ? status : VG_INTERNAL], 1);
    }
    return status;
}
