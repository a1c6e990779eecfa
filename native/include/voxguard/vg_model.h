/* A TL2cgen-compiled model loaded with dlopen: the one C type shared by CompiledModel and the serving core.
 *
 * The ABI is TL2cgen's (docs/architecture.md). Two traps handled here: a NaN feature must be passed as missing = -1
 * (the generated code does not test isnan), and predict() adds into its result, which must start at zero. A vg_model is
 * reference-counted: whoever holds a pointer holds a reference; the library is dlclose'd when the last reference is
 * released, so a swapped-out model lives until in-flight requests end.
 */
#ifndef VG_MODEL_H
#define VG_MODEL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "voxguard/vg_export.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef union vg_entry {
    int missing;
    float fvalue;
    int qvalue;
} vg_entry;

typedef void (*vg_predict_fn)(vg_entry *data, int pred_margin, float *result);

typedef struct vg_model {
    void *handle;          /* dlopen handle */
    vg_predict_fn predict; /* generated predict(): adds into result, applies sigmoid when !pred_margin */
    int32_t num_feature;
    int refcount; /* atomic via __atomic builtins */
    int fd;       /* the file dlopen mapped, kept open while loaded (vg_model_open_fd), else -1 */
    char path[4096];
} vg_model;

/* Open the shared library at `path`, resolve the ABI and check it is a binary classifier with float32
 * thresholds. Returns a model with one reference, or NULL with a message in err. The caller verifies
 * the file's sha256 before calling this (a shared library is code). Beware: the loader returns an already
 * loaded library of the same path name even when the file was replaced since; vg_model_open_fd has no such trap. */
VG_API vg_model *vg_model_open(const char *path, char *err, size_t errlen);

/* Like vg_model_open, but load the file open as `fd` (e.g. a memfd holding the exact bytes whose sha256 was
 * checked); `path` names it in messages and m->path. Takes ownership of fd: it stays open while the library
 * is loaded, which keeps the loader from mistaking a later /proc/self/fd/N for this one, and is closed on
 * failure or by the last vg_model_release. */
VG_API vg_model *vg_model_open_fd(int fd, const char *path, char *err, size_t errlen);

VG_API void vg_model_retain(vg_model *m);
VG_API void vg_model_release(vg_model *m);

/* Score n rows (row-major, m->num_feature floats each, NaN = missing) into out[0..n), splitting the rows
 * into nthreads contiguous chunks scored by nthreads threads (the calling thread scores the first chunk;
 * nthreads <= 1 uses the calling thread only). Each thread has its own scratch. Needs no Python state, so
 * callers release the GIL around it. Returns 0, or ENOMEM when a scratch buffer cannot be allocated. */
VG_API int vg_model_score_batch(const vg_model *m, const float *rows, size_t n, float *out, int nthreads);

/* Score one row of m->num_feature floats (NaN = missing). `scratch` holds num_feature entries and must
 * not be shared between threads. Returns the probability. */
static inline float vg_model_score(const vg_model *m, const float *row, vg_entry *scratch) {
    for (int32_t i = 0; i < m->num_feature; ++i) {
        if (isnan(row[i])) {
            scratch[i].missing = -1;
        } else {
            scratch[i].fvalue = row[i];
        }
    }
    float result = 0.0f;
    m->predict(scratch, 0, &result);
    return result;
}

#ifdef __cplusplus
}
#endif

#endif /* VG_MODEL_H */
