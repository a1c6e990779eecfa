# cython: boundscheck=False, wraparound=False
"""The serving core, configured from Python: models in champion/challenger slots, split, and one call per request.

`ServingCore.handle(request_bytes) -> response_bytes` (and `handle_infer` for the Open Inference Protocol's
ModelInfer, under `model_name`) decodes a PredictionRequest, routes it on its request_id,
scores it with the compiled model and encodes the PredictionResponse, all in C (libvoxguard, native/src); a refused
request raises ServingError carrying the gRPC status code and the message for the client. Python only
configures the core (`set_champion`, `set_challenger`, `set_split`) and reads `counters()` at scrape time.
A model may come with its explainer (its packed trees): answers then carry reasons as the core's explain policy
says (`ServingCore(explain="request"|"flagged"|"always"|"off", explain_top_k=3)`).
For monitoring, `set_drift` gives the core drift bin edges, `drift_counts()` reads the bin counts;
`enable_log` starts the prediction log ring buffer, which a background thread empties with `drain_log`.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc

from ml_pipeline.native.compiled_model cimport CompiledModel
from ml_pipeline.native.core_api cimport *
from ml_pipeline.native.explain_api cimport vg_forest
from ml_pipeline.native.model_api cimport vg_model
from ml_pipeline.native.tree_explainer cimport TreeExplainer

cdef enum:
    ERR_LEN = 256
    STACK_OUT = 2048

#: Finite upper bounds (seconds) of the core's latency histogram buckets.
LATENCY_BUCKETS_S = tuple(vg_latency_bounds_s[i] for i in range(VG_LATENCY_BUCKETS))
#: Most features a request may carry.
MAX_FEATURES = VG_MAX_FEATURES
#: Most reasons one answer carries.
MAX_REASONS = VG_MAX_REASONS
#: The explain policies: which answers carry reasons.
EXPLAIN_POLICIES = {"off": VG_EXPLAIN_OFF, "request": VG_EXPLAIN_REQUEST, "flagged": VG_EXPLAIN_FLAGGED,
                    "always": VG_EXPLAIN_ALWAYS}


class ServingError(Exception):
    """A request the core refused: `code` is the gRPC status code (3 INVALID_ARGUMENT, 14 UNAVAILABLE, ...)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _check_edges(edges, str what) -> None:
    if len(edges) > VG_DRIFT_MAX_EDGES:
        raise ValueError(f"{what} has {len(edges)} drift edges; at most {VG_DRIFT_MAX_EDGES}")
    if any(not (a < b) for a, b in zip(edges, edges[1:])):
        raise ValueError(f"the drift edges of {what} must be strictly ascending")


