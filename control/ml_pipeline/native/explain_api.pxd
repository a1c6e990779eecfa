# The C API of voxguard/vg_explain.h (exact TreeSHAP over packed trees), defined in libvoxguard.

from libc.stdint cimport int32_t


cdef extern from "voxguard/vg_explain.h" nogil:
    ctypedef struct vg_forest:
        pass

    vg_forest *vg_forest_load(const void *data, size_t size, char *err, size_t errlen)
    void vg_forest_retain(vg_forest *forest)
    void vg_forest_free(vg_forest *forest)
    int vg_forest_set_feature_names(vg_forest *forest, const char *const *names, int32_t n, char *err,
                                    size_t errlen)
    int32_t vg_forest_num_features(const vg_forest *forest)
    int32_t vg_forest_num_trees(const vg_forest *forest)
    double vg_forest_bias(const vg_forest *forest)
    double vg_forest_margin(const vg_forest *forest, const float *row)
    void vg_forest_contributions(const vg_forest *forest, const float *row, double *phi)
