/* The serving core (see vg_core.h). */
#include "vg_core.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vg_route.h"

const double vg_latency_bounds_s[VG_LATENCY_BUCKETS] = {
    1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2,
};

typedef struct slot_config {
    vg_model *model; /* NULL: empty slot */
    float threshold;
    size_t id_len;
    char id[VG_MODEL_ID_MAX];
    vg_model_counters *counters;
} slot_config;

/* Drift edges and their counters: replaced as a whole (new generation), shared by the snapshots that use it.
 * Edges are padded to EDGE_SLOTS with +Inf, so the search takes the same four steps for every feature; a
 * count row holds EDGE_SLOTS value bins, then the missing bin at MISSING_BIN. */
#define EDGE_SLOTS (VG_DRIFT_MAX_EDGES + 1)
#define MISSING_BIN EDGE_SLOTS

typedef struct drift {
    int refcount;
    uint64_t generation;
    int num_features, num_score_edges;
    int num_edges[VG_DRIFT_MAX_FEATURES];
    float edges[VG_DRIFT_MAX_FEATURES][EDGE_SLOTS];
    float score_edges[EDGE_SLOTS];
    uint64_t rows;
    uint64_t counts[VG_DRIFT_MAX_FEATURES][EDGE_SLOTS + 1];
    uint64_t score[EDGE_SLOTS + 1];
} drift;

typedef struct config {
    int refcount;
    uint64_t cut;
    slot_config slot[2];
    drift *drift; /* NULL: drift tracking off */
} config;

/* Bounded multi-producer ring of log records (D. Vyukov's sequence-numbered cells). */
typedef struct log_cell {
    uint64_t seq;
    vg_log_record record;
} log_cell;

typedef struct log_ring {
    uint64_t mask;
    uint64_t head; /* next cell to write, claimed by producers with a CAS */
    char pad[64];
    uint64_t tail; /* next cell to read; the consumer holds log_lock */
    log_cell cells[];
} log_ring;

struct vg_core {
    pthread_mutex_t lock; /* guards `cfg` load + retain, and writers; never held across scoring */
    config *cfg;
    size_t max_request_bytes, max_batch_bytes, max_batch_rows;
    uint64_t latency_bounds_ns[VG_LATENCY_BUCKETS];
    uint64_t slot_requests[2];
    uint64_t errors[VG_STATUS_MAX];
    int num_models;                          /* counter blocks in use, guarded by lock */
    uint64_t blocks_created;                 /* sequence giving each block's age, guarded by lock */
    uint64_t created[VG_MAX_MODELS];
    vg_model_counters models[VG_MAX_MODELS]; /* values updated with relaxed atomics */
    uint64_t drift_generations;              /* guarded by lock */
    log_ring *log;                           /* NULL until vg_core_enable_log; freed with the core */
    uint64_t log_dropped;
    pthread_mutex_t log_lock;                /* one consumer at a time */
};

static int fail(int status, char *err, size_t errcap, const char *fmt, ...) {
    if (errcap > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errcap, fmt, ap);
        va_end(ap);
    }
    return status;
}

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void add(uint64_t *counter, uint64_t n) { __atomic_add_fetch(counter, n, __ATOMIC_RELAXED); }

static inline uint64_t load(const uint64_t *counter) { return __atomic_load_n(counter, __ATOMIC_RELAXED); }

/* ---- configuration snapshots ---- */

static config *acquire(vg_core *core) {
    pthread_mutex_lock(&core->lock);
    config *cfg = core->cfg;
    __atomic_add_fetch(&cfg->refcount, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&core->lock);
    return cfg;
}

static void drift_release(drift *d) {
    if (d != NULL && __atomic_sub_fetch(&d->refcount, 1, __ATOMIC_ACQ_REL) == 0) {
        free(d);
    }
}

static void release(config *cfg) {
    if (__atomic_sub_fetch(&cfg->refcount, 1, __ATOMIC_ACQ_REL) == 0) {
        for (int s = 0; s < 2; ++s) {
            vg_model_release(cfg->slot[s].model);
        }
        drift_release(cfg->drift);
        free(cfg);
    }
}

