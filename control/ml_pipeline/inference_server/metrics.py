"""Prometheus metrics read from the serving core at scrape time, so the request path pays no Python.

Names (the dashboard and the alert rules use them): ml_predictions_total{model_version}, ml_prediction_latency_seconds
{model_version} (histogram, time spent in the core), ml_fraud_detected_total{model_version},
ml_model_a_requests_total, ml_model_b_requests_total; ml_prediction_score{model_version} (histogram of a model's
answers and shadow scores), ml_shadow_predictions_total, ml_shadow_fraud_detected_total and
ml_shadow_agreements_total{model_version} (a shadow model's scores, flags, and decisions equal to the champion's);
plus ml_prediction_errors_total{code} and
ml_model_events_total{event,slot} (swap, load_failed, unload, split, registry_error), and the registry as the
server last saw it: ml_registry_reachable (1 when the last poll read it, 0 while it cannot) and
ml_registry_generation (the generation being served).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ml_pipeline.native.serving_core import ServingCore

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication as WSGIApp

_STATUS_NAMES = {status.value[0]: status.name for status in grpc.StatusCode}


class CoreCollector(Collector):
    """Turns `ServingCore.counters()` and the convergence events into metric families on every scrape."""

    def __init__(
        self,
        core: ServingCore,
        events: Callable[[], Mapping[tuple[str, str], int]],
        registry_status: Callable[[], tuple[bool, int | None]] | None = None,
    ) -> None:
        self.core = core
        self.events = events
        self.registry_status = registry_status

    def collect(self) -> Iterator[Metric]:
        """One snapshot of the core's counters as Prometheus metric families."""
        counters = self.core.counters()
        predictions = CounterMetricFamily("ml_predictions", "Predictions answered", labels=["model_version"])
        fraud = CounterMetricFamily("ml_fraud_detected", "Predictions flagged as fraud", labels=["model_version"])
        latency = HistogramMetricFamily(
            "ml_prediction_latency_seconds", "Time in the serving core per prediction", labels=["model_version"]
        )
        scores = HistogramMetricFamily(
            "ml_prediction_score", "Scores of a model: its answers and its shadow scores", labels=["model_version"]
        )
        shadow = {
            key: CounterMetricFamily(name, text, labels=["model_version"])
            for key, name, text in (
                ("shadow_requests", "ml_shadow_predictions", "Requests a shadow model scored beside the champion"),
                ("shadow_fraud", "ml_shadow_fraud_detected", "Shadow scores flagged as fraud"),
                ("shadow_agreements", "ml_shadow_agreements", "Shadow decisions equal to the champion's answer"),
            )
        }
        for model_id, c in counters["models"].items():
            predictions.add_metric([model_id], c["requests"])
            fraud.add_metric([model_id], c["fraud"])
            buckets = [(floatToGoString(bound), count) for bound, count in c["latency_buckets"]]
            latency.add_metric([model_id], buckets, c["latency_sum_s"])
            scores.add_metric([model_id], [(floatToGoString(b), n) for b, n in c["score_buckets"]], None)
            shadow["shadow_requests"].add_metric([model_id], c["shadow_requests"])
            shadow["shadow_fraud"].add_metric([model_id], c["shadow_fraud"])
            shadow["shadow_agreements"].add_metric([model_id], c["shadow_agreements"])
        yield predictions
        yield fraud
        yield latency
        yield scores
        yield from shadow.values()
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
        if self.registry_status is not None:
            reachable, generation = self.registry_status()
            yield GaugeMetricFamily(
                "ml_registry_reachable", "1 when the last registry poll succeeded, 0 while it fails", int(reachable)
            )
            if generation is not None:
                yield GaugeMetricFamily("ml_registry_generation", "Registry generation being served", generation)


def metrics_registry(collector: CoreCollector) -> CollectorRegistry:
    """A registry holding only this server's collector (several servers may share a process in tests)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


INDEX_PAGE = b'<html><body><a href="/metrics">/metrics</a></body></html>\n'


def metrics_app(registry: CollectorRegistry) -> WSGIApp:
    """The metrics page: `/metrics` (Prometheus exposition), `/` a link to it, 404 for every other path."""
    exposition: WSGIApp = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return exposition(environ, start_response)
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [INDEX_PAGE]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: the metrics are at /metrics\n"]

    return app


def start_metrics_server(port: int, addr: str, registry: CollectorRegistry) -> WSGIServer:
    """Serve metrics_app(registry) on addr:port from a daemon thread; returns the server (shutdown() stops it)."""
    family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server_class: type[WSGIServer] = type("MetricsServer", (ThreadingWSGIServer,), {"address_family": family})
    httpd: WSGIServer = make_server(addr, port, metrics_app(registry), server_class, handler_class=_QuietHandler)
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
    return httpd


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass
