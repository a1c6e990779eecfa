/* The native gRPC transport: a C++ gRPC server (callback API) serving FraudDetection from a vg_core (issue 6).
 *
 * Predict, PredictBatch and PredictStream are registered as raw-bytes methods of the generated FraudDetection
 * service, so each message goes as bytes into one vg_core_handle call and the encoded reply goes back as
 * bytes; no protobuf object is built per request and no Python runs on the request path. The server also
 * exposes grpc.health.v1 (the default health service, NOT_SERVING until SetServing(true)) and server
 * reflection. Python owns the core (models, split, counters) and keeps it alive longer than the transport.
 */
#ifndef VG_GRPC_TRANSPORT_H
#define VG_GRPC_TRANSPORT_H

#include <cstddef>
#include <memory>
#include <string>

#include "vg_core.h"

namespace voxguard {

struct TransportOptions {
    std::string address;            /* "host:port"; port 0 binds an ephemeral port */
    size_t max_receive_bytes = 0;   /* largest message accepted (0: gRPC's default) */
    bool reuse_port = false;        /* SO_REUSEPORT, for several server processes on one port */
    int stream_window = 64;         /* PredictStream replies queued per stream before reading pauses */
    std::string tls_cert_chain;     /* PEM; empty: plaintext. With it, the server presents this certificate */
    std::string tls_private_key;    /* PEM key of tls_cert_chain */
    std::string tls_client_ca;      /* PEM; non-empty: clients must present a certificate it signed (mTLS) */
};

class GrpcTransport {
  public:
    /* Bind and start serving `core`; nullptr with *error set when the address cannot be bound. */
    static GrpcTransport *Start(vg_core *core, const TransportOptions &options, std::string *error);
    ~GrpcTransport();

    /* The bound port. */
    int port() const { return port_; }
    /* Health of "" and "FraudDetection": SERVING when true, else NOT_SERVING. */
    void SetServing(bool serving);
    /* Drain: health NOT_SERVING for good, stop accepting calls, let in-flight calls finish for up to
     * grace_seconds, then cancel the rest; returns when every call has ended. Idempotent. */
    void Shutdown(double grace_seconds);

  private:
    struct Impl;
    explicit GrpcTransport(std::unique_ptr<Impl> impl, int port);
    std::unique_ptr<Impl> impl_;
    int port_;
};

}  // namespace voxguard

#endif /* VG_GRPC_TRANSPORT_H */