/* Copy of the current snapshot with its own model references; called with the lock held. */
static config *copy_locked(vg_core *core) {
    config *next = malloc(sizeof(config));
    if (next == NULL) {
        return NULL;
    }
    *next = *core->cfg;
    next->refcount = 1;
    for (int s = 0; s < 2; ++s) {
        if (next->slot[s].model != NULL) {
            vg_model_retain(next->slot[s].model);
        }
    }
    if (next->drift != NULL) {
        __atomic_add_fetch(&next->drift->refcount, 1, __ATOMIC_RELAXED);
    }
    return next;
}

/* Publish `next` (lock held); the previous snapshot is released by the caller after unlocking. */
static config *publish_locked(vg_core *core, config *next) {
    config *previous = core->cfg;
    core->cfg = next;
    return previous;
}

/* The counter block of `model_id`; a new id takes a free block, or resets the oldest block that no slot uses
 * (a request still running on an older snapshot may then count once under the new id). Lock held. */
static vg_model_counters *counters_for_locked(vg_core *core, const char *model_id) {
    for (int i = 0; i < core->num_models; ++i) {
        if (strcmp(core->models[i].model_id, model_id) == 0) {
            return &core->models[i];
        }
    }
    int index = core->num_models;
    if (index < VG_MAX_MODELS) {
        core->num_models++;
    } else {
        index = -1;
        for (int i = 0; i < VG_MAX_MODELS; ++i) {
            vg_model_counters *c = &core->models[i];
            int in_use = c == core->cfg->slot[0].counters || c == core->cfg->slot[1].counters;
            if (!in_use && (index < 0 || core->created[i] < core->created[index])) {
                index = i;
            }
        }
    }
    vg_model_counters *block = &core->models[index];
    core->created[index] = ++core->blocks_created;
    __atomic_store_n(&block->requests, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&block->fraud, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&block->latency_ns_sum, 0, __ATOMIC_RELAXED);
    for (int b = 0; b <= VG_LATENCY_BUCKETS; ++b) {
        __atomic_store_n(&block->latency_buckets[b], 0, __ATOMIC_RELAXED);
    }
    snprintf(block->model_id, sizeof block->model_id, "%s", model_id);
    return block;
}

vg_core *vg_core_new(size_t max_request_bytes, size_t max_batch_bytes, size_t max_batch_rows) {
    vg_core *core = calloc(1, sizeof(vg_core));
    config *cfg = calloc(1, sizeof(config));
    if (core == NULL || cfg == NULL) {
        free(core);
        free(cfg);
        return NULL;
    }
    pthread_mutex_init(&core->lock, NULL);
    pthread_mutex_init(&core->log_lock, NULL);
    cfg->refcount = 1;
    core->cfg = cfg;
    core->max_request_bytes = max_request_bytes;
    core->max_batch_bytes = max_batch_bytes;
    core->max_batch_rows = max_batch_rows;
    for (int i = 0; i < VG_LATENCY_BUCKETS; ++i) {
        core->latency_bounds_ns[i] = (uint64_t)(vg_latency_bounds_s[i] * 1e9 + 0.5);
    }
    return core;
}

void vg_core_free(vg_core *core) {
    if (core != NULL) {
        release(core->cfg);
        pthread_mutex_destroy(&core->lock);
        pthread_mutex_destroy(&core->log_lock);
        free(core->log);
        free(core);
    }
}

