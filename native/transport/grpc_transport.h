/* The native gRPC transport: a C++ gRPC server (callback API) serving FraudDetection from a vg_core.
 *
 * Predict, PredictBatch and PredictStream are registered as raw-bytes methods of the generated FraudDetection
 * service, and ModelInfer as one of the Open Inference Protocol's inference.GRPCInferenceService, so each message
 * goes as bytes into one vg_core_handle call and the encoded reply goes back as bytes; no protobuf object is built
 * per request and no Python runs on the request path. The protocol's metadata calls answer from a ModelDescription
 * that Python sets at every convergence. The server also exposes grpc.health.v1 (the default health service,
 * NOT_SERVING until SetServing(true)) and server reflection. Python owns the core (models, split, counters) and keeps
 * it alive longer than the transport.
 */
#ifndef VG_GRPC_TRANSPORT_H
#define VG_GRPC_TRANSPORT_H

#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "voxguard/vg_core.h"

namespace voxguard {

struct TransportOptions {
    std::string address;            /* "host:port"; port 0 binds an ephemeral port */
    size_t max_receive_bytes = 0;   /* largest message accepted (0: gRPC's default) */
    bool reuse_port = false;        /* SO_REUSEPORT, for several server processes on one port */
    int stream_window = 64;         /* PredictStream replies queued per stream before reading pauses */
    std::string tls_cert_chain;     /* PEM; empty: plaintext. With it, the server presents this certificate */
    std::string tls_private_key;    /* PEM key of tls_cert_chain */
    std::string tls_client_ca;      /* PEM; non-empty: clients must present a certificate it signed (mTLS) */
    size_t max_in_flight = 0;       /* requests being handled at once; beyond: RESOURCE_EXHAUSTED (0: no bound) */
    int min_deadline_ms = 0;        /* > 0: refuse calls without a deadline or with less time left than this */
    bool accept_compressed = false; /* false: compressed messages are refused unread (no decompression bombs) */
    /* gRPC channel arguments (keepalive, idle and age limits, handshake timeout, streams per connection). */
    std::vector<std::pair<std::string, int>> channel_args;
};

/* What the Open Inference Protocol's metadata calls say about the served model (ModelInfer itself asks the core). */
struct ModelDescription {
    std::string model_name;
    std::vector<std::string> versions;      /* the serving model ids: champion first, then the challenger */
    std::vector<std::string> feature_names; /* the input's columns, in order */
    std::string platform;
    std::string server_name;
    std::string server_version;
};

class VG_API GrpcTransport {
  public:
    /* Bind and start serving `core`; nullptr with *error set when the address cannot be bound. */
    static GrpcTransport *Start(vg_core *core, const TransportOptions &options, std::string *error);
    ~GrpcTransport();

    /* The bound port. */
    int port() const { return port_; }
    /* Health of "" and "FraudDetection": SERVING when true, else NOT_SERVING. */
    void SetServing(bool serving);
    /* What ModelMetadata and ModelReady answer from now on (ServerReady follows SetServing). */
    void Describe(const ModelDescription &description);
    /* Drain: health NOT_SERVING for good; answer calls already accepted (for up to half the grace, at most
     * 0.5 s), then refuse new ones with UNAVAILABLE, let running calls finish, and stop the server within
     * grace_seconds in all, cancelling what is left; returns when every call has ended. Idempotent. */
    void Shutdown(double grace_seconds);

  private:
    struct Impl;
    explicit GrpcTransport(std::unique_ptr<Impl> impl, int port);
    std::unique_ptr<Impl> impl_;
    int port_;
};

} // namespace voxguard

#endif /* VG_GRPC_TRANSPORT_H */
