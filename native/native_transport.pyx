# distutils: language = c++
# cython: language_level=3
"""The native gRPC transport, driven from Python: C++ gRPC serving FraudDetection from a ServingCore.

`NativeTransport(core, "127.0.0.1:0")` starts a C++ gRPC server (callback API, its own threads) that calls
the same serving core as the grpcio handler, so no Python runs per request; models, split, thresholds and
counters stay with the ServingCore and the Python code configuring it. Health (grpc.health.v1) starts
NOT_SERVING; `set_serving()` changes it. `shutdown(grace)` drains in-flight calls with the GIL released.
"""

from cpython.pycapsule cimport PyCapsule_GetPointer
from libcpp cimport bool as cbool
from libcpp.string cimport string

from vg_core cimport vg_core

cdef const char *_CORE_CAPSULE = "voxguard.vg_core"


cdef extern from "grpc_transport.h" namespace "voxguard":
    cdef cppclass TransportOptions:
        string address
        size_t max_receive_bytes
        cbool reuse_port
        int stream_window
        string tls_cert_chain
        string tls_private_key
        string tls_client_ca

    cdef cppclass GrpcTransport:
        @staticmethod
        GrpcTransport *Start(vg_core *core, const TransportOptions &options, string *error) nogil
        int port()
        void SetServing(cbool serving) nogil
        void Shutdown(double grace_seconds) nogil


class TransportError(OSError):
    """The native transport could not start (e.g. the address is in use)."""


cdef class NativeTransport:
    """A running C++ gRPC server over `core` (a ServingCore); the core is kept alive while this object lives.

    `tls` (an inference_server.tls.ServerTLS, or None for plaintext) gives the PEM certificate chain, key and
    optional client CA (mutual TLS), exactly as for the grpcio transport."""

    cdef GrpcTransport *_transport
    cdef object _core

    def __cinit__(self, core, str address, size_t max_receive_bytes=0, bint reuse_port=False,
                  int stream_window=64, tls=None):
        cdef TransportOptions options
        cdef string error
        cdef vg_core *pointer = <vg_core *>PyCapsule_GetPointer(core.capsule(), _CORE_CAPSULE)
        options.address = address.encode("utf-8")
        options.max_receive_bytes = max_receive_bytes
        options.reuse_port = reuse_port
        options.stream_window = stream_window
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
        """Report SERVING (a verified champion is loaded) or NOT_SERVING on grpc.health.v1, for "" and FraudDetection."""
        with nogil:
            self._transport.SetServing(serving)

    def shutdown(self, double grace) -> None:
        """Health NOT_SERVING, stop accepting calls, let in-flight ones finish within `grace` seconds, cancel the rest."""
        with nogil:
            self._transport.Shutdown(grace)
