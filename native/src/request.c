/* The request path of the serving core: decode, route, score, count, encode; one call per request.
 *
 * No lock is taken: a request enters the current snapshot as a reader (see struct vg_core) and leaves it at the
 * end, so a model swapped out meanwhile is released only after the request ends. Counters go to the calling
 * thread's shard.
 */
#include <string.h>

#include "core_internal.h"
#include "route.h"

static inline uint32_t random32(void) {
    static __thread uint64_t state;
    if (state == 0) {
        state = vg_now_ns() ^ (uint64_t)(uintptr_t)&state ^ 0x9E3779B97F4A7C15ull;
    }
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return (uint32_t)(state >> 32);
}

/* Champion or challenger for this row: by the hash of its request id, or by `draw` (random) without one. */
static inline const slot_config *route(const config *cfg, const vg_request *req, uint32_t draw) {
    if (cfg->slot[VG_CHALLENGER].model == NULL || cfg->cut == 0) {
        return &cfg->slot[VG_CHAMPION];
    }
    uint32_t h = req->request_id_len ? vg_route_hash(req->request_id, req->request_id_len) : draw;
    return (uint64_t)h < cfg->cut ? &cfg->slot[VG_CHALLENGER] : &cfg->slot[VG_CHAMPION];
}

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

static inline void log_row(vg_core *core, log_ring *ring, const slot_config *slot, int s, const vg_request *req,
                           float p, const vg_response *resp) {
    const int fraud = resp->is_fraud;
    vg_log_record record;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    record.time_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    record.score = p;
    record.decision = (uint8_t)fraud;
    record.slot = (uint8_t)s;
    record.model_index = (uint8_t)slot->block;
    size_t len = req->request_id_len < VG_LOG_ID_MAX ? req->request_id_len : VG_LOG_ID_MAX;
    record.request_id_len = (uint8_t)len;
    memcpy(record.request_id, req->request_id, len);
    int32_t reasons = resp->num_reasons < VG_LOG_MAX_REASONS ? resp->num_reasons : VG_LOG_MAX_REASONS;
    record.num_reasons = (uint8_t)reasons;
    for (int32_t i = 0; i < reasons; ++i) {
        record.reason_feature[i] = (uint8_t)resp->reasons[i].feature_index;
        record.reason_contribution[i] = resp->reasons[i].contribution;
    }
    vg_log_push(core, ring, &record);
}

static inline void observe(vg_core *core, const vg_reader *reader, const config *cfg, const slot_config *slot,
                           int fraud, uint64_t ns) {
    model_shard *c = &core->models[slot->block].shard[reader->shard - core->shards];
    int b = 0;
    while (b < VG_LATENCY_BUCKETS && ns > core->latency_bounds_ns[b]) {
        ++b;
    }
    vg_add(&reader->shard->slot_requests[slot == &cfg->slot[VG_CHALLENGER]], 1);
    vg_add(&c->requests, 1);
    vg_add(&c->fraud, (uint64_t)fraud);
    vg_add(&c->latency_ns_sum, ns);
    vg_add(&c->latency_buckets[b], 1);
}

static const char REASONS_OFF[] = "reasons are turned off on this server";
static const char NO_EXPLAINER[] = "this model has no explainer: its answers carry no reasons";

/* Reasons this row's answer gets: what it asked for, raised to the core's default by the flagged (for a fraud
 * answer) and always policies. The response bound assumes the flagged policy adds them to every row. */
static inline uint32_t reasons_wanted(const vg_core *core, const vg_request *req, int fraud) {
    uint32_t k = req->explain_top_k;
    if (core->explain_policy == VG_EXPLAIN_ALWAYS || (core->explain_policy == VG_EXPLAIN_FLAGGED && fraud)) {
        k = k > core->explain_top_k ? k : core->explain_top_k;
    }
    return k;
}

/* Fill the explanation fields of `resp` for the row's answer; `reasons` holds VG_MAX_REASONS. */
static inline void explain(const vg_core *core, const slot_config *slot, const vg_request *req, vg_response *resp,
                           vg_reason *reasons) {
    uint32_t k = reasons_wanted(core, req, resp->is_fraud);
    if (k == 0) {
        return;
    }
    if (core->explain_policy == VG_EXPLAIN_OFF) {
        resp->explain_error = REASONS_OFF;
        resp->explain_error_len = sizeof REASONS_OFF - 1;
    } else if (slot->explainer == NULL) {
        resp->explain_error = NO_EXPLAINER;
        resp->explain_error_len = sizeof NO_EXPLAINER - 1;
    } else {
        int32_t asked = k < VG_MAX_REASONS ? (int32_t)k : VG_MAX_REASONS;
        resp->num_reasons = vg_forest_top_reasons(slot->explainer, req->features, asked, reasons, &resp->bias);
        resp->reasons = reasons;
        resp->explained = 1;
    }
}

/* Scores one decoded, checked row into `resp` (with its reasons, in `reasons`) and counts it: latency_ms is the
 * time since the call arrived (t_call), the histogram gets the time spent on this row since t_row (the same for a
 * single request). */
static inline void score(vg_core *core, const vg_reader *reader, const config *cfg, const slot_config *slot,
                         const vg_request *req, uint64_t t_call, uint64_t t_row, vg_response *resp,
                         vg_reason *reasons) {
    vg_entry scratch[VG_MAX_FEATURES];
    float p = vg_model_score(slot->model, req->features, scratch);
    memset(resp, 0, sizeof *resp);
    resp->is_fraud = p >= slot->threshold;
    explain(core, slot, req, resp, reasons);
    uint64_t now = vg_now_ns();
    resp->probability = p;
    resp->model_version = slot->id;
    resp->model_version_len = slot->id_len;
    resp->latency_ms = (float)((double)(now - t_call) / 1e6);
    observe(core, reader, cfg, slot, resp->is_fraud, now - t_row);
    int champion = slot == &cfg->slot[VG_CHAMPION];
    if (cfg->drift != NULL) {
        vg_drift_count(cfg->drift, req, p, champion);
    }
    log_ring *ring = __atomic_load_n(&core->log, __ATOMIC_ACQUIRE);
    if (ring != NULL) {
        log_row(core, ring, slot, champion ? VG_CHAMPION : VG_CHALLENGER, req, p, resp);
    }
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
    } else {
        status = vg_fail(VG_INTERNAL, err, errcap, "unknown call kind %d", call);
    }
    if (status != VG_OK) {
        vg_add(&core->shards[vg_shard()].errors[status < VG_STATUS_MAX ? status : VG_INTERNAL], 1);
    }
    return status;
}