int vg_core_set_model(vg_core *core, int slot, vg_model *model, const char *model_id, float threshold, int64_t cut,
                      char *err, size_t errcap) {
    if (cut > ((int64_t)1 << 32)) {
        return fail(VG_INVALID_ARGUMENT, err, errcap, "challenger cut must be in [0, 2**32]");
    }
    if (slot != VG_CHAMPION && slot != VG_CHALLENGER) {
        return fail(VG_INVALID_ARGUMENT, err, errcap, "slot must be 0 (champion) or 1 (challenger), not %d", slot);
    }
    size_t id_len = model_id == NULL ? 0 : strlen(model_id);
    if (model != NULL && (id_len == 0 || id_len >= VG_MODEL_ID_MAX)) {
        return fail(VG_INVALID_ARGUMENT, err, errcap, "model id must have 1 to %d bytes", VG_MODEL_ID_MAX - 1);
    }
    if (model != NULL && !(threshold >= 0.0f && threshold <= 1.0f)) {
        return fail(VG_INVALID_ARGUMENT, err, errcap, "threshold must be in [0, 1]");
    }
    if (model != NULL && (model->num_feature < 1 || model->num_feature > VG_MAX_FEATURES)) {
        return fail(VG_INVALID_ARGUMENT, err, errcap, "model has %d features; at most %d are served",
                    (int)model->num_feature, VG_MAX_FEATURES);
    }
    pthread_mutex_lock(&core->lock);
    config *next = copy_locked(core);
    if (next == NULL) {
        pthread_mutex_unlock(&core->lock);
        return fail(VG_INTERNAL, err, errcap, "out of memory");
    }
    slot_config *target = &next->slot[slot];
    vg_model_release(target->model);
    memset(target, 0, sizeof *target);
    if (model != NULL) {
        vg_model_retain(model);
        target->model = model;
        target->threshold = threshold;
        target->id_len = id_len;
        memcpy(target->id, model_id, id_len + 1);
        target->counters = counters_for_locked(core, model_id);
    }
    if (cut >= 0) {
        next->cut = (uint64_t)cut;
    }
    config *previous = publish_locked(core, next);
    pthread_mutex_unlock(&core->lock);
    release(previous);
    return VG_OK;
}

int vg_core_set_cut(vg_core *core, uint64_t cut, char *err, size_t errcap) {
    if (cut > ((uint64_t)1 << 32)) {
        return fail(VG_INVALID_ARGUMENT, err, errcap, "challenger cut must be in [0, 2**32]");
    }
    pthread_mutex_lock(&core->lock);
    config *next = copy_locked(core);
    if (next == NULL) {
        pthread_mutex_unlock(&core->lock);
        return fail(VG_INTERNAL, err, errcap, "out of memory");
    }
    next->cut = cut;
    config *previous = publish_locked(core, next);
    pthread_mutex_unlock(&core->lock);
    release(previous);
    return VG_OK;
}

/* ---- the request path ---- */

static inline uint32_t random32(void) {
    static __thread uint64_t state;
    if (state == 0) {
        state = now_ns() ^ (uint64_t)(uintptr_t)&state ^ 0x9E3779B97F4A7C15ull;
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
        return fail(VG_INVALID_ARGUMENT, err, errcap, "%sexpected %d features (in the model's feature order), got %d",
                    where, (int)slot->model->num_feature, (int)req->num_features);
    }
    return VG_OK;
}

/* Number of edges <= x (np.searchsorted(edges, x, "right")) over EDGE_SLOTS edges padded with +Inf: four
 * branch-free steps of 8, 4, 2, 1. NaN goes to MISSING_BIN (±Inf never arrives: the decoder refuses it). */
static inline int drift_bin(const float *edges, float x) {
    if (__builtin_expect(x != x, 0)) {
        return MISSING_BIN;
    }
    int i = 0;
    i += (edges[i + 7] <= x) << 3;
    i += (edges[i + 3] <= x) << 2;
    i += (edges[i + 1] <= x) << 1;
    i += edges[i] <= x;
    return i;
}

