# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Score rows with a TL2cgen-compiled model: one row in about a microsecond, batches without the GIL.

A shared library is code, so its sha256 is checked before it is loaded: the file is hashed while it is
copied into an anonymous memory file (memfd), and that very copy is what dlopen maps. The file on disk can
change afterwards without effect, and a model recompiled to the same path is never served from the
loader's cache of the old one. Loading, NaN handling and reference counting live in native/src/model.c.
"""

import errno
import hashlib
import os

import numpy as np

cimport numpy as cnp
from libc.stdlib cimport free, malloc
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from ml_pipeline.native.model_api cimport (
    vg_entry,
    vg_model,
    vg_model_open_fd,
    vg_model_release,
    vg_model_retain,
    vg_model_score,
    vg_model_score_batch,
)

from ml_pipeline.errors import JobFailed

cnp.import_array()

cdef enum:
    STACK_FEATURES = 256     # rows up to this width are scored with a scratch on the stack
    ERR_LEN = 1024
    MAX_FEATURES = 1 << 20   # sanity bound on get_num_feature()

_MFD_EXEC = 0x0010           # Linux >= 6.3: this memfd may be mapped executable
_COPY_CHUNK = 1 << 20
_WARM_UP_ROWS = 256
_WARM_UP_VALUES = 1 << 20    # fewer warm-up rows for very wide models


class ModelLoadError(JobFailed):
    """A compiled model could not be loaded: unreadable file, not a TL2cgen binary classifier, bad output."""


class ModelIntegrityError(ModelLoadError):
    """The compiled model's sha256 differs from the expected one; the library was not loaded."""


def _new_memfd() -> int:
    try:
        return os.memfd_create("vg_model", os.MFD_CLOEXEC | _MFD_EXEC)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: a kernel older than 6.3 does not know MFD_EXEC
            raise
        return os.memfd_create("vg_model", os.MFD_CLOEXEC)


def _copy_hashed(str path) -> tuple:
    """Copy the file at `path` into a new memfd while hashing it (streaming); return (fd, sha256 hex)."""
    fd = _new_memfd()
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as source:
            while chunk := source.read(_COPY_CHUNK):
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        raise
    return fd, digest.hexdigest()


