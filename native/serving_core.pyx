# cython: boundscheck=False, wraparound=False
"""The serving core, configured from Python: models in champion/challenger slots, split, and one call per request.

`ServingCore.handle(request_bytes) -> response_bytes` decodes a PredictionRequest, routes it on its request_id,
scores it with the compiled model and encodes the PredictionResponse, all in C (native/vg_core.c); a refused
request raises ServingError carrying the gRPC status code and the message for the client. Python only
configures the core (`set_champion`, `set_challenger`, `set_split`) and reads `counters()` at scrape time.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_New
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc

from vg_core cimport *
from vg_model cimport vg_model

cdef const char *_CAPSULE_NAME = "voxguard.vg_model"
cdef enum:
    ERR_LEN = 256
    STACK_OUT = 1024

#: Finite upper bounds (seconds) of the core's latency histogram buckets.
LATENCY_BUCKETS_S = tuple(vg_latency_bounds_s[i] for i in range(VG_LATENCY_BUCKETS))
#: Most features a request may carry.
MAX_FEATURES = VG_MAX_FEATURES


class ServingError(Exception):
    """A request the core refused: `code` is the gRPC status code (3 INVALID_ARGUMENT, 14 UNAVAILABLE, ...)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


cdef vg_model *_model_from(object capsule) except? NULL:
    if capsule is None:
        return NULL
    return <vg_model *>PyCapsule_GetPointer(capsule, _CAPSULE_NAME)


cdef class ServingCore:
    """Champion/challenger slots, challenger cut and counters of one server, over native/vg_core.c.

    Thread-safe: handle() may run in many threads while another thread swaps models; a request finishes on
    the model it started with and a replaced model is released when its last request ends.
    """

    cdef vg_core *_core

    def __cinit__(self, size_t max_request_bytes=16384, size_t max_batch_bytes=4 << 20,
                  size_t max_batch_rows=10000):
        self._core = vg_core_new(max_request_bytes, max_batch_bytes, max_batch_rows)
        if self._core is NULL:
            raise MemoryError("cannot allocate the serving core")

    def __dealloc__(self):
        vg_core_free(self._core)

    cdef _set(self, int slot, object capsule, str model_id, float threshold, int64_t cut):
        cdef char err[ERR_LEN]
        cdef vg_model *model = _model_from(capsule)
        cdef bytes encoded = (model_id or "").encode("utf-8")
        if vg_core_set_model(self._core, slot, model, encoded, threshold, cut, err, ERR_LEN) != VG_OK:
            raise ValueError(err.decode("utf-8", "replace"))

    def capsule(self):
        """PyCapsule "voxguard.vg_core" holding this core's pointer, for another extension (the native transport).

        It owns nothing: whoever takes the pointer keeps this ServingCore alive for as long as it uses it."""
        return PyCapsule_New(self._core, "voxguard.vg_core", NULL)

    def set_champion(self, capsule, str model_id, float threshold) -> None:
        """Serve `capsule` (CompiledModel.capsule()) as the champion `model_id`, flagging p >= threshold."""
        if capsule is None:
            raise ValueError("the champion needs a model")
        self._set(VG_CHAMPION, capsule, model_id, threshold, -1)

    def set_challenger(self, capsule, str model_id=None, float threshold=0.0, uint64_t cut=0) -> None:
        """Put a challenger in (capsule) with the cut of contract C, or take it out (None), in one atomic step."""
        if cut > (1 << 32):
            raise ValueError("challenger cut must be in [0, 2**32]")
        if capsule is not None:
            self._set(VG_CHALLENGER, capsule, model_id, threshold, <int64_t>cut)
        else:
            self._set(VG_CHALLENGER, None, None, 0.0, 0)

    def set_split(self, uint64_t cut) -> None:
        """Route requests whose hash is below `cut` (TrafficSplitter.challenger_cut) to the challenger."""
        cdef char err[ERR_LEN]
        if vg_core_set_cut(self._core, cut, err, ERR_LEN) != VG_OK:
            raise ValueError(err.decode("utf-8", "replace"))

    cdef bytes _call(self, int call, bytes request):
        cdef uint8_t stack[STACK_OUT]
        cdef char err[ERR_LEN]
        cdef const uint8_t *req = <const uint8_t *>PyBytes_AS_STRING(request)
        cdef size_t n = <size_t>PyBytes_GET_SIZE(request)
        cdef size_t cap = vg_core_output_bound(self._core, call, req, n)
        cdef size_t out_len = 0
        cdef uint8_t *out = stack
        cdef int status
        if cap > STACK_OUT:
            out = <uint8_t *>malloc(cap)
            if out is NULL:
                raise MemoryError("cannot allocate the response")
        try:
            if call == VG_CALL_BATCH:
                with nogil:
                    status = vg_core_handle(self._core, call, req, n, out, cap, &out_len, err, ERR_LEN)
            else:
                status = vg_core_handle(self._core, call, req, n, out, cap, &out_len, err, ERR_LEN)
            if status != VG_OK:
                raise ServingError(status, err.decode("utf-8", "replace"))
            return PyBytes_FromStringAndSize(<char *>out, out_len)
        finally:
            if out is not stack:
                free(out)

    def handle(self, bytes request) -> bytes:
        """Predict: PredictionRequest bytes in, PredictionResponse bytes out (ServingError when refused)."""
        return self._call(VG_CALL_PREDICT, request)

    def handle_stream(self, bytes request) -> bytes:
        """One PredictStream message: PredictionRequest bytes in, ScoredPrediction bytes (with request_id) out."""
        return self._call(VG_CALL_STREAM, request)

    def handle_batch(self, bytes request) -> bytes:
        """PredictBatch: PredictionBatchRequest bytes in, PredictionBatchResponse bytes out; all rows or none."""
        return self._call(VG_CALL_BATCH, request)

    def counters(self) -> dict:
        """Counters since start: requests per slot, errors by gRPC code, and per model id the requests,
        fraud flags, latency sum (s) and cumulative latency buckets [(upper bound s, count), ..., (inf, count)]."""
        cdef vg_core_stats *stats = <vg_core_stats *>malloc(sizeof(vg_core_stats))
        cdef int i, b
        cdef uint64_t running
        if stats is NULL:
            raise MemoryError("cannot allocate the counters")
        try:
            vg_core_read_stats(self._core, stats)
            models = {}
            for i in range(stats.num_models):
                running = 0
                buckets = []
                for b in range(VG_LATENCY_BUCKETS + 1):
                    running += stats.models[i].latency_buckets[b]
                    bound = LATENCY_BUCKETS_S[b] if b < VG_LATENCY_BUCKETS else float("inf")
                    buckets.append((bound, running))
                models[stats.models[i].model_id.decode("utf-8", "replace")] = {
                    "requests": stats.models[i].requests,
                    "fraud": stats.models[i].fraud,
                    "latency_sum_s": stats.models[i].latency_ns_sum / 1e9,
                    "latency_buckets": buckets,
                }
            return {
                "champion_requests": stats.slot_requests[0],
                "challenger_requests": stats.slot_requests[1],
                "errors": {code: stats.errors[code] for code in range(VG_STATUS_MAX) if stats.errors[code]},
                "models": models,
            }
        finally:
            free(stats)
