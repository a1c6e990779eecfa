/* The serving core: one call per request decodes, routes, scores, counts and encodes (docs/architecture.md).
 *
 * Transport-independent (no Python, no gRPC): the grpcio handler and a native C++ gRPC server call the
 * same functions. Configuration (champion/challenger models, thresholds, challenger cut) is an immutable
 * snapshot replaced atomically; a request keeps the snapshot it started with, so a swapped-out model is
 * released when its last in-flight request ends. No lock is taken on the request path (readers announce
 * themselves in per-thread shards; a writer waits for the previous snapshot's readers to leave). Counters are
 * relaxed atomics in per-thread shards, summed at scrape time. Every function is thread-safe; the setters
 * (vg_core_set_*) may wait for in-flight requests to end, so call them without holding a lock a request needs.
 */
#ifndef VG_CORE_H
#define VG_CORE_H

#include <stddef.h>
#include <stdint.h>

#include "voxguard/vg_explain.h"
#include "voxguard/vg_export.h"
#include "voxguard/vg_model.h"
#include "voxguard/vg_wire.h"

#ifdef __cplusplus
extern "C" {
#endif

enum vg_slot { VG_CHAMPION = 0, VG_CHALLENGER = 1 };
/* The calls a request can be: FraudDetection's Predict, one PredictStream message, PredictBatch, and the Open
 * Inference Protocol's ModelInfer (inference.GRPCInferenceService). */
enum vg_call { VG_CALL_PREDICT = 0, VG_CALL_STREAM = 1, VG_CALL_BATCH = 2, VG_CALL_INFER = 3 };
/* Which answers carry reasons: none (a request asking is told so), those asking (explain_top_k), also every
 * answer flagged as fraud, or every answer (the last two with at least the core's default number of reasons). */
enum vg_explain_policy { VG_EXPLAIN_OFF = 0, VG_EXPLAIN_REQUEST = 1, VG_EXPLAIN_FLAGGED = 2, VG_EXPLAIN_ALWAYS = 3 };

#define VG_MODEL_ID_MAX 128   /* bytes, NUL included */
#define VG_MAX_MODELS 32      /* counter blocks (distinct model ids) kept; the oldest unused one is reused */
#define VG_LATENCY_BUCKETS 14 /* finite upper bounds; one more bucket counts the rest (+Inf) */
#define VG_STATUS_MAX 17      /* gRPC status codes 0..16 */
#define VG_SCORE_BUCKETS 10   /* score histogram: [0, 0.1), [0.1, 0.2), ..., [0.9, 1] */
#define VG_DEFAULT_MODEL_NAME "fraud-detector" /* the Open Inference Protocol's model name until set */

VG_API extern const double vg_latency_bounds_s[VG_LATENCY_BUCKETS];

typedef struct vg_model_counters {
    char model_id[VG_MODEL_ID_MAX];
    uint64_t requests;
    uint64_t fraud;
    uint64_t latency_ns_sum;
    uint64_t latency_buckets[VG_LATENCY_BUCKETS + 1]; /* non-cumulative counts per bucket */
    uint64_t score_buckets[VG_SCORE_BUCKETS];         /* its scores (answers and shadow scores), per bucket */
    uint64_t shadow_requests;                         /* requests it scored as shadow (answering none) */
    uint64_t shadow_fraud;                            /* of those, flagged by it */
    uint64_t shadow_agreements;                       /* of those, where its decision was the champion's */
} vg_model_counters;

typedef struct vg_core_stats {
    uint64_t slot_requests[2]; /* answered by champion (model A) / challenger (model B) */
    uint64_t errors[VG_STATUS_MAX];
    int num_models;
    vg_model_counters models[VG_MAX_MODELS];
} vg_core_stats;

typedef struct vg_core vg_core;

/* Limits: a Predict/stream message over max_request_bytes, a batch over max_batch_bytes or with more than
 * max_batch_rows rows is refused with VG_INVALID_ARGUMENT. `explain_policy` (enum vg_explain_policy) and
 * `explain_top_k` (the reasons the flagged and always policies add, 1 to VG_MAX_REASONS) are fixed for the core's
 * life. Returns NULL when out of memory or when the policy or k is out of range. */
VG_API vg_core *vg_core_new(size_t max_request_bytes, size_t max_batch_bytes, size_t max_batch_rows, int explain_policy,
                            uint32_t explain_top_k);
VG_API void vg_core_free(vg_core *core);

/* Put `model` (may be NULL: the slot becomes empty) into a slot with its id, threshold and explainer (its packed
 * trees, or NULL: its answers carry no reasons and say so), and, when cut >= 0, the challenger cut, all in one
 * snapshot (a new challenger never serves under the previous one's share, a model never with another's
 * explainer); the core takes its own references. Returns VG_OK or VG_INVALID_ARGUMENT with a message. */
VG_API int vg_core_set_model(vg_core *core, int slot, vg_model *model, vg_forest *explainer, const char *model_id,
                             float threshold, int64_t cut, char *err, size_t errcap);

/* The model name ModelInfer requests must carry (their versions are the slots' model ids); 1 to
 * VG_MODEL_ID_MAX - 1 bytes. A request naming another model gets VG_NOT_FOUND. */
VG_API int vg_core_set_model_name(vg_core *core, const char *name, char *err, size_t errcap);

/* Shadow mode: with `shadow` 1 the challenger slot answers nothing (the cut is ignored); a request whose random
 * draw is below `sample_cut` (0..2**32; 2**32: every request) is also scored by it inside the same call, beside the
 * champion, counted under its id (shadow counters, score histogram) and logged in the champion's record. */
VG_API int vg_core_set_shadow(vg_core *core, int shadow, uint64_t sample_cut, char *err, size_t errcap);

/* Requests whose route hash is below `cut` (0..2**32) go to the challenger. */
VG_API int vg_core_set_cut(vg_core *core, uint64_t cut, char *err, size_t errcap);

/* Space the output of vg_core_handle needs for this request (an upper bound). */
VG_API size_t vg_core_output_bound(const vg_core *core, int call, const uint8_t *req, size_t len);

/* Handle one request of kind `call`: writes the encoded response into out[0..cap) and its length into
 * *out_len. Returns a gRPC status code; on failure err holds a one-line message for the client. */
VG_API int vg_core_handle(vg_core *core, int call, const uint8_t *req, size_t len, uint8_t *out, size_t cap,
                          size_t *out_len, char *err, size_t errcap);

/* Count a request the transport refused before it reached the core (`status` is its gRPC code: deadline
 * exceeded, cancelled, too many in flight), beside the core's own errors in vg_core_stats.errors. */
VG_API void vg_core_count_refusal(vg_core *core, int status);

/* A consistent-enough copy of the counters (each value is read atomically, shards summed). */
VG_API void vg_core_read_stats(vg_core *core, vg_core_stats *stats);

/* ---- live drift bins ----
 * With drift tracking on, every scored row adds one to a bin of each tracked feature (bin = number of edges
 * <= the value, found by a branchless binary search; the last bin counts NaN = missing) and, for the champion's
 * answers, to a bin of the score. Each count is a relaxed atomic load and store, not a locked read-modify-write:
 * two threads counting the same bin at the same instant may lose one count, which a proportion (PSI) does not
 * notice, and it keeps the cost to a few nanoseconds. Python reads the cumulative counts (a window of them). */
#define VG_DRIFT_MAX_EDGES 15
#define VG_DRIFT_MAX_BINS (VG_DRIFT_MAX_EDGES + 2) /* edges + 1 value bins, then the missing bin */
#define VG_DRIFT_MAX_FEATURES 64

typedef struct vg_drift_counts {
    uint64_t generation; /* changes whenever the edges are replaced; counts then restart from zero */
    uint64_t rows;       /* rows counted since */
    int num_features;    /* 0: drift tracking is off */
    int feature_bins[VG_DRIFT_MAX_FEATURES];
    int score_bins;
    uint64_t features[VG_DRIFT_MAX_FEATURES][VG_DRIFT_MAX_BINS]; /* feature_bins[i] used, missing last */
    uint64_t score[VG_DRIFT_MAX_BINS];                           /* score_bins used; the champion's answers */
} vg_drift_counts;

/* Track the first num_features features with the ascending edges edges[i * VG_DRIFT_MAX_EDGES + 0 ..
 * num_edges[i]) and the score with score_edges[0 .. num_score_edges); num_features 0 turns tracking off. */
VG_API int vg_core_set_drift(vg_core *core, int num_features, const int *num_edges, const float *edges,
                             int num_score_edges, const float *score_edges, char *err, size_t errcap);
VG_API void vg_core_read_drift(vg_core *core, vg_drift_counts *counts);

/* ---- prediction log ring buffer ----
 * Off until enabled; then every scored row writes one fixed-size record into a bounded lock-free ring
 * (multi-producer, one consumer). When the ring is full the record is dropped and counted; never blocks. */
#define VG_LOG_ID_MAX 64     /* request ids are truncated to this many bytes */
#define VG_LOG_MAX_REASONS 8 /* an explained answer's first reasons kept in its record */

typedef struct vg_log_record {
    int64_t time_ns; /* CLOCK_REALTIME */
    float score;
    uint8_t decision;
    uint8_t slot;        /* VG_CHAMPION or VG_CHALLENGER */
    uint8_t model_index; /* index of the model's counter block (vg_core_stats.models) */
    uint8_t request_id_len;
    char request_id[VG_LOG_ID_MAX];
    uint8_t num_reasons;                        /* 0: the answer was not explained */
    uint8_t reason_feature[VG_LOG_MAX_REASONS]; /* feature index, in the model's feature order */
    float reason_contribution[VG_LOG_MAX_REASONS];
    uint8_t shadowed; /* 1: the shadow model scored this request too */
    uint8_t shadow_decision;
    uint8_t shadow_model_index; /* index of the shadow model's counter block */
    float shadow_score;
} vg_log_record;

/* Allocate the ring (capacity rounded up to a power of two) and start logging; later calls change nothing. */
VG_API int vg_core_enable_log(vg_core *core, size_t capacity, char *err, size_t errcap);
/* Move up to `max` records into `out` (one consumer at a time); returns how many. */
VG_API size_t vg_core_drain_log(vg_core *core, vg_log_record *out, size_t max);
/* Records dropped because the ring was full. */
VG_API uint64_t vg_core_log_dropped(vg_core *core);

#ifdef __cplusplus
}
#endif

#endif /* VG_CORE_H */
