"""MLPipelineConfig.from_env: the documented defaults, overrides, one clear error per bad value, hidden password."""

from __future__ import annotations

import pytest

from ml_pipeline.config import DEFAULT_TRAINING_QUERY, ENV_VARS, MLPipelineConfig
from ml_pipeline.errors import ConfigError, UsageError

pytestmark = pytest.mark.unit


def test_defaults_are_the_documented_ones() -> None:
    config = MLPipelineConfig.from_env({})
    assert config.inference_host == "0.0.0.0"
    assert config.inference_port == 50051
    assert config.max_workers == 10
    assert config.metrics_port == 9091
    assert config.environment == "production"
    assert config.debug is False
    assert config.training.lookback_days == 7
    assert config.training.schedule == "0 2 * * *"
    assert config.training.timezone == "Africa/Lagos"
    assert config.training.training_query == DEFAULT_TRAINING_QUERY
    assert (config.database.host, config.database.port) == ("localhost", 5433)
    assert (config.database.name, config.database.user) == ("voxguard", "voxguard")
    assert not config.database.password
    assert config.database_dsn == "postgresql://voxguard@localhost:5433/voxguard"
    model = config.model
    assert (model.max_depth, model.learning_rate, model.n_estimators) == (6, 0.1, 100)
    assert (model.min_auc_score, model.min_precision, model.min_recall) == (0.85, 0.80, 0.75)
    assert model.threshold == 0.7
    assert model.model_registry_path == "models/registry"


def test_environment_defaults_match_the_dataclass_defaults() -> None:
    assert MLPipelineConfig.from_env({}) == MLPipelineConfig()


@pytest.mark.parametrize(
    ("name", "raw", "read", "expected"),
    [
        ("ML_INFERENCE_HOST", "127.0.0.1", lambda c: c.inference_host, "127.0.0.1"),
        ("ML_INFERENCE_PORT", "6000", lambda c: c.inference_port, 6000),
        ("ML_MAX_WORKERS", "4", lambda c: c.max_workers, 4),
        ("ML_METRICS_PORT", "9100", lambda c: c.metrics_port, 9100),
        ("ML_ENVIRONMENT", "staging", lambda c: c.environment, "staging"),
        ("ML_DEBUG", "yes", lambda c: c.debug, True),
        ("ML_MODEL_REGISTRY_PATH", "/srv/registry", lambda c: c.model.model_registry_path, "/srv/registry"),
        ("ML_MODEL_MAX_DEPTH", "4", lambda c: c.model.max_depth, 4),
        ("ML_MODEL_LEARNING_RATE", "0.3", lambda c: c.model.learning_rate, 0.3),
        ("ML_MODEL_N_ESTIMATORS", "250", lambda c: c.model.n_estimators, 250),
        ("ML_MIN_AUC_SCORE", "0.9", lambda c: c.model.min_auc_score, 0.9),
        ("ML_MIN_PRECISION", "0.7", lambda c: c.model.min_precision, 0.7),
        ("ML_MIN_RECALL", "0.6", lambda c: c.model.min_recall, 0.6),
        ("ML_DECISION_THRESHOLD", "0.55", lambda c: c.model.threshold, 0.55),
        ("ML_TRAINING_LOOKBACK_DAYS", "30", lambda c: c.training.lookback_days, 30),
        ("ML_TRAINING_SCHEDULE", "*/15 * * * *", lambda c: c.training.schedule, "*/15 * * * *"),
        ("ML_TRAINING_TIMEZONE", "UTC", lambda c: c.training.timezone, "UTC"),
        ("ML_TRAINING_QUERY", "SELECT * FROM t WHERE d > $1", lambda c: c.training.training_query, None),
        ("YUGABYTE_HOST", "db.internal", lambda c: c.database.host, "db.internal"),
        ("YUGABYTE_PORT", "5432", lambda c: c.database.port, 5432),
        ("YUGABYTE_DB", "calls", lambda c: c.database.name, "calls"),
        ("YUGABYTE_USER", "trainer", lambda c: c.database.user, "trainer"),
    ],
)
def test_each_variable_overrides_its_setting(name: str, raw: str, read, expected) -> None:
    value = read(MLPipelineConfig.from_env({name: raw}))
    assert value == (raw if expected is None else expected)


def test_every_core_variable_is_read() -> None:
    tested = {
        "ML_INFERENCE_HOST", "ML_INFERENCE_PORT", "ML_MAX_WORKERS", "ML_METRICS_PORT", "ML_ENVIRONMENT",
        "ML_DEBUG", "ML_MODEL_REGISTRY_PATH", "ML_MODEL_MAX_DEPTH", "ML_MODEL_LEARNING_RATE",
        "ML_MODEL_N_ESTIMATORS", "ML_MIN_AUC_SCORE", "ML_MIN_PRECISION", "ML_MIN_RECALL",
        "ML_DECISION_THRESHOLD", "ML_TRAINING_LOOKBACK_DAYS", "ML_TRAINING_SCHEDULE", "ML_TRAINING_TIMEZONE",
        "ML_TRAINING_QUERY", "YUGABYTE_HOST", "YUGABYTE_PORT", "YUGABYTE_DB", "YUGABYTE_USER", "YUGABYTE_PASSWORD",
    }  # fmt: skip
    assert tested <= {spec.name for spec in ENV_VARS}


@pytest.mark.parametrize(
    ("name", "raw", "accepted"),
    [
        ("ML_INFERENCE_PORT", "abc", "1 to 65535"),
        ("ML_INFERENCE_PORT", "0", "1 to 65535"),
        ("YUGABYTE_PORT", "70000", "1 to 65535"),
        ("ML_METRICS_PORT", "-1", "1 to 65535"),
        ("ML_MAX_WORKERS", "0", "1 to 1024"),
        ("ML_DECISION_THRESHOLD", "1.5", "[0.0, 1.0]"),
        ("ML_MIN_AUC_SCORE", "high", "[0.0, 1.0]"),
        ("ML_MODEL_LEARNING_RATE", "0", "(0.0, 1.0]"),
        ("ML_MODEL_MAX_DEPTH", "50", "1 to 20"),
        ("ML_TRAINING_LOOKBACK_DAYS", "0", "1 to 3650"),
        ("ML_TRAINING_SCHEDULE", "every night", "cron"),
        ("ML_TRAINING_TIMEZONE", "Mars/Olympus_Mons", "IANA time zone"),
        ("ML_TRAINING_QUERY", "SELECT * FROM labelled_alerts", "$1"),
        ("ML_DEBUG", "maybe", "true/false"),
        ("YUGABYTE_HOST", "   ", "non-empty"),
    ],
)
def test_bad_value_names_the_variable_and_the_accepted_range(name: str, raw: str, accepted: str) -> None:
    with pytest.raises(ConfigError) as caught:
        MLPipelineConfig.from_env({name: raw})
    message = str(caught.value)
    assert message.startswith(f"{name}=")
    assert accepted in message
    assert "\n" not in message
    assert isinstance(caught.value, UsageError)


def test_password_is_never_shown() -> None:
    secret = "s3cr3t-Pa55"
    config = MLPipelineConfig.from_env({"YUGABYTE_PASSWORD": secret})
    assert config.database.password.reveal() == secret
    for text in (repr(config), str(config), repr(config.database), str(config.database.password), config.database_dsn):
        assert secret not in text
    assert "********" in repr(config.database.password)