cdef class CompiledModel:
    """A verified, loaded TL2cgen model (binary classifier): `score` one row, `score_batch` many.

    `CompiledModel(path, sha256=None, model_id=None)`: when `sha256` is given the file must match it or
    ModelIntegrityError is raised before anything is loaded. NaN features mean missing. Thread-safe: every
    call has its own scratch. Other extensions `cimport` the class (compiled_model.pxd) and take their own
    reference to the loaded model with vg_model_retain.
    """

    def __cinit__(self, path, sha256=None, model_id=None):
        cdef char err[ERR_LEN]
        self._path = os.path.abspath(os.fspath(path))
        self._model_id = str(model_id) if model_id is not None else os.path.splitext(os.path.basename(self._path))[0]
        try:
            fd, self._sha256 = _copy_hashed(self._path)
        except OSError as exc:
            raise ModelLoadError(f"cannot read compiled model {self._path}: {exc.strerror}") from exc
        if sha256 is not None and self._sha256 != str(sha256).lower():
            os.close(fd)
            raise ModelIntegrityError(
                f"{self._path}: sha256 is {self._sha256}, expected {sha256}; the file changed since it was "
                "compiled, so it was not loaded (recompile it with `ml-pipeline compile MODEL_ID`)"
            )
        self._model = vg_model_open_fd(fd, os.fsencode(self._path), err, ERR_LEN)  # owns fd from here on
        if self._model is NULL:
            raise ModelLoadError(err.decode("utf-8", "replace"))
        if self._model.num_feature > MAX_FEATURES:
            raise ModelLoadError(f"{self._path}: get_num_feature() = {self._model.num_feature} is not plausible")
        self._warm_up()

    cdef _warm_up(self):
        """Score a few hundred varied rows (so early requests do not pay the first page faults of the code) and
        check that what comes out are probabilities."""
        rng = np.random.default_rng(0)
        n_features = self._model.num_feature
        count = max(2, min(_WARM_UP_ROWS, _WARM_UP_VALUES // n_features))
        rows = rng.normal(size=(count, n_features)) * 10.0 ** rng.uniform(-2, 4, size=(1, n_features))
        rows[rng.random(rows.shape) < 0.1] = np.nan
        rows[0, :] = 0
        rows[1, :] = np.nan
        scores = self.score_batch(np.ascontiguousarray(rows, dtype=np.float32))
        if not np.all(np.isfinite(scores) & (scores >= 0) & (scores <= 1)):
            raise ModelLoadError(f"{self._path}: warm-up scores are not probabilities (e.g. {scores[:4].tolist()})")

    def __dealloc__(self):
        if self._model is not NULL:
            vg_model_release(self._model)
            self._model = NULL

    cdef vg_model *_require_open(self) except NULL:
        if self._model is NULL:
            raise ValueError(f"compiled model {self._model_id} is closed")
        return self._model

    @property
    def num_features(self) -> int:
        """Number of features the model expects per row (from the library's get_num_feature())."""
        return self._require_open().num_feature

    @property
    def model_id(self) -> str:
        """The model's id (given, or the file name without .so)."""
        return self._model_id

    @property
    def path(self) -> str:
        """Absolute path of the shared library this model was loaded from."""
        return self._path

    @property
    def sha256(self) -> str:
        """sha256 (hex) of the exact bytes that were loaded."""
        return self._sha256

    @property
    def closed(self) -> bool:
        """True after close(): this object no longer holds a reference to the library."""
        return self._model is NULL

    cdef float _score_ptr(self, const float *row) except -1.0:
        cdef vg_entry stack[STACK_FEATURES]
        cdef vg_entry *scratch = stack
        cdef float result
        if self._model.num_feature > STACK_FEATURES:
            scratch = <vg_entry *>malloc(self._model.num_feature * sizeof(vg_entry))
            if scratch is NULL:
                raise MemoryError("no memory for the scratch row of a wide model")
        result = vg_model_score(self._model, row, scratch)
        if scratch is not stack:
            free(scratch)
        return result

    def score(self, row) -> float:
        """Probability of fraud for one row: any float buffer or sequence of `num_features` values (NaN = missing)."""
        cdef cnp.ndarray arr
        cdef const float[::1] view
        cdef vg_model *model = self._require_open()
        if isinstance(row, cnp.ndarray):
            arr = <cnp.ndarray>row
            if (cnp.PyArray_TYPE(arr) == cnp.NPY_FLOAT32 and cnp.PyArray_NDIM(arr) == 1
                    and cnp.PyArray_ISCARRAY_RO(arr)):
                if cnp.PyArray_DIM(arr, 0) != model.num_feature:
                    raise ValueError(self._row_expectation(f"got {cnp.PyArray_DIM(arr, 0)} values"))
                return self._score_ptr(<const float *>cnp.PyArray_DATA(arr))
        view = self._as_row(row)
        if view.shape[0] != model.num_feature:
            raise ValueError(self._row_expectation(f"got {view.shape[0]} values"))
        return self._score_ptr(&view[0])

    cdef str _row_expectation(self, str got):
        return f"expected one row of {self._model.num_feature} floats (NaN = missing); {got}"

    cdef const float[::1] _as_row(self, row):
        """A float32 contiguous 1-D view of `row`: the buffer itself when it already is one, else a converted copy."""
        cdef const float[::1] view
        try:
            view = row
            return view
        except (TypeError, ValueError, BufferError):
            pass
        try:
            converted = np.ascontiguousarray(row, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ValueError(self._row_expectation(f"got {type(row).__name__} ({exc})")) from None
        if converted.ndim != 1:
            raise ValueError(self._row_expectation(f"got an array of shape {converted.shape}"))
        view = converted
        return view

    cdef tuple _batch_pointer(self, rows):
        """Validate a batch and return (rows array, number of rows); ValueError says what was expected."""
        cdef int n_features = self._require_open().num_feature
        expected = f"a 2-D float32 C-contiguous numpy array of shape (n, {n_features})"
        if not isinstance(rows, np.ndarray):
            raise ValueError(f"score_batch expects {expected}; got {type(rows).__name__}")
        if rows.ndim != 2:
            raise ValueError(f"score_batch expects {expected}; got a {rows.ndim}-D array")
        if rows.dtype != np.float32 or not rows.dtype.isnative:
            raise ValueError(
                f"score_batch expects {expected}; got dtype {rows.dtype} "
                "(convert with np.ascontiguousarray(rows, dtype=np.float32))"
            )
        if not rows.flags.c_contiguous or not rows.flags.aligned:
            raise ValueError(
                f"score_batch expects {expected}; got a non-contiguous array (use np.ascontiguousarray(rows))"
            )
        if rows.shape[1] != n_features:
            raise ValueError(f"score_batch expects {expected}; got shape {rows.shape}")
        return rows, rows.shape[0]

    cdef tuple _run_batch(self, rows, int nthreads):
        """Score `rows` into a new float32 array: (probabilities, seconds the C loop alone took)."""
        cdef cnp.ndarray arr
        cdef size_t n
        cdef timespec start, stop
        cdef int rc
        cdef vg_model *model
        cdef cnp.ndarray result
        if nthreads < 1:
            raise ValueError(f"nthreads must be at least 1; got {nthreads}")
        arr, n = self._batch_pointer(rows)
        result = np.empty(n, dtype=np.float32)
        model = self._require_open()
        vg_model_retain(model)
        with nogil:
            clock_gettime(CLOCK_MONOTONIC, &start)
            rc = vg_model_score_batch(model, <const float *>cnp.PyArray_DATA(arr), n,
                                      <float *>cnp.PyArray_DATA(result), nthreads)
            clock_gettime(CLOCK_MONOTONIC, &stop)
        vg_model_release(model)
        if rc != 0:
            raise MemoryError("no memory for per-thread scratch rows")
        return result, (stop.tv_sec - start.tv_sec) + (stop.tv_nsec - start.tv_nsec) * 1e-9

    def score_batch(self, rows, int nthreads=1) -> np.ndarray:
        """Probabilities (float32 array) for a 2-D float32 C-contiguous array, rows split over `nthreads` threads.

        The GIL is released while scoring, and the model is kept alive for the whole call even if another
        thread closes this object meanwhile.
        """
        return self._run_batch(rows, nthreads)[0]

    def c_loop_seconds(self, rows, int nthreads=1) -> float:
        """Seconds the C scoring loop alone takes over `rows` (timed in C, output preallocated, GIL released).

        The baseline the benchmarks compare `score` and `score_batch` against; validates `rows` as score_batch.
        """
        return self._run_batch(rows, nthreads)[1]

    def close(self) -> None:
        """Release this object's reference; the library is unloaded once no serving core or call still uses it."""
        if self._model is not NULL:
            vg_model_release(self._model)
            self._model = NULL

    def __enter__(self) -> CompiledModel:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._model is NULL else f"{self._model.num_feature} features"
        return f"<CompiledModel {self._model_id} ({state}) {self._path}>"
