"""Pipeline configuration read from the environment, validated once, with the password kept out of sight.

Every variable, its default and its accepted range is listed in ENV_VARS (and in the README); a bad value
raises one ConfigError naming the variable and what it accepts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from ml_pipeline.errors import ConfigError, UsageError
from ml_pipeline.redaction import redact

DEFAULT_TRAINING_QUERY = (
    "SELECT call_rate_per_hour, avg_call_duration_s, unique_destinations_ratio, international_ratio, "
    "short_call_ratio, night_call_ratio, cli_mismatch_ratio, sim_age_days, is_fraud, labelled_at "
    "FROM labelled_alerts WHERE labelled_at >= now() - make_interval(days => $1) "
    "ORDER BY labelled_at"
)


class TrainingQuery(str):
    """The training SQL, whose lookback in days is the bound parameter $1 (asyncpg: `fetch(query, days)`).

    `query.format(lookback_days=7)` gives the same SQL with the days written in, for a caller that fetches it
    without parameters; the value is an integer, so nothing else can enter the SQL."""

    __slots__ = ()

    def format(self, *args: object, **kwargs: object) -> str:
        """The query with $1 replaced by int(lookback_days)."""
        if args or set(kwargs) != {"lookback_days"}:
            raise TypeError("TrainingQuery.format takes lookback_days=N only")
        days = kwargs["lookback_days"]
        if not isinstance(days, int) or isinstance(days, bool):
            raise TypeError(f"lookback_days must be an int, not {type(days).__name__}")
        return str(self).replace("$1", str(days))


class Secret:
    """A string that never shows itself in repr, str, logs or tracebacks; `reveal()` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None) -> None:
        self._value = value or None

    def reveal(self) -> str | None:
        """The secret value, for the one place that needs it (the database connection)."""
        return self._value

    def __bool__(self) -> bool:
        return self._value is not None

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret(None)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters, quality gate and decision threshold of the fraud model."""

    max_depth: int = 6
    learning_rate: float = 0.1
    n_estimators: int = 100
    min_auc_score: float = 0.85
    min_precision: float = 0.80
    min_recall: float = 0.75
    threshold: float = 0.7
    model_registry_path: str = "models/registry"


@dataclass(frozen=True)
class TrainingConfig:
    """Where training data comes from and when retraining runs (cron evaluated in `timezone`)."""

    training_query: TrainingQuery = TrainingQuery(DEFAULT_TRAINING_QUERY)
    lookback_days: int = 7
    schedule: str = "0 2 * * *"
    timezone: str = "Africa/Lagos"


@dataclass(frozen=True)
class DatabaseConfig:
    """YugabyteDB/PostgreSQL connection; the password is a Secret and is not part of any DSN string."""

    host: str = "localhost"
    port: int = 5433
    name: str = "voxguard"
    user: str = "voxguard"
    password: Secret = field(default_factory=lambda: Secret(None))

    @property
    def dsn(self) -> str:
        """postgresql:// DSN without the password (pass `password.reveal()` to the driver separately)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.name}"


@dataclass(frozen=True)
class MLPipelineConfig:
    """The whole configuration; `from_env()` builds it from the environment variables in ENV_VARS."""

    inference_host: str = "0.0.0.0"
    inference_port: int = 50051
    max_workers: int = 10
    metrics_port: int = 9091
    environment: str = "production"
    debug: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)

    @property
    def database_dsn(self) -> str:
        """DSN of the training database, password excluded (see DatabaseConfig.dsn)."""
        return self.database.dsn

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MLPipelineConfig:
        """Read and validate every variable of ENV_VARS; raise ConfigError on the first bad one."""
        env = os.environ if environ is None else environ
        v = {spec.name: spec.read(env) for spec in ENV_VARS}
        return cls(
            inference_host=v["ML_INFERENCE_HOST"],
            inference_port=v["ML_INFERENCE_PORT"],
            max_workers=v["ML_MAX_WORKERS"],
            metrics_port=v["ML_METRICS_PORT"],
            environment=v["ML_ENVIRONMENT"],
            debug=v["ML_DEBUG"],
            model=ModelConfig(
                max_depth=v["ML_MODEL_MAX_DEPTH"],
                learning_rate=v["ML_MODEL_LEARNING_RATE"],
                n_estimators=v["ML_MODEL_N_ESTIMATORS"],
                min_auc_score=v["ML_MIN_AUC_SCORE"],
                min_precision=v["ML_MIN_PRECISION"],
                min_recall=v["ML_MIN_RECALL"],
                threshold=v["ML_DECISION_THRESHOLD"],
                model_registry_path=v["ML_MODEL_REGISTRY_PATH"],
            ),
            training=TrainingConfig(
                training_query=TrainingQuery(v["ML_TRAINING_QUERY"]),
                lookback_days=v["ML_TRAINING_LOOKBACK_DAYS"],
                schedule=v["ML_TRAINING_SCHEDULE"],
                timezone=v["ML_TRAINING_TIMEZONE"],
            ),
            database=DatabaseConfig(
                host=v["YUGABYTE_HOST"],
                port=v["YUGABYTE_PORT"],
                name=v["YUGABYTE_DB"],
                user=v["YUGABYTE_USER"],
                password=Secret(v["YUGABYTE_PASSWORD"]),
            ),
        )


