/* Protobuf wire codec of the FraudDetection messages over plain buffers (no protobuf library, no allocation).
 *
 * Decodes PredictionRequest (features packed or unpacked, request_id, explain_top_k, unknown fields of every wire
 * type skipped, malformed input refused with a message) and the rows of PredictBatchRequest; encodes
 * PredictionResponse, its stream variant ScoredPrediction (same fields + request_id = 5, the explanation fields
 * one number later) and PredictBatchResponse items.
 * Status codes are gRPC's, so a transport passes them through unchanged.
 */
#ifndef VG_WIRE_H
#define VG_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "voxguard/vg_export.h"

#ifdef __cplusplus
extern "C" {
#endif

enum vg_status {
    VG_OK = 0,
    VG_INVALID_ARGUMENT = 3,
    VG_NOT_FOUND = 5,
    VG_RESOURCE_EXHAUSTED = 8,
    VG_INTERNAL = 13,
    VG_UNAVAILABLE = 14,
};

#define VG_MAX_FEATURES 256    /* a request with more values is refused before any model sees it */
#define VG_MAX_REASONS 16      /* most reasons one answer carries (explain_top_k is clamped to it) */
#define VG_FEATURE_NAME_MAX 64 /* bytes of a feature name in a reason, NUL included */

typedef struct vg_request {
    float features[VG_MAX_FEATURES];
    int32_t num_features;
    const uint8_t *request_id; /* points into the decoded buffer; not NUL-terminated */
    size_t request_id_len;
    uint32_t explain_top_k; /* reasons asked for (field 3; 0: none) */
} vg_request;

/* One reason of an answer: a feature, the request's value of it, and its signed contribution to the margin. */
typedef struct vg_reason {
    const char *feature; /* not NUL-terminated */
    size_t feature_len;
    int32_t feature_index; /* in the model's feature order (not on the wire) */
    float value;
    float contribution;
} vg_reason;

typedef struct vg_response {
    int is_fraud;
    float probability;
    const char *model_version;
    size_t model_version_len;
    float latency_ms;
    const uint8_t *request_id; /* field 5 of ScoredPrediction */
    size_t request_id_len;
    int scored;               /* 1: a ScoredPrediction (stream message, batch item), 0: a PredictionResponse */
    const vg_reason *reasons; /* num_reasons of them, by |contribution| descending */
    int32_t num_reasons;
    int explained; /* 1: bias is written (the reasons' bias) */
    float bias;
    const char *explain_error; /* why reasons asked for were not given; NULL: none */
    size_t explain_error_len;
} vg_response;

/* Decode one PredictionRequest. Returns VG_OK or VG_INVALID_ARGUMENT with a one-line message in err. */
VG_API int vg_wire_decode_request(const uint8_t *buf, size_t len, vg_request *req, char *err, size_t errcap);

/* Next row (field 1, a nested PredictionRequest) of a PredictBatchRequest starting at *pos.
 * Returns 1 and the row's bytes, 0 at the end, -1 on malformed input (message in err). */
VG_API int vg_wire_next_row(const uint8_t *buf, size_t len, size_t *pos, const uint8_t **row, size_t *row_len,
                            char *err, size_t errcap);

/* Encoded size of a response body, and the encoder (the caller guarantees the space). */
VG_API size_t vg_wire_response_size(const vg_response *resp);
VG_API uint8_t *vg_wire_encode_response(const vg_response *resp, uint8_t *out);

/* A response as one element of a repeated message field `field` (tag, length, body). */
VG_API size_t vg_wire_item_size(const vg_response *resp);
VG_API uint8_t *vg_wire_encode_item(const vg_response *resp, uint32_t field, uint8_t *out);

#ifdef __cplusplus
}
#endif

#endif /* VG_WIRE_H */
