"""InferenceServer: FraudDetection and the Open Inference Protocol (gRPC, optional HTTP/REST) from the native core,
with health, reflection, Prometheus metrics, registry convergence (poll + SIGHUP) and a graceful SIGTERM drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ml_pipeline.ab_testing.traffic_splitter import TrafficSplitter
from ml_pipeline.errors import JobFailed, PipelineError, UsageError
from ml_pipeline.inference_server.admission import AdmissionSettings, GrpcioAdmission
from ml_pipeline.inference_server.convergence import RegistryConvergence
from ml_pipeline.inference_server.handlers import SERVICE_NAME, fraud_detection_handler
from ml_pipeline.inference_server.inference_protocol import SERVICE_NAME as INFERENCE_SERVICE
from ml_pipeline.inference_server.inference_protocol import inference_handler
from ml_pipeline.inference_server.metrics import CoreCollector, metrics_registry, start_metrics_server
from ml_pipeline.inference_server.model_directory import PLATFORM, SERVER_NAME, ModelDescription, ModelDirectory
from ml_pipeline.inference_server.rest import RestFrontend
from ml_pipeline.inference_server.tls import ServerTLS, add_port
from ml_pipeline.inference_server.transport import AUTO, resolve_transport, start_native_transport
from ml_pipeline.model_registry import open_registry
from ml_pipeline.monitoring.serving import MonitoringSettings, ServerMonitoring
from ml_pipeline.native.serving_core import ServingCore
from ml_pipeline.proto_gen import fraud_detection_pb2

if TYPE_CHECKING:
    from ml_pipeline.native.native_transport import NativeTransport

log = logging.getLogger(__name__)


def ensure_port_free(host: str, port: int, reuse_port: bool, address: str) -> None:
    """JobFailed in one line when `host:port` cannot be bound (in use, not a local address), before either
    transport tries and logs gRPC's own multi-line error."""
    if port == 0:
        return
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            probe.bind(where)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise JobFailed(f"cannot listen on {address}: {reason}; choose another --port") from None


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class RegistryTrafficSplitter(TrafficSplitter):
    """A server's current split whose changes go through the registry (so that no server serves a split the
    registry does not record) and are applied to this server's core before the call returns."""

    def __init__(self, server: InferenceServer, current: TrafficSplitter) -> None:
        super().__init__(current.model_a_traffic, current.model_b_traffic)
        self._server = server

    def update_traffic_split(self, model_a_traffic: float, model_b_traffic: float) -> None:
        """Record the new split of the registry's challenger, then converge this server to it."""
        self._server.registry.set_traffic_split(
            model_a_traffic, model_b_traffic, actor="inference-server", reason="update_traffic_split"
        )
        super().update_traffic_split(model_a_traffic, model_b_traffic)
        self._server.convergence.converge()


