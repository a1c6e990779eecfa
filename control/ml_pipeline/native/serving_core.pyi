"""Types of the serving_core extension (serving_core.pyx)."""

from collections.abc import Sequence
from typing import TypedDict

from typing_extensions import disjoint_base

from ml_pipeline.native.compiled_model import CompiledModel
from ml_pipeline.native.tree_explainer import TreeExplainer

LATENCY_BUCKETS_S: tuple[float, ...]
MAX_FEATURES: int
MAX_REASONS: int
EXPLAIN_POLICIES: dict[str, int]

class ServingError(Exception):
    code: int
    message: str
    def __init__(self, code: int, message: str) -> None: ...

# The names starting with "_" exist only in this stub (the extension does not define them): import them, for
# annotations, under `if TYPE_CHECKING:`.

#: One drained prediction: (unix time s, request_id, model_version, "champion"/"challenger", score, decision,
#: reasons as (feature name, contribution) pairs, () when not explained, the shadow's (model_version, score,
#: decision) when it scored the request too, else None).
_LogRecord = tuple[float, str, str, str, float, bool, tuple[tuple[str, float], ...], tuple[str, float, bool] | None]

class _DriftCounts(TypedDict):
    """`drift_counts()`: cumulative bin counts since the edges were set."""

    generation: int
    rows: int
    features: list[list[int]]  # per tracked feature, the count of each bin (the last bin: missing values)
    score: list[int]  # per score bin, the champion's answers

class _ModelCounters(TypedDict):
    """The counters of one model id in `counters()["models"]`."""

    requests: int
    fraud: int
    latency_sum_s: float
    latency_buckets: list[tuple[float, int]]  # cumulative (upper bound s, count), the last bound +inf
    score_buckets: list[tuple[float, int]]  # cumulative (upper bound, count) of its scores, the last bound +inf
    shadow_requests: int  # requests it scored as shadow
    shadow_fraud: int  # of those, flagged by it
    shadow_agreements: int  # of those, where its decision was the champion's

class _CoreCounters(TypedDict):
    """`counters()`: counters since start."""

    champion_requests: int
    challenger_requests: int
    errors: dict[int, int]  # gRPC status code -> refused requests (codes never seen are left out)
    models: dict[str, _ModelCounters]

@disjoint_base
class ServingCore:
    explain: str
    explain_top_k: int
    model_name: str
    def __init__(
        self,
        max_request_bytes: int = 16384,
        max_batch_bytes: int = 4 << 20,
        max_batch_rows: int = 10000,
        explain: str = "request",
        explain_top_k: int = 3,
        model_name: str = "fraud-detector",
    ) -> None: ...
    def set_champion(
        self, model: CompiledModel, model_id: str, threshold: float, explainer: TreeExplainer | None = None
    ) -> None: ...
    def set_challenger(
        self,
        model: CompiledModel | None,
        model_id: str | None = None,
        threshold: float = 0.0,
        cut: int = 0,
        explainer: TreeExplainer | None = None,
    ) -> None: ...
    def set_shadow(self, sample: float | None = None) -> None: ...
    def set_split(self, cut: int) -> None: ...
    def handle(self, request: bytes) -> bytes: ...
    def handle_stream(self, request: bytes) -> bytes: ...
    def handle_batch(self, request: bytes) -> bytes: ...
    def handle_infer(self, request: bytes) -> bytes: ...
    def set_drift(
        self, feature_edges: Sequence[Sequence[float]] | None, score_edges: Sequence[float] | None
    ) -> None: ...
    def drift_counts(self) -> _DriftCounts | None: ...
    def enable_log(self, capacity: int = 65536) -> None: ...
    def drain_log(self, max_records: int = 4096) -> list[_LogRecord]: ...
    def count_refusal(self, code: int) -> None: ...
    def log_dropped(self) -> int: ...
    def counters(self) -> _CoreCounters: ...