/* +1 without a locked read-modify-write (see vg_core.h: a rare lost count is harmless for proportions). */
static inline void bump(uint64_t *counter) {
    __atomic_store_n(counter, __atomic_load_n(counter, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
}

static inline void count_drift(drift *d, const vg_request *req, float p, int champion) {
    int n = d->num_features < req->num_features ? d->num_features : (int)req->num_features;
    for (int i = 0; i < n; ++i) {
        bump(&d->counts[i][drift_bin(d->edges[i], req->features[i])]);
    }
    if (champion) {
        bump(&d->score[drift_bin(d->score_edges, p)]);
    }
    bump(&d->rows);
}

static inline void log_push(vg_core *core, log_ring *ring, const vg_log_record *record) {
    uint64_t pos = __atomic_load_n(&ring->head, __ATOMIC_RELAXED);
    for (;;) {
        log_cell *cell = &ring->cells[pos & ring->mask];
        uint64_t seq = __atomic_load_n(&cell->seq, __ATOMIC_ACQUIRE);
        int64_t lag = (int64_t)(seq - pos);
        if (lag == 0) {
            if (__atomic_compare_exchange_n(&ring->head, &pos, pos + 1, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
                cell->record = *record;
                __atomic_store_n(&cell->seq, pos + 1, __ATOMIC_RELEASE);
                return;
            }
        } else if (lag < 0) { /* full: the consumer has not freed this cell yet */
            add(&core->log_dropped, 1);
            return;
        } else {
            pos = __atomic_load_n(&ring->head, __ATOMIC_RELAXED);
        }
    }
}

static inline void log_row(vg_core *core, log_ring *ring, const slot_config *slot, int s, const vg_request *req,
                           float p, int fraud) {
    vg_log_record record;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    record.time_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    record.score = p;
    record.decision = (uint8_t)fraud;
    record.slot = (uint8_t)s;
    record.model_index = (uint8_t)(slot->counters - core->models);
    size_t len = req->request_id_len < VG_LOG_ID_MAX ? req->request_id_len : VG_LOG_ID_MAX;
    record.request_id_len = (uint8_t)len;
    memcpy(record.request_id, req->request_id, len);
    log_push(core, ring, &record);
}

static inline void observe(vg_core *core, const config *cfg, const slot_config *slot, int fraud, uint64_t ns) {
    vg_model_counters *c = slot->counters;
    int b = 0;
    while (b < VG_LATENCY_BUCKETS && ns > core->latency_bounds_ns[b]) {
        ++b;
    }
    add(&core->slot_requests[slot == &cfg->slot[VG_CHALLENGER]], 1);
    add(&c->requests, 1);
    add(&c->fraud, (uint64_t)fraud);
    add(&c->latency_ns_sum, ns);
    add(&c->latency_buckets[b], 1);
}

/* Scores one decoded, checked row into `resp` and counts it: latency_ms is the time since the call arrived
 * (t_call), the histogram gets the time spent on this row since t_row (the same for a single request). */
static inline void score(vg_core *core, const config *cfg, const slot_config *slot, const vg_request *req,
                         uint64_t t_call, uint64_t t_row, vg_response *resp) {
    vg_entry scratch[VG_MAX_FEATURES];
    float p = vg_model_score(slot->model, req->features, scratch);
    uint64_t now = now_ns();
    resp->is_fraud = p >= slot->threshold;
    resp->probability = p;
    resp->model_version = slot->id;
    resp->model_version_len = slot->id_len;
    resp->latency_ms = (float)((double)(now - t_call) / 1e6);
    observe(core, cfg, slot, resp->is_fraud, now - t_row);
    int champion = slot == &cfg->slot[VG_CHAMPION];
    if (cfg->drift != NULL) {
        count_drift(cfg->drift, req, p, champion);
    }
    log_ring *ring = __atomic_load_n(&core->log, __ATOMIC_ACQUIRE);
    if (ring != NULL) {
        log_row(core, ring, slot, champion ? VG_CHAMPION : VG_CHALLENGER, req, p, resp->is_fraud);
    }
}

static size_t count_rows(const uint8_t *req, size_t len) {
    size_t pos = 0, rows = 0, row_len;
    const uint8_t *row;
    char err[8];
    while (vg_wire_next_row(req, len, &pos, &row, &row_len, err, sizeof err) == 1) {
        ++rows;
    }
    return rows;
}

/* Largest encoded response or batch item besides its request id's bytes: item tag + length varint (5) + is_fraud
 * (2) + probability (5) + model_version (tag, 2-byte length, id) + latency_ms (5) + request_id tag and length
 * varint (1 + 5). The request id's own bytes are counted separately (at most the request's length). */
#define ITEM_BOUND (1 + 5 + 2 + 5 + (1 + 2 + VG_MODEL_ID_MAX) + 5 + (1 + 5))

size_t vg_core_output_bound(const vg_core *core, int call, const uint8_t *req, size_t len) {
    (void)core;
    if (call == VG_CALL_BATCH) {
        return count_rows(req, len) * ITEM_BOUND + len + 16;
    }
    return ITEM_BOUND + len + 16;
}

static int handle_one(vg_core *core, int call, const uint8_t *req, size_t len, uint8_t *out, size_t cap,
                      size_t *out_len, char *err, size_t errcap, uint64_t t0) {
    vg_request row;
    if (len > core->max_request_bytes) {
        return fail(VG_INVALID_ARGUMENT, err, errcap, "request of %zu bytes exceeds the limit of %zu bytes", len,
                    core->max_request_bytes);
    }
    int status = vg_wire_decode_request(req, len, &row, err, errcap);
    if (status != VG_OK) {
        return status;
    }
    config *cfg = acquire(core);
    if (cfg->slot[VG_CHAMPION].model == NULL) {
        release(cfg);
        return fail(VG_UNAVAILABLE, err, errcap, "no verified champion model is loaded yet; retry later");
    }
    const slot_config *slot = route(cfg, &row, random32());
    if ((status = check_row(slot, &row, err, errcap, "")) != VG_OK) {
        release(cfg);
        return status;
    }
    vg_response resp;
    score(core, cfg, slot, &row, t0, t0, &resp);
    resp.request_id = call == VG_CALL_STREAM ? row.request_id : NULL;
    resp.request_id_len = call == VG_CALL_STREAM ? row.request_id_len : 0;
    if (vg_wire_response_size(&resp) > cap) {
        release(cfg);
        return fail(VG_INTERNAL, err, errcap, "response buffer too small");
    }
    *out_len = (size_t)(vg_wire_encode_response(&resp, out) - out);
    release(cfg);
    return VG_OK;
}

static int handle_batch(vg_core *core, const uint8_t *req, size_t len, uint8_t *out, size_t cap, size_t *out_len,
                        char *err, size_t errcap, uint64_t t0) {
    if (len > core->max_batch_bytes) {
        return fail(VG_INVALID_ARGUMENT, err, errcap, "batch of %zu bytes exceeds the limit of %zu bytes", len,
                    core->max_batch_bytes);
    }
    config *cfg = acquire(core);
    if (cfg->slot[VG_CHAMPION].model == NULL) {
        release(cfg);
        return fail(VG_UNAVAILABLE, err, errcap, "no verified champion model is loaded yet; retry later");
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
            status = fail(VG_INVALID_ARGUMENT, err, errcap, "batch has more than %zu rows", core->max_batch_rows);
        } else if ((status = vg_wire_decode_request(data, row_len, &row, err, errcap)) != VG_OK) {
            size_t used = strlen(err);
            if (used + strlen(where) < errcap) {
                memmove(err + strlen(where), err, used + 1);
                memcpy(err, where, strlen(where));
            }
        } else {
            status = check_row(route(cfg, &row, row_draw(seed, rows)), &row, err, errcap, where);
            need += ITEM_BOUND + row.request_id_len;
        }
    }
    if (status == VG_OK && more < 0) {
        status = VG_INVALID_ARGUMENT;
    }
    if (status == VG_OK && need > cap) {
        status = fail(VG_INTERNAL, err, errcap, "response buffer too small");
    }
    if (status != VG_OK) {
        release(cfg);
        return status;
    }
    /* Pass 2 scores the validated rows, routing each exactly as pass 1 did. */
    uint8_t *w = out;
    pos = 0;
    for (size_t i = 1; vg_wire_next_row(req, len, &pos, &data, &row_len, err, errcap) == 1; ++i) {
        uint64_t t_row = now_ns();
        vg_wire_decode_request(data, row_len, &row, err, errcap);
        const slot_config *slot = route(cfg, &row, row_draw(seed, i));
        vg_response resp;
        score(core, cfg, slot, &row, t0, t_row, &resp);
        resp.request_id = row.request_id;
        resp.request_id_len = row.request_id_len;
        w = vg_wire_encode_item(&resp, 1, w);
    }
    *out_len = (size_t)(w - out);
    release(cfg);
    return VG_OK;
}

int vg_core_handle(vg_core *core, int call, const uint8_t *req, size_t len, uint8_t *out, size_t cap,
                   size_t *out_len, char *err, size_t errcap) {
    uint64_t t0 = now_ns();
    int status;
    *out_len = 0;
    if (call == VG_CALL_BATCH) {
        status = handle_batch(core, req, len, out, cap, out_len, err, errcap, t0);
    } else if (call == VG_CALL_PREDICT || call == VG_CALL_STREAM) {
        status = handle_one(core, call, req, len, out, cap, out_len, err, errcap, t0);
    } else {
        status = fail(VG_INTERNAL, err, errcap, "unknown call kind %d", call);
    }
    if (status != VG_OK) {
        add(&core->errors[status < VG_STATUS_MAX ? status : VG_INTERNAL], 1);
    }
    return status;
}

void vg_core_read_stats(vg_core *core, vg_core_stats *stats) {
    memset(stats, 0, sizeof *stats);
    for (int s = 0; s < 2; ++s) {
        stats->slot_requests[s] = load(&core->slot_requests[s]);
    }
    for (int i = 0; i < VG_STATUS_MAX; ++i) {
        stats->errors[i] = load(&core->errors[i]);
    }
    pthread_mutex_lock(&core->lock);
    stats->num_models = core->num_models;
    for (int i = 0; i < core->num_models; ++i) {
        const vg_model_counters *c = &core->models[i];
        vg_model_counters *o = &stats->models[i];
        memcpy(o->model_id, c->model_id, sizeof o->model_id);
        o->requests = load(&c->requests);
        o->fraud = load(&c->fraud);
        o->latency_ns_sum = load(&c->latency_ns_sum);
        for (int b = 0; b <= VG_LATENCY_BUCKETS; ++b) {
            o->latency_buckets[b] = load(&c->latency_buckets[b]);
        }
    }
    pthread_mutex_unlock(&core->lock);
}

/* ---- drift bins ---- */

int vg_core_set_drift(vg_core *core, int num_features, const int *num_edges, const float *edges, int num_score_edges,
                      const float *score_edges, char *err, size_t errcap) {
    if (num_features < 0 || num_features > VG_DRIFT_MAX_FEATURES) {
        return fail(VG_INVALID_ARGUMENT, err, errcap, "drift tracks 0 to %d features, not %d", VG_DRIFT_MAX_FEATURES,
                    num_features);
    }
    drift *d = NULL;
    if (num_features > 0) {
        if (num_score_edges < 0 || num_score_edges > VG_DRIFT_MAX_EDGES) {
            return fail(VG_INVALID_ARGUMENT, err, errcap, "the score has %d edges; at most %d", num_score_edges,
                        VG_DRIFT_MAX_EDGES);
        }
        for (int i = 0; i < num_features; ++i) {
            if (num_edges[i] < 0 || num_edges[i] > VG_DRIFT_MAX_EDGES) {
                return fail(VG_INVALID_ARGUMENT, err, errcap, "feature %d has %d edges; at most %d", i, num_edges[i],
                            VG_DRIFT_MAX_EDGES);
            }
        }
        if ((d = calloc(1, sizeof *d)) == NULL) {
            return fail(VG_INTERNAL, err, errcap, "out of memory");
        }
        d->refcount = 1;
        d->num_features = num_features;
        d->num_score_edges = num_score_edges;
        for (int i = 0; i < num_features; ++i) {
            d->num_edges[i] = num_edges[i];
            for (int j = 0; j < EDGE_SLOTS; ++j) {
                d->edges[i][j] = j < num_edges[i] ? edges[(size_t)i * VG_DRIFT_MAX_EDGES + j] : INFINITY;
            }
        }
        for (int j = 0; j < EDGE_SLOTS; ++j) {
            d->score_edges[j] = j < num_score_edges ? score_edges[j] : INFINITY;
        }
    }
    pthread_mutex_lock(&core->lock);
    config *next = copy_locked(core);
    if (next == NULL) {
        pthread_mutex_unlock(&core->lock);
        drift_release(d);
        return fail(VG_INTERNAL, err, errcap, "out of memory");
    }
    drift_release(next->drift);
    next->drift = d;
    ++core->drift_generations;
    if (d != NULL) {
        d->generation = core->drift_generations;
    }
    config *previous = publish_locked(core, next);
    pthread_mutex_unlock(&core->lock);
    release(previous);
    return VG_OK;
}

void vg_core_read_drift(vg_core *core, vg_drift_counts *counts) {
    memset(counts, 0, sizeof *counts);
    config *cfg = acquire(core);
    const drift *d = cfg->drift;
    if (d != NULL) {
        counts->generation = d->generation;
        counts->num_features = d->num_features;
        counts->score_bins = d->num_score_edges + 2;
        counts->rows = load(&d->rows);
        for (int i = 0; i < d->num_features; ++i) {
            int values = d->num_edges[i] + 1;
            counts->feature_bins[i] = values + 1;
            for (int b = 0; b < values; ++b) {
                counts->features[i][b] = load(&d->counts[i][b]);
            }
            counts->features[i][values] = load(&d->counts[i][MISSING_BIN]);
        }
        for (int b = 0; b < d->num_score_edges + 1; ++b) {
            counts->score[b] = load(&d->score[b]);
        }
        counts->score[d->num_score_edges + 1] = load(&d->score[MISSING_BIN]);
    }
    release(cfg);
}

/* ---- prediction log ring ---- */

int vg_core_enable_log(vg_core *core, size_t capacity, char *err, size_t errcap) {
    if (capacity < 2 || capacity > ((size_t)1 << 24)) {
        return fail(VG_INVALID_ARGUMENT, err, errcap, "log capacity must be in [2, 2**24], not %zu", capacity);
    }
    size_t cells = 2;
    while (cells < capacity) {
        cells <<= 1;
    }
    pthread_mutex_lock(&core->log_lock);
    if (core->log == NULL) {
        log_ring *ring = calloc(1, sizeof(log_ring) + cells * sizeof(log_cell));
        if (ring == NULL) {
            pthread_mutex_unlock(&core->log_lock);
            return fail(VG_INTERNAL, err, errcap, "out of memory");
        }
        ring->mask = cells - 1;
        for (size_t i = 0; i < cells; ++i) {
            ring->cells[i].seq = i;
        }
        __atomic_store_n(&core->log, ring, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&core->log_lock);
    return VG_OK;
}

size_t vg_core_drain_log(vg_core *core, vg_log_record *out, size_t max) {
    size_t n = 0;
    pthread_mutex_lock(&core->log_lock);
    log_ring *ring = core->log;
    if (ring != NULL) {
        uint64_t pos = ring->tail;
        while (n < max) {
            log_cell *cell = &ring->cells[pos & ring->mask];
            uint64_t seq = __atomic_load_n(&cell->seq, __ATOMIC_ACQUIRE);
            if ((int64_t)(seq - (pos + 1)) < 0) {
                break; /* empty, or the next record is still being written */
            }
            out[n++] = cell->record;
            __atomic_store_n(&cell->seq, pos + ring->mask + 1, __ATOMIC_RELEASE);
            ++pos;
        }
        ring->tail = pos;
    }
    pthread_mutex_unlock(&core->log_lock);
    return n;
}

uint64_t vg_core_log_dropped(vg_core *core) { return load(&core->log_dropped); }
