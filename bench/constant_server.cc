// The constant-answer reference of the native-transport benchmark: native/transport/grpc_transport.cc unchanged (same
// C++ gRPC server, same raw-bytes methods, health and reflection), linked with a stand-in core that answers
// every Predict / PredictStream message with one precomputed response. The difference to the real native
// transport is then exactly the serving core (decode, route, score, count, encode).
//
//   constant_server PORT      serves 127.0.0.1:PORT until SIGTERM/SIGINT, then drains (1 s) and exits 0.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "grpc_transport.h"

struct vg_core {
    int unused;
};

namespace {

// PredictionResponse{is_fraud: false, probability: 0.25, model_version: "constant", latency_ms: 0.001} and the
// same fields as a ScoredPrediction with request_id "bench" (field 5).
const uint8_t kPredictReply[] = {0x15, 0x00, 0x00, 0x80, 0x3e, 0x1a, 0x08, 'c',  'o',  'n',
                                 's',  't',  'a',  'n',  't',  0x25, 0x6f, 0x12, 0x83, 0x3a};
const uint8_t kStreamTail[] = {0x2a, 0x05, 'b', 'e', 'n', 'c', 'h'};

} // namespace

extern "C" size_t vg_core_output_bound(const vg_core *, int, const uint8_t *, size_t) {
    return 64;
}

extern "C" int vg_core_handle(vg_core *, int call, const uint8_t *, size_t, uint8_t *out, size_t cap, size_t *out_len,
                              char *err, size_t errcap) {
    if (call == VG_CALL_BATCH) {
        std::snprintf(err, errcap, "the constant server answers Predict and PredictStream only");
        return 12; // UNIMPLEMENTED
    }
    size_t n = sizeof kPredictReply;
    std::memcpy(out, kPredictReply, n);
    if (call == VG_CALL_STREAM && n + sizeof kStreamTail <= cap) {
        std::memcpy(out + n, kStreamTail, sizeof kStreamTail);
        n += sizeof kStreamTail;
    }
    *out_len = n;
    return 0;
}

// The transport's admission refusals (cancelled, deadline passed, at capacity) are not counted here.
extern "C" void vg_core_count_refusal(vg_core *, int) {}

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, nullptr); // before gRPC starts its threads: only sigwait sees them

    vg_core core{};
    voxguard::TransportOptions options;
    options.address = std::string("127.0.0.1:") + argv[1];
    std::string error;
    voxguard::GrpcTransport *transport = voxguard::GrpcTransport::Start(&core, options, &error);
    if (transport == nullptr) {
        std::fprintf(stderr, "%s\n", error.c_str());
        return 1;
    }
    transport->SetServing(true);
    std::printf("serving on port %d\n", transport->port());
    std::fflush(stdout);
    int signal_number;
    sigwait(&stop, &signal_number);
    transport->Shutdown(1.0);
    delete transport;
    return 0;
}
