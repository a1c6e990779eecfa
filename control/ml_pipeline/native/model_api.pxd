# The C API of voxguard/vg_model.h (a TL2cgen-compiled model loaded with dlopen), defined in libvoxguard.

from libc.stdint cimport int32_t


cdef extern from "voxguard/vg_model.h" nogil:
    ctypedef union vg_entry:
        int missing
        float fvalue
        int qvalue

    ctypedef struct vg_model:
        int32_t num_feature
        char path[4096]

    vg_model *vg_model_open(const char *path, char *err, size_t errlen)
    vg_model *vg_model_open_fd(int fd, const char *path, char *err, size_t errlen)
    void vg_model_retain(vg_model *m)
    void vg_model_release(vg_model *m)
    float vg_model_score(const vg_model *m, const float *row, vg_entry *scratch)
    int vg_model_score_batch(const vg_model *m, const float *rows, size_t n, float *out, int nthreads)
