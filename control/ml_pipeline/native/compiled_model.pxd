# CompiledModel's C-level face: other extensions `cimport` it and read the loaded vg_model directly.

from ml_pipeline.native.model_api cimport vg_model


cdef class CompiledModel:
    cdef vg_model *_model
    cdef str _path
    cdef str _sha256
    cdef str _model_id

    cdef vg_model *_require_open(self) except NULL
    cdef _warm_up(self)
    cdef float _score_ptr(self, const float *row) except -1.0
    cdef str _row_expectation(self, str got)
    cdef const float[::1] _as_row(self, row)
    cdef tuple _batch_pointer(self, rows)
    cdef tuple _run_batch(self, rows, int nthreads)