cdef class ServingCore:
    """Champion/challenger slots, challenger cut and counters of one server, over libvoxguard's vg_core.

    Thread-safe: handle() may run in many threads while another thread swaps models; a request finishes on
    the model it started with and a replaced model is released when its last request ends. `explain` (fixed for
    the core's life): "off" (no reasons; a request asking is told so), "request" (reasons when a request asks,
    explain_top_k), "flagged" (also every fraud answer, with at least `explain_top_k` reasons) or "always".
    """

    def __cinit__(self, size_t max_request_bytes=16384, size_t max_batch_bytes=4 << 20,
                  size_t max_batch_rows=10000, str explain="request", unsigned int explain_top_k=3,
                  str model_name="fraud-detector"):
        if explain not in EXPLAIN_POLICIES:
            raise ValueError(f"explain must be one of {', '.join(EXPLAIN_POLICIES)}, not {explain!r}")
        if not 1 <= explain_top_k <= VG_MAX_REASONS:
            raise ValueError(f"explain_top_k must be in [1, {VG_MAX_REASONS}], not {explain_top_k}")
        self._feature_names = {}
        self.explain = explain
        self.explain_top_k = explain_top_k
        self._core = vg_core_new(max_request_bytes, max_batch_bytes, max_batch_rows, EXPLAIN_POLICIES[explain],
                                 explain_top_k)
        if self._core is NULL:
            raise MemoryError("cannot allocate the serving core")
        cdef char err[ERR_LEN]
        cdef bytes name = model_name.encode("utf-8")
        if b"\0" in name:
            raise ValueError(f"model_name {model_name!r} contains a NUL character")
        if vg_core_set_model_name(self._core, name, err, ERR_LEN) != VG_OK:
            raise ValueError(f"model_name {model_name!r}: {err.decode('utf-8', 'replace')}")
        self.model_name = model_name

    def __dealloc__(self):
        vg_core_free(self._core)

    cdef _set(self, int slot, CompiledModel model, TreeExplainer explainer, str model_id, float threshold,
              int64_t cut):
        cdef char err[ERR_LEN]
        cdef vg_model *loaded = NULL
        cdef vg_forest *forest = NULL
        if model is not None:
            loaded = model._require_open()
        if model is not None and explainer is not None:
            forest = explainer._forest
        cdef bytes encoded = (model_id or "").encode("utf-8")
        cdef const char *name = encoded
        cdef int status
        with nogil:  # waits for the requests still on the previous snapshot
            status = vg_core_set_model(self._core, slot, loaded, forest, name, threshold, cut, err, ERR_LEN)
        if status != VG_OK:
            raise ValueError(err.decode("utf-8", "replace"))
        if forest is not NULL:
            self._feature_names[model_id] = explainer.feature_names

    def set_champion(self, CompiledModel model, str model_id, float threshold,
                     TreeExplainer explainer=None) -> None:
        """Serve `model` as the champion `model_id`, flagging p >= threshold, its answers explained by `explainer`
        (None: they carry no reasons and say so); the core keeps its own references."""
        if model is None:
            raise ValueError("the champion needs a model")
        self._set(VG_CHAMPION, model, explainer, model_id, threshold, -1)

    def set_challenger(self, CompiledModel model, str model_id=None, float threshold=0.0, uint64_t cut=0,
                       TreeExplainer explainer=None) -> None:
        """Put a challenger in with its routing cut (requests whose route hash is below `cut`) and explainer, or
        take it out (None), in one atomic step."""
        if cut > (1 << 32):
            raise ValueError("challenger cut must be in [0, 2**32]")
        if model is not None:
            self._set(VG_CHALLENGER, model, explainer, model_id, threshold, <int64_t>cut)
        else:
            self._set(VG_CHALLENGER, None, None, None, 0.0, 0)

    def set_shadow(self, sample=None) -> None:
        """Serve the challenger slot as shadow: `sample` (a share in (0, 1]) of the requests are also scored by it
        beside the champion, which alone answers; None turns shadow mode off (the challenger cut routes again)."""
        cdef char err[ERR_LEN]
        cdef int status
        cdef int shadow = sample is not None
        cdef uint64_t cut = 0
        if shadow:
            if not 0.0 < sample <= 1.0:
                raise ValueError(f"the shadow sample must be in (0, 1], not {sample!r}")
            cut = <uint64_t>round(sample * 4294967296.0)
        with nogil:
            status = vg_core_set_shadow(self._core, shadow, cut, err, ERR_LEN)
        if status != VG_OK:
            raise ValueError(err.decode("utf-8", "replace"))

    def set_split(self, uint64_t cut) -> None:
        """Route requests whose hash is below `cut` (TrafficSplitter.challenger_cut) to the challenger."""
        cdef char err[ERR_LEN]
        cdef int status
        with nogil:
            status = vg_core_set_cut(self._core, cut, err, ERR_LEN)
        if status != VG_OK:
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
            if call == VG_CALL_BATCH or call == VG_CALL_INFER:
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

    def handle_infer(self, bytes request) -> bytes:
        """ModelInfer of the Open Inference Protocol: ModelInferRequest bytes in, ModelInferResponse bytes out
        (ServingError when refused: NOT_FOUND for another model or a version not serving)."""
        return self._call(VG_CALL_INFER, request)

    def set_drift(self, feature_edges, score_edges) -> None:
        """Count live drift bins: feature i with the ascending edges feature_edges[i], the champion's score with
        score_edges (at most 16 edges each); None turns drift tracking off. Counts restart from zero."""
        cdef int num_edges[VG_DRIFT_MAX_FEATURES]
        cdef float edges[VG_DRIFT_MAX_FEATURES * VG_DRIFT_MAX_EDGES]
        cdef float score[VG_DRIFT_MAX_EDGES]
        cdef char err[ERR_LEN]
        cdef int i, j, n = 0, n_score = 0
        if feature_edges is not None:
            n = len(feature_edges)
            if n > VG_DRIFT_MAX_FEATURES:
                raise ValueError(f"drift tracks at most {VG_DRIFT_MAX_FEATURES} features, got {n}")
            for i, row in enumerate(feature_edges):
                _check_edges(row, f"feature {i}")
                num_edges[i] = len(row)
                for j in range(num_edges[i]):
                    edges[i * VG_DRIFT_MAX_EDGES + j] = row[j]
            score_edges = score_edges or []
            _check_edges(score_edges, "the score")
            n_score = len(score_edges)
            for j in range(n_score):
                score[j] = score_edges[j]
        cdef int status
        with nogil:
            status = vg_core_set_drift(self._core, n, num_edges, edges, n_score, score, err, ERR_LEN)
        if status != VG_OK:
            raise ValueError(err.decode("utf-8", "replace"))

    def drift_counts(self):
        """Cumulative drift bin counts since the edges were set, or None when tracking is off:
        {"generation", "rows", "features": [[count per bin] per feature], "score": [count per bin]}."""
        cdef vg_drift_counts *c = <vg_drift_counts *>malloc(sizeof(vg_drift_counts))
        cdef int i, b
        if c is NULL:
            raise MemoryError("cannot allocate the drift counts")
        try:
            vg_core_read_drift(self._core, c)
            if c.num_features == 0:
                return None
            return {
                "generation": c.generation,
                "rows": c.rows,
                "features": [[c.features[i][b] for b in range(c.feature_bins[i])] for i in range(c.num_features)],
                "score": [c.score[b] for b in range(c.score_bins)],
            }
        finally:
            free(c)

    def enable_log(self, size_t capacity=65536) -> None:
        """Start writing one record per scored row into a ring of `capacity` records (drained by drain_log)."""
        cdef char err[ERR_LEN]
        if vg_core_enable_log(self._core, capacity, err, ERR_LEN) != VG_OK:
            raise ValueError(err.decode("utf-8", "replace"))

    def drain_log(self, size_t max_records=4096) -> list:
        """Up to `max_records` logged predictions, oldest first, as tuples (unix time s, request_id (first 64
        bytes), model_version, slot "champion"/"challenger", score, decision, reasons, shadow), reasons being the
        first (at most 8) of an explained answer as (feature name, contribution) pairs, () when not explained, and
        shadow the shadow model's (model_version, score, decision) when it scored the request too, else None."""
        cdef vg_log_record *records = <vg_log_record *>malloc(max_records * sizeof(vg_log_record) + 1)
        cdef size_t n, i
        cdef vg_core_stats *stats
        if records is NULL:
            raise MemoryError("cannot allocate the log records")
        try:
            with nogil:
                n = vg_core_drain_log(self._core, records, max_records)
            if n == 0:
                return []
            stats = <vg_core_stats *>malloc(sizeof(vg_core_stats))
            if stats is NULL:
                raise MemoryError("cannot allocate the counters")
            try:
                vg_core_read_stats(self._core, stats)
                ids = [stats.models[i].model_id.decode("utf-8", "replace") for i in range(stats.num_models)]
            finally:
                free(stats)
            drained = []
            for i in range(n):
                model_id = ids[records[i].model_index] if records[i].model_index < len(ids) else ""
                drained.append((
                    records[i].time_ns / 1e9,
                    records[i].request_id[:records[i].request_id_len].decode("utf-8", "replace"),
                    model_id,
                    "challenger" if records[i].slot == VG_CHALLENGER else "champion",
                    records[i].score,
                    records[i].decision != 0,
                    self._reasons(&records[i], model_id),
                    (
                        ids[records[i].shadow_model_index] if records[i].shadow_model_index < len(ids) else "",
                        records[i].shadow_score,
                        records[i].shadow_decision != 0,
                    ) if records[i].shadowed else None,
                ))
            return drained
        finally:
            free(records)

    cdef tuple _reasons(self, vg_log_record *record, str model_id):
        if record.num_reasons == 0:
            return ()
        names = self._feature_names.get(model_id, ())
        return tuple(
            (
                names[record.reason_feature[j]] if record.reason_feature[j] < len(names)
                else f"f{record.reason_feature[j]}",
                record.reason_contribution[j],
            )
            for j in range(record.num_reasons)
        )

    def count_refusal(self, int code) -> None:
        """Count a request the transport refused before the core saw it (gRPC `code`: 1 cancelled, 4 deadline
        exceeded, 8 too many in flight), in the same error counters as the core's own refusals."""
        vg_core_count_refusal(self._core, code)

    def log_dropped(self) -> int:
        """Log records dropped because the ring was full (the drainer fell behind)."""
        return vg_core_log_dropped(self._core)

    def counters(self) -> dict:
        """Counters since start: requests per slot, errors by gRPC code, and per model id the requests,
        fraud flags, latency sum (s) and cumulative latency buckets [(upper bound s, count), ..., (inf, count)],
        cumulative score buckets [(upper bound, count), ...] of its scores (answers and shadow scores), and as
        shadow the requests it scored, flagged, and agreed on with the champion."""
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
                running = 0
                scores = []
                for b in range(VG_SCORE_BUCKETS):
                    running += stats.models[i].score_buckets[b]
                    scores.append(((b + 1) / VG_SCORE_BUCKETS if b + 1 < VG_SCORE_BUCKETS else float("inf"),
                                   running))
                models[stats.models[i].model_id.decode("utf-8", "replace")] = {
                    "requests": stats.models[i].requests,
                    "fraud": stats.models[i].fraud,
                    "latency_sum_s": stats.models[i].latency_ns_sum / 1e9,
                    "latency_buckets": buckets,
                    "score_buckets": scores,
                    "shadow_requests": stats.models[i].shadow_requests,
                    "shadow_fraud": stats.models[i].shadow_fraud,
                    "shadow_agreements": stats.models[i].shadow_agreements,
                }
            return {
                "champion_requests": stats.slot_requests[0],
                "challenger_requests": stats.slot_requests[1],
                "errors": {code: stats.errors[code] for code in range(VG_STATUS_MAX) if stats.errors[code]},
                "models": models,
            }
        finally:
            free(stats)
