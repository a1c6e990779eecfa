/* Reason codes: exact path-dependent TreeSHAP contributions of a tree ensemble (Lundberg, Erion & Lee, 2018).
 *
 * The trees come in the packed form the compiler writes beside a model's library (ml_pipeline/explain/packing.py):
 *
 *   "VGTREES1"                                   8 bytes, magic and format version
 *   u32 num_features, u32 num_trees, u32 max_depth, u32 zero
 *   f64 base_margin                              the model's base score, as a margin
 *   u32 node_count[num_trees], padded with a zero u32 to a multiple of 8 bytes
 *   num_trees x node_count[t] nodes of 40 bytes: i32 left, i32 right (-1 for a leaf), i32 feature (-1 for a leaf),
 *   u32 default_left (where a missing value goes), f32 threshold (x < threshold goes left), u32 zero,
 *   f64 value (the leaf's margin; 0 for an inner node), f64 cover (the node's sum of hessians)
 *
 * all little-endian. The contributions of a row plus its bias equal the model's margin: they are what XGBoost's
 * `predict(..., pred_contribs=True)` gives, with missing values (NaN) following each split's default direction.
 */
#ifndef VG_EXPLAIN_H
#define VG_EXPLAIN_H

#include <stddef.h>
#include <stdint.h>

#include "voxguard/vg_export.h"
#include "voxguard/vg_wire.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Deepest tree the explainer accepts (the path buffer of one call lives on the stack). */
#define VG_FOREST_MAX_DEPTH 32

typedef struct vg_forest vg_forest;

/* Check and copy the packed trees of `size` bytes at `data`. Returns the forest with one reference and the
 * feature names f0, f1, ..., or NULL with a message in err (truncated, wrong magic, a child index out of range or
 * not after its parent, a feature out of range, a tree deeper than VG_FOREST_MAX_DEPTH, a non-positive cover).
 * The caller keeps `data`. */
VG_API vg_forest *vg_forest_load(const void *data, size_t size, char *err, size_t errlen);

/* Take one more reference (the serving core holds one per snapshot that explains with the forest). */
VG_API void vg_forest_retain(vg_forest *forest);

/* Drop a reference; the last one frees the forest (NULL is ignored). */
VG_API void vg_forest_free(vg_forest *forest);

/* Name the features in reasons: n == the forest's features, each name 1 to VG_FEATURE_NAME_MAX - 1 bytes. Call it
 * before the forest is shared with other threads. Returns 0, or -1 with a message in err. */
VG_API int vg_forest_set_feature_names(vg_forest *forest, const char *const *names, int32_t n, char *err,
                                       size_t errlen);

/* Number of features a row holds. */
VG_API int32_t vg_forest_num_features(const vg_forest *forest);

/* Number of trees. */
VG_API int32_t vg_forest_num_trees(const vg_forest *forest);

/* The bias: the base margin plus every tree's expected value (the margin of a row with nothing known). */
VG_API double vg_forest_bias(const vg_forest *forest);

/* The margin of one row (num_features floats, NaN = missing): the sum of its leaves plus the base margin. */
VG_API double vg_forest_margin(const vg_forest *forest, const float *row);

/* Exact contributions of one row: phi[0..num_features) per feature and phi[num_features] = the bias, so that
 * they sum to vg_forest_margin. Overwrites phi. Reentrant: no shared state, callable from any thread. */
VG_API void vg_forest_contributions(const vg_forest *forest, const float *row, double *phi);

/* The k (at most VG_MAX_REASONS and the number of features) largest contributions of one row by magnitude, largest
 * first (ties: the lower feature index first), as reasons naming the forest's features; *bias gets the bias.
 * Returns how many were written. */
VG_API int32_t vg_forest_top_reasons(const vg_forest *forest, const float *row, int32_t k, vg_reason *out, float *bias);

#ifdef __cplusplus
}
#endif

#endif /* VG_EXPLAIN_H */
