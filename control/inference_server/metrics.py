"""Prometheus metrics read from the serving core at scrape time, so the request path pays no Python.

Names follow the original design: ml_predictions_total{model_version}, ml_prediction_latency_seconds
{model_version} (histogram, time spent in the core), ml_fraud_detected_total{model_version},
ml_model_a_requests_total, ml_model_b_requests_total; plus ml_prediction_errors_total{code} and
ml_model_events_total{event,slot} (swap, load_failed, unload, split).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import grpc
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ml_pipeline.native.serving_core import ServingCore

_STATUS_NAMES = {status.value[0]: status.name for status in grpc.StatusCode}


class CoreCollector(Collector):
    """Turns `ServingCore.counters()` and the convergence events into metric families on every scrape."""

    def __init__(self, core: ServingCore, events: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        self.core = core
        self.events = events

    def collect(self) -> Iterator[Metric]:
        """One snapshot of the core's counters as Prometheus metric families."""
        counters = self.core.counters()
        predictions = CounterMetricFamily("ml_predictions", "Predictions answered", labels=["model_version"])
        fraud = CounterMetricFamily("ml_fraud_detected", "Predictions flagged as fraud", labels=["model_version"])
        latency = HistogramMetricFamily(
            "ml_prediction_latency_seconds", "Time in the serving core per prediction", labels=["model_version"]
        )
        for model_id, c in counters["models"].items():
            predictions.add_metric([model_id], c["requests"])
            fraud.add_metric([model_id], c["fraud"])
            buckets = [(floatToGoString(bound), count) for bound, count in c["latency_buckets"]]
            latency.add_metric([model_id], buckets, c["latency_sum_s"])
        yield predictions
        yield fraud
        yield latency
        yield CounterMetricFamily(
            "ml_model_a_requests", "Requests answered by the champion", counters["champion_requests"]
        )
        yield CounterMetricFamily(
            "ml_model_b_requests", "Requests answered by the challenger", counters["challenger_requests"]
        )
        errors = CounterMetricFamily("ml_prediction_errors", "Refused requests by gRPC status", labels=["code"])
        for code, count in sorted(counters["errors"].items()):
            errors.add_metric([_STATUS_NAMES.get(code, str(code))], count)
        yield errors
        events = CounterMetricFamily(
            "ml_model_events", "Model swaps, refused loads, unloads and split changes", labels=["event", "slot"]
        )
        for (event, slot), count in sorted(self.events().items()):
            events.add_metric([event, slot], count)
        yield events


def metrics_registry(collector: CoreCollector) -> CollectorRegistry:
    """A registry holding only this server's collector (several servers may share a process in tests)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