class InferenceServer:
    """The FraudDetection gRPC server of one process; `await serve()` runs it until SIGTERM or `stop()`.

    `batch_size` and `batch_timeout_ms` are accepted so that existing callers keep working, but no request
    is held back to coalesce batches: with compiled trees scoring costs ~2 µs, so waiting would only add
    latency (see bench/). Callers with many rows use PredictBatch or PredictStream. `metrics_port=None`
    disables metrics; port 0 (gRPC or metrics) binds an ephemeral port, readable after start. `monitoring`
    (default: MonitoringSettings.from_env()) sets the drift publishing and the optional prediction log. `tls`
    (ServerTLS) serves TLS or mutual TLS on either transport; `metrics_host` binds metrics elsewhere than `host`.
    `admission` (AdmissionSettings) bounds requests in flight, refuses late calls and sets connection limits.
    `compiled_models_dir` refuses to load a library the registry records outside that folder (RegistryConvergence).
    `explain` (ML_EXPLAIN: off, request, flagged, always) and `explain_top_k` say which answers carry reasons.
    The same port serves the Open Inference Protocol's GRPCInferenceService for the model `model_name`;
    `http_port` (None: off) serves the protocol's HTTP/REST side.
    """

    def __init__(
        self,
        registry_path: str = "models/registry",
        host: str = "0.0.0.0",
        port: int = 50051,
        batch_size: int = 32,
        batch_timeout_ms: float = 10,
        enable_ab_testing: bool = True,
        max_workers: int = 10,
        metrics_port: int | None = 9091,
        poll_seconds: float = 1.0,
        shutdown_grace: float = 10.0,
        reuse_port: bool = False,
        max_request_bytes: int = 16 * 1024,
        max_batch_bytes: int = 4 * 1024 * 1024,
        max_batch_rows: int = 10_000,
        transport: str = AUTO,
        monitoring: MonitoringSettings | None = None,
        tls: ServerTLS | None = None,
        metrics_host: str | None = None,
        admission: AdmissionSettings | None = None,
        compiled_models_dir: str | None = None,
        explain: str = "request",
        explain_top_k: int = 3,
        model_name: str = "fraud-detector",
        http_port: int | None = None,
    ) -> None:
        self.registry = open_registry(registry_path)
        #: Whether the last read of the registry succeeded (exported as ml_registry_reachable).
        self.registry_reachable = True
        self.admission = admission or AdmissionSettings()
        self.host = host
        self.port = port
        self.batch_size = batch_size
        self.batch_timeout_ms = batch_timeout_ms
        self.max_workers = max_workers
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host or host
        self.tls = tls
        self.poll_seconds = poll_seconds
        self.shutdown_grace = shutdown_grace
        self.reuse_port = reuse_port
        self.max_batch_bytes = max_batch_bytes
        self.transport = resolve_transport(transport)
        self.core = ServingCore(max_request_bytes, max_batch_bytes, max_batch_rows, explain, explain_top_k, model_name)
        self.directory = ModelDirectory(model_name)
        self.http_port = http_port
        self._rest: RestFrontend | None = None
        self.convergence = RegistryConvergence(self.registry, self.core, enable_ab_testing, compiled_models_dir)
        self.monitoring = ServerMonitoring(
            self.core, self.registry, self._champion_id, monitoring or MonitoringSettings.from_env()
        )
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="inference")
        # grpc-stubs' grpc_health stubs lack `health.aio` (the asyncio servicer, grpc_health/v1/_async.py).
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._server: aio.Server | None = None
        self._native: NativeTransport | None = None
        self._grpcio_admission: GrpcioAdmission | None = None
        self._metrics_httpd: WSGIServer | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def traffic_splitter(self) -> TrafficSplitter:
        """The champion/challenger split being served (the core routes with its challenger_cut).

        Its `update_traffic_split(a, b)` changes the split in the registry, the source of truth, and serves it
        at once here; every other server follows within its poll interval."""
        return RegistryTrafficSplitter(self, self.convergence.traffic_splitter)

    def set_challenger_model(self, model_id: str, traffic: float | None = None) -> None:
        """Make `model_id` the challenger in the registry (the source of truth) and serve it now.

        `traffic` defaults to the current challenger share, or 0.1 when there is no challenger yet."""
        share = traffic if traffic is not None else (self.traffic_splitter.model_b_traffic or 0.1)
        self.registry.set_challenger(model_id, share, actor="inference-server", reason="set_challenger_model")
        self.convergence.converge()

    async def start(self) -> None:
        """Load the registry's models, bind the port, start serving, metrics and the registry watcher."""
        self._stopping, self._stopped = asyncio.Event(), asyncio.Event()
        await self._converge(force=True)
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        ensure_port_free(self.host, self.port, self.reuse_port, address)
        if self.transport == "native":
            if self.admission.accept_compressed:
                raise UsageError(
                    "ML_GRPC_COMPRESSION=gzip needs the grpcio transport (the native one decompresses before it "
                    "can bound the size): unset it or use ML_INFERENCE_TRANSPORT=grpcio"
                )
            self._native = start_native_transport(
                self.core, address, self.max_batch_bytes + 4096, self.reuse_port, self.tls, self.admission
            )
            self._native.set_serving(self.convergence.champion is not None)
            self.port = self._native.port
            self._describe(self.convergence.champion is not None)
        else:
            options = [
                ("grpc.so_reuseport", 1 if self.reuse_port else 0),
                ("grpc.max_receive_message_length", self.max_batch_bytes + 4096),
                *self.admission.channel_args(),
            ]
            self._server = aio.server(
                migration_thread_pool=self._executor,
                options=options,
                maximum_concurrent_rpcs=self.admission.in_flight_limit,  # beyond: RESOURCE_EXHAUSTED at once
            )
            self._grpcio_admission = GrpcioAdmission(self.core, self.admission)
            self._server.add_generic_rpc_handlers(
                (
                    fraud_detection_handler(self.core, self._grpcio_admission),
                    inference_handler(self.core, self.directory, self._grpcio_admission),
                )
            )
            health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
            service = fraud_detection_pb2.DESCRIPTOR.services_by_name[SERVICE_NAME].full_name
            services = (service, INFERENCE_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(services, self._server)
            try:
                self.port = add_port(self._server, address, self.tls)
            except RuntimeError as exc:
                raise JobFailed(f"cannot listen on {address}: {exc}; choose another --port") from None
            await self._server.start()
        if self.http_port is not None:
            await self._start_rest()
        try:
            self.monitoring.start()
        except PipelineError:
            await self.stop(0)
            raise
        if self.metrics_port is not None:
            registry = metrics_registry(
                CoreCollector(self.core, lambda: dict(self.convergence.events), self._registry_status)
            )
            for collector in self.monitoring.collectors():
                registry.register(collector)
            try:
                self._metrics_httpd = start_metrics_server(self.metrics_port, self.metrics_host or self.host, registry)
            except OSError as exc:
                await self.stop(0)
                raise JobFailed(
                    f"cannot serve metrics on {self.metrics_host}:{self.metrics_port} ({exc.strerror}): "
                    "choose another --metrics-port"
                ) from None
            self.metrics_port = self._metrics_httpd.server_port
        self._watcher = asyncio.create_task(self._watch_registry())
        champion = self.convergence.champion
        log.info(
            "serving FraudDetection and the Open Inference Protocol (model %s) on %s:%d (%s transport, HTTP port "
            "%s, metrics port %s), champion %s",
            self.directory.model_name,
            self.host,
            self.port,
            self.transport,
            self.http_port or "off",
            self.metrics_port,
            champion.model_id if champion else "none yet (UNAVAILABLE until one is promoted and compiled)",
        )

    async def serve(self) -> None:
        """Start, then run until SIGTERM/SIGINT (graceful drain) or `stop()`; SIGHUP re-reads the registry."""
        await self.start()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread: no signals
            loop.add_signal_handler(signal.SIGTERM, self._spawn, self.stop)
            loop.add_signal_handler(signal.SIGINT, self._spawn, self.stop)
            loop.add_signal_handler(signal.SIGHUP, self._spawn, lambda: self._converge(force=True))
        assert self._stopped is not None
        await self._stopped.wait()

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight calls finish within `grace` seconds (default shutdown_grace)."""
        assert self._stopping is not None and self._stopped is not None
        if self._stopping.is_set():
            await self._stopped.wait()
            return
        self._stopping.set()
        grace = self.shutdown_grace if grace is None else grace
        log.info("stopping: draining in-flight calls for up to %gs", grace)
        await self._health.enter_graceful_shutdown()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._server is not None:
            end = time.monotonic() + grace
            if self._grpcio_admission is not None:
                await self._grpcio_admission.serve_on_then_close(grace)
            await self._server.stop(max(0.0, end - time.monotonic()))  # one grace for the whole drain
        if self._native is not None:
            await asyncio.to_thread(self._native.shutdown, grace)
        if self._rest is not None:
            await self._rest.stop()
        await asyncio.to_thread(self.monitoring.stop)  # after the drain: the last predictions are logged too
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()
            self._metrics_httpd.server_close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.registry.close()
        self._stopped.set()
        log.info("stopped")

    async def _start_rest(self) -> None:
        """The Open Inference Protocol's HTTP/REST side on http_port (JSON carries more bytes than protobuf)."""
        assert self.http_port is not None
        self._rest = RestFrontend(self.core, self.directory, 4 * self.max_batch_bytes)
        try:
            await self._rest.start(self.host, self.http_port, self.reuse_port)
        except OSError as exc:
            self._rest = None
            await self.stop(0)
            raise JobFailed(
                f"cannot serve HTTP on {self.host}:{self.http_port} ({exc.strerror}): choose another --http-port"
            ) from None
        self.http_port = self._rest.port

    def _describe(self, serving: bool) -> None:
        """Tell the Open Inference Protocol's metadata calls which versions serve (champion first)."""
        loaded = [m for m in (self.convergence.champion, self.convergence.challenger) if m is not None]
        features = loaded[0].features if loaded else ()
        description = ModelDescription(tuple(m.model_id for m in loaded), features, serving)
        self.directory.describe(description)
        if self._native is not None:
            self._native.describe(
                self.directory.model_name,
                description.versions,
                features,
                PLATFORM,
                SERVER_NAME,
                self.directory.server_version,
            )

    def _registry_status(self) -> tuple[bool, int | None]:
        return self.registry_reachable, self.convergence.generation

    def _champion_id(self) -> str | None:
        champion = self.convergence.champion
        return champion.model_id if champion is not None else None

    def _spawn(self, make_coroutine: Callable[[], Awaitable[None]]) -> None:
        task = asyncio.ensure_future(make_coroutine())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch_registry(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            await self._converge(force=False)

    async def _converge(self, force: bool) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self.convergence.converge, force)
        except (PipelineError, OSError) as exc:
            if self.registry_reachable:  # said once per outage, not at every poll
                log.error("cannot read the registry at %s, keeping the current models: %s", self.registry.location, exc)
            self.registry_reachable = False
            self.convergence.events["registry_error", "-"] += 1
        except Exception:  # an unforeseen failure of one read must not end polling for the process's life
            log.exception("registry read failed; keeping the current models")
            self.convergence.events["registry_error", "-"] += 1
        else:
            if not self.registry_reachable:
                log.warning(
                    "the registry at %s is reachable again: serving generation %s",
                    self.registry.location,
                    self.convergence.generation,
                )
            self.registry_reachable = True
        assert self._stopping is not None
        if not self._stopping.is_set():
            status = SERVING if self.convergence.champion is not None else NOT_SERVING
            if self._native is not None:
                self._native.set_serving(status == SERVING)
            self._describe(status == SERVING)
            for name in ("", SERVICE_NAME):
                await self._health.set(name, status)
