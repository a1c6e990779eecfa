/* Scoring one row inside a request: route, score, explain, count, log (shared by request.c and infer.c).
 *
 * Private to libvoxguard; every function runs on the request path, takes no lock, and counts into the calling
 * thread's shard.
 */
#ifndef VG_SCORE_H
#define VG_SCORE_H

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
    if (cfg->slot[VG_CHALLENGER].model == NULL || cfg->cut == 0 || cfg->shadow) {
        return &cfg->slot[VG_CHAMPION];
    }
    uint32_t h = req->request_id_len ? vg_route_hash(req->request_id, req->request_id_len) : draw;
    return (uint64_t)h < cfg->cut ? &cfg->slot[VG_CHALLENGER] : &cfg->slot[VG_CHAMPION];
}

/* The shadow model's answer to a request the champion answered (scored: 0 when it did not score it). */
typedef struct shadow_answer {
    int scored;
    int fraud;
    float score;
    int block;
} shadow_answer;

static inline int score_bucket(float p) {
    int b = (int)(p * VG_SCORE_BUCKETS);
    return b < 0 ? 0 : b >= VG_SCORE_BUCKETS ? VG_SCORE_BUCKETS - 1 : b;
}

static inline void log_row(vg_core *core, log_ring *ring, const slot_config *slot, int s, const vg_request *req,
                           float p, const vg_response *resp, const shadow_answer *shadow) {
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
    record.shadowed = (uint8_t)shadow->scored;
    record.shadow_decision = (uint8_t)shadow->fraud;
    record.shadow_model_index = (uint8_t)shadow->block;
    record.shadow_score = shadow->score;
    vg_log_push(core, ring, &record);
}

static inline void observe(vg_core *core, const vg_reader *reader, const config *cfg, const slot_config *slot, float p,
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
    vg_add(&c->score_buckets[score_bucket(p)], 1);
}

/* With shadow mode on, the shadow model (the challenger slot) scores a sampled request the champion answers too,
 * counted under its own id: scored, flagged, agreeing with the champion, and its score's bucket. */
static inline void shadow_score(vg_core *core, const vg_reader *reader, const config *cfg, const vg_request *req,
                                int champion_fraud, vg_entry *scratch, shadow_answer *out) {
    const slot_config *shadow = &cfg->slot[VG_CHALLENGER];
    if (!cfg->shadow || shadow->model == NULL || (cfg->shadow_cut <= UINT32_MAX && random32() >= cfg->shadow_cut)) {
        return;
    }
    out->score = vg_model_score(shadow->model, req->features, scratch);
    out->fraud = out->score >= shadow->threshold;
    out->block = shadow->block;
    out->scored = 1;
    model_shard *c = &core->models[shadow->block].shard[reader->shard - core->shards];
    vg_add(&c->shadow_requests, 1);
    vg_add(&c->shadow_fraud, (uint64_t)out->fraud);
    vg_add(&c->shadow_agreements, (uint64_t)(out->fraud == champion_fraud));
    vg_add(&c->score_buckets[score_bucket(out->score)], 1);
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
 * single request). A row the champion answers may also be scored by the shadow model (before the time is taken:
 * the caller waits for it too). */
static inline void score(vg_core *core, const vg_reader *reader, const config *cfg, const slot_config *slot,
                         const vg_request *req, uint64_t t_call, uint64_t t_row, vg_response *resp,
                         vg_reason *reasons) {
    vg_entry scratch[VG_MAX_FEATURES];
    float p = vg_model_score(slot->model, req->features, scratch);
    memset(resp, 0, sizeof *resp);
    resp->is_fraud = p >= slot->threshold;
    explain(core, slot, req, resp, reasons);
    int champion = slot == &cfg->slot[VG_CHAMPION];
    shadow_answer shadow = {0, 0, 0.0f, 0};
    if (champion) {
        shadow_score(core, reader, cfg, req, resp->is_fraud, scratch, &shadow);
    }
    uint64_t now = vg_now_ns();
    resp->probability = p;
    resp->model_version = slot->id;
    resp->model_version_len = slot->id_len;
    resp->latency_ms = (float)((double)(now - t_call) / 1e6);
    observe(core, reader, cfg, slot, p, resp->is_fraud, now - t_row);
    if (cfg->drift != NULL) {
        vg_drift_count(cfg->drift, req, p, champion);
    }
    log_ring *ring = __atomic_load_n(&core->log, __ATOMIC_ACQUIRE);
    if (ring != NULL) {
        log_row(core, ring, slot, champion ? VG_CHAMPION : VG_CHALLENGER, req, p, resp, &shadow);
    }
}

#endif /* VG_SCORE_H */
