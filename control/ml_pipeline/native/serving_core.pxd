# ServingCore's C-level face: the native transport `cimport`s it and serves the vg_core it owns.

from libc.stdint cimport int64_t

from ml_pipeline.native.core_api cimport vg_core, vg_log_record
from ml_pipeline.native.compiled_model cimport CompiledModel
from ml_pipeline.native.tree_explainer cimport TreeExplainer


cdef class ServingCore:
    cdef vg_core *_core
    cdef dict _feature_names
    cdef readonly str explain
    cdef readonly unsigned int explain_top_k
    cdef readonly str model_name

    cdef _set(self, int slot, CompiledModel model, TreeExplainer explainer, str model_id, float threshold,
              int64_t cut)
    cdef bytes _call(self, int call, bytes request)
    cdef tuple _reasons(self, vg_log_record *record, str model_id)
