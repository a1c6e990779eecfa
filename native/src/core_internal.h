/* The serving core's private state, shared by its sources (snapshot.c, request.c, infer.c, drift.c, log_ring.c).
 *
 * Nothing here is exported from libvoxguard: callers see only include/voxguard/vg_core.h.
 */
#ifndef VG_CORE_INTERNAL_H
#define VG_CORE_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include "voxguard/vg_core.h"

/* Counter shards: each thread counts into one shard (its own cache lines), and a scrape sums the shards, so
 * requests on different cores never write the same cache line. More threads than shards share shards, which
 * stays correct (every update is atomic), only less private. */
#define VG_SHARDS 32

#define VG_CACHE_LINE 64

/* One shard of a model's counters. */
typedef struct model_shard {
    uint64_t requests;
    uint64_t fraud;
    uint64_t latency_ns_sum;
    uint64_t latency_buckets[VG_LATENCY_BUCKETS + 1]; /* non-cumulative counts per bucket */
    uint64_t score_buckets[VG_SCORE_BUCKETS];
    uint64_t shadow_requests, shadow_fraud, shadow_agreements;
} __attribute__((aligned(VG_CACHE_LINE))) model_shard;

/* The counters of one model id, per shard. */
typedef struct model_block {
    char model_id[VG_MODEL_ID_MAX];
    model_shard shard[VG_SHARDS];
} model_block;

/* One shard of the core's own counters and of the in-flight readers of each epoch parity. */
typedef struct core_shard {
    uint64_t readers[2];
    uint64_t slot_requests[2];
    uint64_t errors[VG_STATUS_MAX];
} __attribute__((aligned(VG_CACHE_LINE))) core_shard;

