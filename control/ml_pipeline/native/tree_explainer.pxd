# TreeExplainer's C-level face: the serving core `cimport`s it and serves the forest it owns.

from ml_pipeline.native.explain_api cimport vg_forest


cdef class TreeExplainer:
    cdef vg_forest *_forest
    cdef readonly str sha256
    cdef readonly tuple feature_names