# ---- parsing: one small function per kind of value, each raising with the accepted range ----


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.strip())
        if not lo <= value <= hi:
            raise ValueError
        return value

    parse.accepted = f"an integer from {lo} to {hi}"  # type: ignore[attr-defined]
    return parse


def _float_in(lo: float, hi: float, *, open_low: bool = False) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw.strip())
        if not (lo < value <= hi if open_low else lo <= value <= hi):
            raise ValueError
        return value

    low = "(" if open_low else "["
    parse.accepted = f"a number in {low}{lo}, {hi}]"  # type: ignore[attr-defined]
    return parse


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError


_bool.accepted = "true/false (also 1/0, yes/no, on/off)"  # type: ignore[attr-defined]


def _text(raw: str) -> str:
    if not raw.strip():
        raise ValueError
    return raw.strip()


_text.accepted = "a non-empty string"  # type: ignore[attr-defined]


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError
        return value

    parse.accepted = f"one of {', '.join(options)}"  # type: ignore[attr-defined]
    return parse


def _model_name(raw: str) -> str:
    value = raw.strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,126}", value):
        raise ValueError
    return value


_model_name.accepted = "1 to 127 letters, digits, '.', '_' or '-'"  # type: ignore[attr-defined]


def _optional_port(raw: str) -> int | None:
    return None if not raw.strip() else PORT(raw)


_optional_port.accepted = "an integer from 1 to 65535 (empty: off)"  # type: ignore[attr-defined]


#: ML_EXPLAIN: which answers carry reasons.
EXPLAIN_POLICIES = ("off", "request", "flagged", "always")


