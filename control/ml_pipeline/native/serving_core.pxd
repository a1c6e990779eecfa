# ServingCore's C-level face: the native transport `cimport`s it and serves the vg_core it owns.

from libc.stdint cimport int64_t

from ml_pipeline.native.core_api cimport vg_core
from ml_pipeline.native.compiled_model cimport CompiledModel


cdef class ServingCore:
    cdef vg_core *_core

    cdef _set(self, int slot, CompiledModel model, str model_id, float threshold, int64_t cut)
    cdef bytes _call(self, int call, bytes request)
