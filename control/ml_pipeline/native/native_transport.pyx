# distutils: language = c++
# cython: language_level=3
"""The native gRPC transport, driven from Python: C++ gRPC serving FraudDetection from a ServingCore.

`NativeTransport(core, "127.0.0.1:0")` starts a C++ gRPC server (callback API, its own threads), serving
FraudDetection and the Open Inference Protocol's GRPCInferenceService, that calls
the same serving core as the grpcio handler, so no Python runs per request; models, split, thresholds and
counters stay with the ServingCore and the Python code configuring it. Health (grpc.health.v1) starts
NOT_SERVING; `set_serving()` changes it. `shutdown(grace)` drains in-flight calls with the GIL released.
"""

from libcpp cimport bool as cbool
from libcpp.pair cimport pair
from libcpp.string cimport string
from libcpp.vector cimport vector

from ml_pipeline.native.core_api cimport vg_core
from ml_pipeline.native.serving_core cimport ServingCore


cdef extern from "grpc_transport.h" namespace "voxguard":
    cdef cppclass TransportOptions:
        string address
        size_t max_receive_bytes
        cbool reuse_port
        int stream_window
        string tls_cert_chain
        string tls_private_key
        string tls_client_ca
        size_t max_in_flight
        int min_deadline_ms
        cbool accept_compressed
        vector[pair[string, int]] channel_args

    cdef cppclass ModelDescription:
        string model_name
        vector[string] versions
        vector[string] feature_names
        string platform
        string server_name
        string server_version

    cdef cppclass GrpcTransport:
        @staticmethod
        GrpcTransport *Start(vg_core *core, const TransportOptions &options, string *error) nogil
        int port()
        void SetServing(cbool serving) nogil
        void Describe(const ModelDescription &description) nogil
        void Shutdown(double grace_seconds) nogil


class TransportError(OSError):
    """The native transport could not start (e.g. the address is in use)."""


cdef class NativeTransport:
    """A running C++ gRPC server over `core` (a ServingCore); the core is kept alive while this object lives.

    `tls` (an inference_server.tls.ServerTLS, or None for plaintext) gives the PEM certificate chain, key and
    optional client CA (mutual TLS), exactly as for the grpcio transport. Admission: beyond `max_in_flight`
    requests at once (0: no bound) a call gets RESOURCE_EXHAUSTED at once; a call whose deadline has passed, or
    (with `min_deadline_ms`) that has less time left, is not scored (DEADLINE_EXCEEDED). Compressed messages are
    refused unread unless `accept_compressed`. `channel_args` are (name, int) gRPC channel arguments such as
    "grpc.keepalive_time_ms" or "grpc.max_connection_idle_ms"."""

    cdef GrpcTransport *_transport
    cdef ServingCore _core

    def __cinit__(self, ServingCore core not None, str address, size_t max_receive_bytes=0, bint reuse_port=False,
                  int stream_window=64, tls=None, size_t max_in_flight=0, int min_deadline_ms=0,
                  bint accept_compressed=False, channel_args=()):
        cdef TransportOptions options
        cdef string error
        cdef vg_core *pointer = core._core
        options.address = address.encode("utf-8")
        options.max_receive_bytes = max_receive_bytes
        options.reuse_port = reuse_port
        options.stream_window = stream_window
        options.max_in_flight = max_in_flight
        options.min_deadline_ms = min_deadline_ms
        options.accept_compressed = accept_compressed
        for name, value in channel_args:
            options.channel_args.push_back(pair[string, int](name.encode("utf-8"), value))
        if tls is not None:
            options.tls_cert_chain = tls.certificate_chain
            options.tls_private_key = tls.private_key
            options.tls_client_ca = tls.client_ca or b""
        with nogil:
            self._transport = GrpcTransport.Start(pointer, options, &error)
        if self._transport is NULL:
            raise TransportError(error.decode("utf-8", "replace"))
        self._core = core

    def __dealloc__(self):
        if self._transport is not NULL:
            with nogil:
                del self._transport

    @property
    def port(self) -> int:
        """The port the server listens on (the ephemeral one when started with port 0)."""
        return self._transport.port()

    def set_serving(self, bint serving) -> None:
        """Report SERVING (a verified champion is loaded) or NOT_SERVING on grpc.health.v1 ("" and FraudDetection)."""
        with nogil:
            self._transport.SetServing(serving)

    def describe(self, str model_name, versions, feature_names, str platform, str server_name,
                 str server_version) -> None:
        """What the Open Inference Protocol's metadata calls say: the model name, its serving versions (champion
        first), its input's feature names and platform, and the server's name and version."""
        cdef ModelDescription description
        description.model_name = model_name.encode("utf-8")
        description.platform = platform.encode("utf-8")
        description.server_name = server_name.encode("utf-8")
        for version in versions:
            description.versions.push_back(version.encode("utf-8"))
        for name in feature_names:
            description.feature_names.push_back(name.encode("utf-8"))
        description.server_version = server_version.encode("utf-8")
        with nogil:
            self._transport.Describe(description)

    def shutdown(self, double grace) -> None:
        """Health NOT_SERVING, stop accepting calls, let in-flight ones finish within `grace` s, cancel the rest."""
        with nogil:
            self._transport.Shutdown(grace)