def _isolation(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("read_committed", "repeatable_read"):
        raise ValueError
    return value


_isolation.accepted = "read_committed or repeatable_read"  # type: ignore[attr-defined]


def _optional_text(raw: str) -> str:
    return raw


_optional_text.accepted = "any string"  # type: ignore[attr-defined]


def _prediction_log(raw: str) -> str | None:
    from ml_pipeline.monitoring.prediction_log import check_target  # imported here: it needs this module

    target = raw.strip()
    if not target:
        return None
    check_target(target)  # a UsageError (ValueError) saying what is wrong: scheme, port, ...
    return target


_prediction_log.accepted = "file:PATH or a postgresql:// DSN (empty: off)"  # type: ignore[attr-defined]


def _cron(raw: str) -> str:
    expr = raw.strip()
    if not croniter.is_valid(expr):
        raise ValueError
    return expr


_cron.accepted = 'a 5-field cron expression such as "0 2 * * *"'  # type: ignore[attr-defined]


def _timezone(raw: str) -> str:
    try:
        ZoneInfo(raw.strip())
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError from exc
    return raw.strip()


_timezone.accepted = "an IANA time zone name such as Africa/Lagos"  # type: ignore[attr-defined]


def _query(raw: str) -> str:
    if "$1" not in raw:
        raise ValueError
    return raw.strip()


_query.accepted = "a SQL query that takes the lookback in days as the bound parameter $1"  # type: ignore[attr-defined]


@dataclass(frozen=True)
class EnvVar:
    """One environment variable: its name, default, parser (which knows the accepted range) and meaning."""

    name: str
    default: str | None
    parse: Callable[[str], Any]
    help: str
    secret: bool = False

    def read(self, env: Mapping[str, str]) -> Any:
        """The parsed value from `env`, or the default; ConfigError names the variable and the range."""
        raw = env.get(self.name, self.default)
        if raw is None:
            return None
        try:
            return self.parse(raw)
        except ConfigError:
            raise
        except ValueError as exc:
            if isinstance(exc, UsageError):  # the parser's own message already names the variable
                raise ConfigError(redact(exc)) from None
            shown = "(hidden)" if self.secret else repr(redact(raw))
            raise ConfigError(
                f"{self.name}={shown} is not valid: expected {self.parse.accepted}"  # type: ignore[attr-defined]
            ) from None


PORT = _int_in(1, 65535)
RATIO = _float_in(0.0, 1.0)

ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar("ML_INFERENCE_HOST", "0.0.0.0", _text, "address the gRPC server binds"),
    EnvVar("ML_INFERENCE_PORT", "50051", PORT, "gRPC port"),
    EnvVar("ML_MAX_WORKERS", "10", _int_in(1, 1024), "gRPC worker threads per server process"),
    EnvVar("ML_METRICS_PORT", "9091", PORT, "Prometheus metrics port"),
    EnvVar("ML_METRICS_HOST", None, _text, "address the metrics port binds [default: ML_INFERENCE_HOST]"),
    EnvVar("ML_TLS_CERT_FILE", None, _text, "PEM certificate (chain) of the gRPC port; with the key: TLS"),
    EnvVar("ML_TLS_KEY_FILE", None, _text, "PEM private key of ML_TLS_CERT_FILE"),
    EnvVar("ML_TLS_CLIENT_CA_FILE", None, _text, "PEM CA; when set, clients need a certificate it signed (mTLS)"),
    EnvVar("ML_INFERENCE_TRANSPORT", "auto", _text, "gRPC transport: native, grpcio, or auto (native when built)"),
    EnvVar("ML_INFERENCE_WORKERS", "1", _int_in(1, 256), "server processes sharing the gRPC port (SO_REUSEPORT)"),
    EnvVar("ML_REGISTRY_POLL_SECONDS", "1.0", _float_in(0.0, 3600.0, open_low=True), "registry polling interval"),
    EnvVar("ML_SHUTDOWN_GRACE_SECONDS", "10", _float_in(0.0, 3600.0), "SIGTERM: time in-flight calls get to finish"),
    EnvVar(
        "ML_MAX_IN_FLIGHT",
        None,
        _int_in(1, 1_000_000),
        "requests handled at once; beyond: RESOURCE_EXHAUSTED [default: 64 per CPU]",
    ),
    EnvVar("ML_MIN_DEADLINE_MS", "0", _int_in(0, 60_000), "refuse calls without a deadline or with less left (0: off)"),
    EnvVar("ML_GRPC_COMPRESSION", "identity", _text, "identity refuses compressed requests unread; gzip accepts them"),
    EnvVar("ML_GRPC_KEEPALIVE_TIME_SECONDS", "60", _float_in(1.0, 86400.0), "server keepalive ping interval"),
    EnvVar("ML_GRPC_MAX_CONNECTION_IDLE_SECONDS", "300", _float_in(1.0, 86400.0), "close connections idle this long"),
    EnvVar(
        "ML_GRPC_MAX_CONNECTION_AGE_SECONDS", "0", _float_in(0.0, 604800.0), "close connections this old (0: never)"
    ),
    EnvVar(
        "ML_GRPC_MAX_CONCURRENT_STREAMS",
        "256",
        _int_in(1, 65_536),
        "calls one connection may have open on the server; more wait at the client",
    ),
    EnvVar(
        "ML_GRPC_HANDSHAKE_TIMEOUT_SECONDS",
        "10",
        _float_in(0.1, 600.0),
        "drop connections not through TLS/HTTP/2 setup by then",
    ),
    EnvVar("ML_ENABLE_AB_TESTING", "true", _bool, "serve the registry's challenger on its traffic share"),
    EnvVar(
        "ML_EXPLAIN",
        "request",
        _choice(*EXPLAIN_POLICIES),
        "answers with reasons: when asked (request), also every fraud answer (flagged), all, or none (off)",
    ),
    EnvVar("ML_EXPLAIN_TOP_K", "3", _int_in(1, 16), "reasons the flagged and always policies give an answer"),
    EnvVar("ML_PROMETHEUS_URL", None, _text, "Prometheus HTTP API the guarded rollout reads its evidence from"),
    EnvVar(
        "ML_ROLLOUT_POLL_SECONDS",
        "30",
        _float_in(0.0, 3600.0, open_low=True),
        "how often the scheduler checks a rollout",
    ),
    EnvVar("ML_MODEL_NAME", "fraud-detector", _model_name, "the model's name in the Open Inference Protocol"),
    EnvVar("ML_HTTP_PORT", None, _optional_port, "port of the Open Inference Protocol over HTTP/REST (unset: off)"),
    EnvVar("ML_PREDICTION_LOG", None, _prediction_log, "log each prediction to file:PATH (JSON Lines) or a DSN"),
    EnvVar("ML_DRIFT_PUBLISH_SECONDS", "30", _float_in(0.0, 3600.0, open_low=True), "how often drift is published"),
    EnvVar("ML_DRIFT_WINDOW_SECONDS", "3600", _float_in(0.0, 604800.0, open_low=True), "traffic span drift covers"),
    EnvVar("ML_ENVIRONMENT", "production", _text, "deployment name shown in logs and metrics"),
    EnvVar("ML_DEBUG", "false", _bool, "verbose logging"),
    EnvVar(
        "ML_MODEL_REGISTRY_PATH",
        "models/registry",
        _text,
        "the model registry: a folder, or a postgresql:// DSN (the registry in that database)",
    ),
    EnvVar(
        "ML_REGISTRY_ISOLATION",
        "read_committed",
        _isolation,
        "database registry: isolation of its write transactions (repeatable_read for YSQL's default)",
    ),
    EnvVar("ML_MODEL_MAX_DEPTH", "6", _int_in(1, 20), "XGBoost max_depth"),
    EnvVar("ML_MODEL_LEARNING_RATE", "0.1", _float_in(0.0, 1.0, open_low=True), "XGBoost learning rate (eta)"),
    EnvVar("ML_MODEL_N_ESTIMATORS", "100", _int_in(1, 10000), "maximum boosting rounds"),
    EnvVar("ML_MIN_AUC_SCORE", "0.85", RATIO, "quality gate: minimum test AUC"),
    EnvVar("ML_MIN_PRECISION", "0.80", RATIO, "quality gate: minimum test precision"),
    EnvVar("ML_MIN_RECALL", "0.75", RATIO, "quality gate: minimum test recall"),
    EnvVar("ML_DECISION_THRESHOLD", "0.7", RATIO, "probability at or above which a call is flagged as fraud"),
    EnvVar("ML_TRAINING_QUERY", DEFAULT_TRAINING_QUERY, _query, "SQL reading labelled alerts; $1 = days"),
    EnvVar("ML_TRAINING_LOOKBACK_DAYS", "7", _int_in(1, 3650), "days of labelled alerts used for training"),
    EnvVar("ML_TRAINING_SCHEDULE", "0 2 * * *", _cron, "retraining cron schedule"),
    EnvVar("ML_TRAINING_TIMEZONE", "Africa/Lagos", _timezone, "time zone of the schedule (WAT)"),
    EnvVar("ML_RETRAIN_MIN_IMPROVEMENT", "0.02", RATIO, "retraining: AUC gain over the champion to propose a model"),
    EnvVar("ML_RETRAIN_MIN_ROWS", "1000", _int_in(1, 10**10), "retraining: fewest labelled alerts a run trains on"),
    EnvVar("ML_RETRAIN_RUNS_PATH", None, _text, "retraining run records [default: retrain_runs beside the registry]"),
    EnvVar("ML_RETRAIN_CATCH_UP", "true", _bool, "scheduler: on start, run the last slot missed while down (once)"),
    EnvVar("ML_RETRAIN_WEBHOOK_URL", None, _text, "retraining: POST each run's JSON summary here", secret=True),
    EnvVar("ML_RETRAIN_WEBHOOK_TIMEOUT_S", "10", _float_in(0.0, 300.0, open_low=True), "webhook timeout per attempt"),
    EnvVar("ML_RETRAIN_WEBHOOK_ATTEMPTS", "3", _int_in(1, 10), "webhook attempts (exponential backoff between)"),
    EnvVar("ML_RETRAIN_DASK_SCHEDULER", None, _text, "retraining: train on this Dask scheduler (tcp://host:8786)"),
    EnvVar("YUGABYTE_HOST", "localhost", _text, "training database host"),
    EnvVar("YUGABYTE_PORT", "5433", PORT, "training database port"),
    EnvVar("YUGABYTE_DB", "voxguard", _text, "training database name"),
    EnvVar("YUGABYTE_USER", "voxguard", _text, "training database user"),
    EnvVar("YUGABYTE_PASSWORD", None, _optional_text, "training database password (never shown)", secret=True),
)

_BY_NAME: dict[str, EnvVar] = {spec.name: spec for spec in ENV_VARS}


def env_value(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """The parsed value of one variable of ENV_VARS (its default when unset); ConfigError when it is bad."""
    return _BY_NAME[name].read(os.environ if environ is None else environ)