typedef struct slot_config {
    vg_model *model;      /* NULL: empty slot */
    vg_forest *explainer; /* NULL: the model's answers carry no reasons */
    float threshold;
    size_t id_len;
    char id[VG_MODEL_ID_MAX];
    int block; /* index of the model's counter block in vg_core.models */
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

/* One immutable configuration: what each slot serves, the challenger cut, the drift edges, and the name the
 * Open Inference Protocol serves the models under. */
typedef struct config {
    int refcount;
    uint64_t cut;
    int shadow;          /* 1: the challenger slot scores as shadow and answers nothing */
    uint64_t shadow_cut; /* requests whose draw is below it are shadow-scored (2**32: all) */
    size_t model_name_len;
    char model_name[VG_MODEL_ID_MAX];
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

/* Readers (requests) take no lock: they announce themselves in the reader count of the current epoch of their
 * shard, read `cfg`, and leave when done. A writer (holding `lock`) publishes the next snapshot, advances the
 * epoch and waits until the readers of the previous epoch have left; only then is the previous snapshot
 * released, so a replaced model is freed right after its last in-flight request ends. */
struct vg_core {
    config *cfg;    /* the current snapshot: an atomic pointer */
    uint64_t epoch; /* its parity selects the reader count new readers join */
    core_shard shards[VG_SHARDS];
    pthread_mutex_t lock; /* serialises writers; never taken by a request */
    size_t max_request_bytes, max_batch_bytes, max_batch_rows;
    int explain_policy;     /* enum vg_explain_policy, fixed at creation */
    uint32_t explain_top_k; /* reasons the flagged and always policies give at least */
    uint64_t latency_bounds_ns[VG_LATENCY_BUCKETS];
    int num_models;          /* counter blocks in use, guarded by lock */
    uint64_t blocks_created; /* sequence giving each block's age, guarded by lock */
    uint64_t created[VG_MAX_MODELS];
    uint64_t drift_generations; /* guarded by lock */
    log_ring *log;              /* NULL until vg_core_enable_log; freed with the core */
    uint64_t log_dropped;
    pthread_mutex_t log_lock;          /* one consumer at a time */
    model_block models[VG_MAX_MODELS]; /* values updated with relaxed atomics, per shard */
};

/* Write a one-line message into err (when there is room) and return `status`. */
__attribute__((format(printf, 4, 5))) static inline int vg_fail(int status, char *err, size_t errcap, const char *fmt,
                                                                ...) {
    if (errcap > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errcap, fmt, ap);
        va_end(ap);
    }
    return status;
}

static inline uint64_t vg_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void vg_add(uint64_t *counter, uint64_t n) {
    __atomic_add_fetch(counter, n, __ATOMIC_RELAXED);
}

static inline uint64_t vg_load(const uint64_t *counter) {
    return __atomic_load_n(counter, __ATOMIC_RELAXED);
}

/* ---- snapshots (snapshot.c) ---- */

/* The calling thread's counter shard (assigned round-robin on its first request). */
static inline int vg_shard(void) {
    static __thread int shard = -1;
    static int next_shard;
    if (__builtin_expect(shard < 0, 0)) {
        shard = __atomic_fetch_add(&next_shard, 1, __ATOMIC_RELAXED) & (VG_SHARDS - 1);
    }
    return shard;
}

/* A request's hold on the current snapshot: no lock, no shared cache line (see struct vg_core). */
typedef struct vg_reader {
    core_shard *shard;
    int parity;
} vg_reader;

static inline const config *vg_reader_enter(vg_core *core, vg_reader *reader) {
    reader->shard = &core->shards[vg_shard()];
    for (;;) {
        int parity = (int)(__atomic_load_n(&core->epoch, __ATOMIC_SEQ_CST) & 1);
        __atomic_add_fetch(&reader->shard->readers[parity], 1, __ATOMIC_SEQ_CST);
        if ((int)(__atomic_load_n(&core->epoch, __ATOMIC_SEQ_CST) & 1) == parity) {
            reader->parity = parity;
            return __atomic_load_n(&core->cfg, __ATOMIC_SEQ_CST);
        }
        __atomic_sub_fetch(&reader->shard->readers[parity], 1, __ATOMIC_RELEASE); /* a writer moved on: retry */
    }
}

static inline void vg_reader_leave(vg_reader *reader) {
    __atomic_sub_fetch(&reader->shard->readers[reader->parity], 1, __ATOMIC_RELEASE);
}

void vg_config_release(config *cfg);
/* A copy of the current snapshot with its own references; core->lock held. */
config *vg_config_copy_locked(vg_core *core);
/* Make `next` current and wait for the readers of the previous one (core->lock held); returns the previous
 * snapshot, which no request uses any more, for the caller to release after unlocking. */
config *vg_config_publish_locked(vg_core *core, config *next);

/* ---- the Open Inference Protocol (infer.c) ---- */

/* ModelInfer: decode, route, score every row, encode; counted like the other calls by vg_core_handle. */
int vg_infer_handle(vg_core *core, const uint8_t *req, size_t len, uint8_t *out, size_t cap, size_t *out_len, char *err,
                    size_t errcap, uint64_t t0);
/* Space the ModelInferResponse of a request of `len` bytes needs (an upper bound). */
size_t vg_infer_output_bound(size_t len);

/* ---- drift (drift.c) ---- */

void vg_drift_release(drift *d);

/* Number of edges <= x (np.searchsorted(edges, x, "right")) over EDGE_SLOTS edges padded with +Inf: four
 * branch-free steps of 8, 4, 2, 1. NaN goes to MISSING_BIN (±Inf never arrives: the decoder refuses it). */
static inline int vg_drift_bin(const float *edges, float x) {
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
static inline void vg_bump(uint64_t *counter) {
    __atomic_store_n(counter, __atomic_load_n(counter, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
}

static inline void vg_drift_count(drift *d, const vg_request *req, float p, int champion) {
    int n = d->num_features < req->num_features ? d->num_features : (int)req->num_features;
    for (int i = 0; i < n; ++i) {
        vg_bump(&d->counts[i][vg_drift_bin(d->edges[i], req->features[i])]);
    }
    if (champion) {
        vg_bump(&d->score[vg_drift_bin(d->score_edges, p)]);
    }
    vg_bump(&d->rows);
}

/* ---- prediction log (log_ring.c) ---- */

/* Append one record, or count it dropped when the ring is full; never blocks. */
void vg_log_push(vg_core *core, log_ring *ring, const vg_log_record *record);

#endif /* VG_CORE_INTERNAL_H */
