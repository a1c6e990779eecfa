"""Admission and connection limits of the gRPC port, the same on both transports.

A late answer is worth nothing to the detection engine: a request whose deadline has passed is not scored
(DEADLINE_EXCEEDED), at most `max_in_flight` requests are handled at once (beyond: RESOURCE_EXHAUSTED at once, so
the caller falls back), and with `min_deadline_ms` a call without a deadline or with less time left is refused.
Refusals are counted in the core's error counters by gRPC code. Compressed requests are refused unread unless
accepted (a decompression bomb then costs nothing). Keepalive, idle and age limits and the handshake timeout keep
idle or half-open connections from piling up; the streams one connection may have open bound what a client can
queue inside the server (its further calls wait at the client, where they cost the server nothing).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from grpc import aio

from ml_pipeline.config import env_value
from ml_pipeline.errors import UsageError
from ml_pipeline.native.serving_core import ServingCore

#: Requests in flight per CPU core when ML_MAX_IN_FLIGHT is not set: a scored request costs microseconds, so
#: this many queued on one core still answer within a few milliseconds.
IN_FLIGHT_PER_CORE = 64
#: Of the shutdown grace, the time spent answering calls accepted before it (see serve_on_then_close).
SERVE_ON_SECONDS = 0.5
COMPRESSION_CHOICES = ("identity", "gzip")


def default_max_in_flight() -> int:
    """IN_FLIGHT_PER_CORE per CPU this process may run on."""
    return IN_FLIGHT_PER_CORE * max(1, len(os.sched_getaffinity(0)))


@dataclass(frozen=True)
class AdmissionSettings:
    """What the gRPC port admits and how long connections live (ML_MAX_IN_FLIGHT, ML_MIN_DEADLINE_MS, ML_GRPC_*)."""

    max_in_flight: int = 0  # 0: default_max_in_flight()
    min_deadline_ms: int = 0
    compression: str = "identity"
    keepalive_time_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    max_connection_idle_s: float = 300.0
    max_connection_age_s: float = 0.0  # 0: unlimited
    handshake_timeout_s: float = 10.0
    max_concurrent_streams: int = 256

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSION_CHOICES:
            raise UsageError(f"ML_GRPC_COMPRESSION={self.compression!r}: use identity or gzip")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AdmissionSettings:
        """Settings from the environment (ConfigError names a bad variable)."""
        return cls(
            max_in_flight=env_value("ML_MAX_IN_FLIGHT", environ) or 0,
            min_deadline_ms=env_value("ML_MIN_DEADLINE_MS", environ),
            compression=env_value("ML_GRPC_COMPRESSION", environ),
            keepalive_time_s=env_value("ML_GRPC_KEEPALIVE_TIME_SECONDS", environ),
            max_connection_idle_s=env_value("ML_GRPC_MAX_CONNECTION_IDLE_SECONDS", environ),
            max_connection_age_s=env_value("ML_GRPC_MAX_CONNECTION_AGE_SECONDS", environ),
            handshake_timeout_s=env_value("ML_GRPC_HANDSHAKE_TIMEOUT_SECONDS", environ),
            max_concurrent_streams=env_value("ML_GRPC_MAX_CONCURRENT_STREAMS", environ),
        )

    @property
    def in_flight_limit(self) -> int:
        """The bound on requests handled at once."""
        return self.max_in_flight or default_max_in_flight()

    @property
    def accept_compressed(self) -> bool:
        return self.compression != "identity"

    def channel_args(self) -> list[tuple[str, int]]:
        """gRPC channel arguments of the server, identical for grpcio and the C++ transport."""
        args = [
            ("grpc.keepalive_time_ms", int(self.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            # clients may ping every 10 s without calls (gRPC's default would answer them with GOAWAY)
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_connection_idle_ms", int(self.max_connection_idle_s * 1000)),
            ("grpc.server_handshake_timeout_ms", int(self.handshake_timeout_s * 1000)),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
        ]
        if self.max_connection_age_s > 0:
            args += [
                ("grpc.max_connection_age_ms", int(self.max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", int(self.keepalive_timeout_s * 1000)),
            ]
        if not self.accept_compressed:
            args.append(("grpc.compression_enabled_algorithms_bitset", 1))  # identity only
        return args


class GrpcioAdmission:
    """The grpcio transport's admission: the native transport's rules (native/transport), in Python.

    The bound on requests in flight is grpcio's own (the server's maximum_concurrent_rpcs: beyond it
    RESOURCE_EXHAUSTED at once): a request is scored on the event loop without yielding it, so no count of
    requests being scored is needed here, and none is ever half-scored when another coroutine runs."""

    def __init__(self, core: ServingCore, settings: AdmissionSettings) -> None:
        self._core = core
        self._min_deadline_s = settings.min_deadline_ms / 1000
        self._closing = False

    @property
    def closing(self) -> bool:
        """True once the shutdown refuses new calls."""
        return self._closing

    def refusal(
        self, context: aio.ServicerContext[bytes, bytes], in_open_stream: bool = False
    ) -> tuple[grpc.StatusCode, str] | None:
        """None when the request may be scored, else the (code, message) of the refusal, counted.

        A message of a stream opened before the shutdown began (`in_open_stream`) is still served."""
        refused = self._check(context, in_open_stream)
        if refused is not None:
            self._core.count_refusal(refused[0].value[0])
        return refused

    def _check(
        self, context: aio.ServicerContext[bytes, bytes], in_open_stream: bool
    ) -> tuple[grpc.StatusCode, str] | None:
        if self._closing and not in_open_stream:
            return grpc.StatusCode.UNAVAILABLE, "the server is shutting down: call another replica"
        if context.cancelled():
            return grpc.StatusCode.CANCELLED, "the call was cancelled before it was scored"
        left = context.time_remaining()
        if left is not None and left <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the request was scored"
        if self._min_deadline_s > 0 and (left is None or left < self._min_deadline_s):
            return (
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"calls need a deadline of at least {self._min_deadline_s * 1000:g} ms (ML_MIN_DEADLINE_MS)",
            )
        return None

    async def serve_on_then_close(self, grace: float) -> None:
        """Shutdown: answer calls accepted before it for a moment (stopping the server would cancel every call
        no handler has started yet), then refuse new ones with UNAVAILABLE (the server's stop waits for streams)."""
        await asyncio.sleep(min(grace / 2, SERVE_ON_SECONDS))
        self._closing = True
