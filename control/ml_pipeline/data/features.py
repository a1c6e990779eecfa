"""The eight model features, in the order every model and every client uses, with unit and meaning."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Feature:
    """One model input: its column name, unit and what it measures over the alert's observation window."""

    name: str
    unit: str
    meaning: str


FEATURES: tuple[Feature, ...] = (
    Feature("call_rate_per_hour", "calls/hour", "outgoing calls per hour from the subscriber (A-number)"),
    Feature("avg_call_duration_s", "seconds", "mean duration of answered outgoing calls"),
    Feature("unique_destinations_ratio", "ratio 0-1", "distinct called numbers divided by calls made"),
    Feature("international_ratio", "ratio 0-1", "share of calls to international destinations"),
    Feature("short_call_ratio", "ratio 0-1", "share of calls shorter than 10 s (Wangiri, probing)"),
    Feature("night_call_ratio", "ratio 0-1", "share of calls placed between 00:00 and 06:00 local time"),
    Feature("cli_mismatch_ratio", "ratio 0-1", "share of calls whose presented CLI differs from the network CLI"),
    Feature("sim_age_days", "days", "days since the SIM was activated"),
)

FEATURE_NAMES: list[str] = [f.name for f in FEATURES]
LABEL = "is_fraud"
