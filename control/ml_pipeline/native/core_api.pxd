# The C API of voxguard/vg_core.h and voxguard/vg_wire.h (the serving core), defined in libvoxguard.

from libc.stdint cimport int64_t, uint8_t, uint64_t

from ml_pipeline.native.explain_api cimport vg_forest
from ml_pipeline.native.model_api cimport vg_model


cdef extern from "voxguard/vg_wire.h" nogil:
    enum:
        VG_OK
        VG_INVALID_ARGUMENT
        VG_NOT_FOUND
        VG_RESOURCE_EXHAUSTED
        VG_INTERNAL
        VG_UNAVAILABLE
        VG_MAX_FEATURES
        VG_MAX_REASONS
        VG_FEATURE_NAME_MAX


cdef extern from "voxguard/vg_core.h" nogil:
    enum:
        VG_CHAMPION
        VG_CHALLENGER
        VG_CALL_PREDICT
        VG_CALL_STREAM
        VG_CALL_BATCH
        VG_CALL_INFER
        VG_MODEL_ID_MAX
        VG_MAX_MODELS
        VG_LATENCY_BUCKETS
        VG_STATUS_MAX
        VG_SCORE_BUCKETS
        VG_EXPLAIN_OFF
        VG_EXPLAIN_REQUEST
        VG_EXPLAIN_FLAGGED
        VG_EXPLAIN_ALWAYS

    const double vg_latency_bounds_s[]

    ctypedef struct vg_model_counters:
        char model_id[128]
        uint64_t requests
        uint64_t fraud
        uint64_t latency_ns_sum
        uint64_t latency_buckets[15]
        uint64_t score_buckets[10]
        uint64_t shadow_requests
        uint64_t shadow_fraud
        uint64_t shadow_agreements

    ctypedef struct vg_core_stats:
        uint64_t slot_requests[2]
        uint64_t errors[17]
        int num_models
        vg_model_counters models[32]

    ctypedef struct vg_core:
        pass

    vg_core *vg_core_new(size_t max_request_bytes, size_t max_batch_bytes, size_t max_batch_rows,
                         int explain_policy, unsigned int explain_top_k)
    void vg_core_free(vg_core *core)
    int vg_core_set_model(vg_core *core, int slot, vg_model *model, vg_forest *explainer, const char *model_id,
                          float threshold, int64_t cut, char *err, size_t errcap)
    int vg_core_set_model_name(vg_core *core, const char *name, char *err, size_t errcap)
    int vg_core_set_shadow(vg_core *core, int shadow, uint64_t sample_cut, char *err, size_t errcap)
    int vg_core_set_cut(vg_core *core, uint64_t cut, char *err, size_t errcap)
    size_t vg_core_output_bound(const vg_core *core, int call, const uint8_t *req, size_t len)
    int vg_core_handle(vg_core *core, int call, const uint8_t *req, size_t len, uint8_t *out, size_t cap,
                       size_t *out_len, char *err, size_t errcap)
    void vg_core_count_refusal(vg_core *core, int status)
    void vg_core_read_stats(vg_core *core, vg_core_stats *stats)

    enum:
        VG_DRIFT_MAX_EDGES
        VG_DRIFT_MAX_BINS
        VG_DRIFT_MAX_FEATURES
        VG_LOG_ID_MAX
        VG_LOG_MAX_REASONS

    ctypedef struct vg_drift_counts:
        uint64_t generation
        uint64_t rows
        int num_features
        int feature_bins[64]
        int score_bins
        uint64_t features[64][17]
        uint64_t score[17]

    ctypedef struct vg_log_record:
        int64_t time_ns
        float score
        uint8_t decision
        uint8_t slot
        uint8_t model_index
        uint8_t request_id_len
        char request_id[64]
        uint8_t num_reasons
        uint8_t reason_feature[8]
        float reason_contribution[8]
        uint8_t shadowed
        uint8_t shadow_decision
        uint8_t shadow_model_index
        float shadow_score

    int vg_core_set_drift(vg_core *core, int num_features, const int *num_edges, const float *edges,
                          int num_score_edges, const float *score_edges, char *err, size_t errcap)
    void vg_core_read_drift(vg_core *core, vg_drift_counts *counts)
    int vg_core_enable_log(vg_core *core, size_t capacity, char *err, size_t errcap)
    size_t vg_core_drain_log(vg_core *core, vg_log_record *out, size_t max)
    uint64_t vg_core_log_dropped(vg_core *core)
