// Load generator of the native-transport benchmark: a C++ gRPC client (Debian's libgrpc++) sending raw
// serialized PredictionRequest bytes through the generic stub, as a native caller (the Rust engine) would.
//
//   native_client TARGET seq N             N sequential Predict calls: latency percentiles (the requests of the
//                                          file VG_BENCH_REQUESTS in turn, when set, to the method
//                                          VG_BENCH_METHOD, when set)
//   native_client TARGET inflight K N      N Predict calls, K in flight at all times: calls per second
//   native_client TARGET stream K N        one PredictStream of N messages, up to K unanswered: messages/s
//   native_client TARGET overload K S D     S seconds of Predict calls, K in flight, each with a D ms deadline:
//                                          answers OK within the deadline per second, codes, p50/p99 of those
//
// Prints one JSON object on stdout; exits 1 (message on stderr) when a call fails.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
const char kPredict[] = "/FraudDetection/Predict";
const char kStream[] = "/FraudDetection/PredictStream";

// PredictionRequest{features: 8 packed floats, request_id: "bench"}.
grpc::ByteBuffer Request() {
    const float row[8] = {0.3f, -1.2f, 0.8f, 0.1f, 0.5f, 2.0f, -0.4f, 1.1f};
    std::string bytes = {0x0a, 0x20};
    bytes.append(reinterpret_cast<const char *>(row), sizeof row);
    bytes += std::string{0x12, 0x05} + "bench";
    grpc::Slice slice(bytes);
    return grpc::ByteBuffer(&slice, 1);
}

// The requests of the file named by VG_BENCH_REQUESTS (each a little-endian u32 length, then that many bytes of a
// serialized PredictionRequest), else the one of Request().
std::vector<grpc::ByteBuffer> Requests() {
    const char *path = std::getenv("VG_BENCH_REQUESTS");
    std::vector<grpc::ByteBuffer> out;
    if (path == nullptr) {
        out.push_back(Request());
        return out;
    }
    FILE *file = std::fopen(path, "rb");
    uint32_t length;
    while (file != nullptr && std::fread(&length, sizeof length, 1, file) == 1) {
        std::string bytes(length, '\0');
        if (std::fread(bytes.data(), 1, length, file) != length) {
            break;
        }
        grpc::Slice slice(bytes);
        out.emplace_back(&slice, 1);
    }
    if (file != nullptr) {
        std::fclose(file);
    }
    if (out.empty()) {
        std::fprintf(stderr, "no requests in VG_BENCH_REQUESTS=%s\n", path);
        std::exit(1);
    }
    return out;
}

[[noreturn]] void Fail(const char *what, const grpc::Status &status) {
    std::fprintf(stderr, "%s failed: %d %s\n", what, static_cast<int>(status.error_code()),
                 status.error_message().c_str());
    std::exit(1);
}

double Percentile(std::vector<double> &sorted, double q) {
    return sorted[std::min(sorted.size() - 1, static_cast<size_t>(q * static_cast<double>(sorted.size())))];
}

// The unary method `seq` calls: VG_BENCH_METHOD (e.g. /inference.GRPCInferenceService/ModelInfer), else Predict.
std::string SequentialMethod() {
    const char *method = std::getenv("VG_BENCH_METHOD");
    return method != nullptr ? method : kPredict;
}

// One unary call of `method`, waited for on `cq`; its status.
grpc::Status Unary(grpc::GenericStub &stub, grpc::CompletionQueue &cq, grpc::ClientContext &context,
                   const std::string &method, const grpc::ByteBuffer &request) {
    grpc::ByteBuffer reply;
    grpc::Status status;
    void *tag;
    bool ok;
    auto call = stub.PrepareUnaryCall(&context, method, request, &cq);
    call->StartCall();
    call->Finish(&reply, &status, &context);
    cq.Next(&tag, &ok);
    return status;
}

void Sequential(grpc::GenericStub &stub, long n) {
    const std::string method = SequentialMethod();
    grpc::CompletionQueue cq;
    const std::vector<grpc::ByteBuffer> requests = Requests();
    std::vector<double> micros;
    micros.reserve(n);
    for (long i = 0; i < n; ++i) {
        const grpc::ByteBuffer &request = requests[static_cast<size_t>(i) % requests.size()];
        grpc::ClientContext context;
        const auto start = Clock::now();
        const grpc::Status status = Unary(stub, cq, context, method, request);
        micros.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
        if (!status.ok())
            Fail(method.c_str(), status);
    }
    std::sort(micros.begin(), micros.end());
    std::printf("{\"calls\": %ld, \"p50_us\": %.2f, \"p99_us\": %.2f, \"p999_us\": %.2f}\n", n, Percentile(micros, 0.5),
                Percentile(micros, 0.99), Percentile(micros, 0.999));
}

struct UnaryCall {
    grpc::ClientContext context;
    grpc::ByteBuffer reply;
    grpc::Status status;
    std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader;
};

void InFlight(grpc::GenericStub &stub, int k, long n) {
    grpc::CompletionQueue cq;
    const grpc::ByteBuffer request = Request();
    long started = 0, done = 0;
    auto start_one = [&]() {
        auto *call = new UnaryCall;
        call->reader = stub.PrepareUnaryCall(&call->context, kPredict, request, &cq);
        call->reader->StartCall();
        call->reader->Finish(&call->reply, &call->status, call);
        ++started;
    };
    const auto begin = Clock::now();
    for (int i = 0; i < k && started < n; ++i)
        start_one();
    void *tag;
    bool ok;
    while (done < n && cq.Next(&tag, &ok)) {
        auto *call = static_cast<UnaryCall *>(tag);
        if (!call->status.ok())
            Fail("Predict", call->status);
        delete call;
        ++done;
        if (started < n)
            start_one();
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - begin).count();
    std::printf("{\"calls\": %ld, \"in_flight\": %d, \"calls_per_s\": %.1f}\n", n, k, n / seconds);
}

struct TimedCall : UnaryCall {
    Clock::time_point sent;
};

// `text` as the inside of a JSON string (quotes, backslashes and control characters escaped).
std::string Escaped(const std::string &text) {
    std::string out;
    for (const char c : text) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (static_cast<unsigned char>(c) < 0x20) {
            out += ' ';
        } else {
            out += c;
        }
    }
    return out;
}

void Overload(grpc::GenericStub &stub, int k, double seconds, double deadline_ms) {
    grpc::CompletionQueue cq;
    const grpc::ByteBuffer request = Request();
    {
        // One call first, as on a long-lived channel: the server's HTTP/2 settings (its stream limit) are known
        // before the load starts, so no stream is sent past the limit and refused.
        grpc::ClientContext context;
        const grpc::Status status = Unary(stub, cq, context, kPredict, request);
        if (!status.ok())
            Fail("the first Predict", status);
    }
    const auto budget = std::chrono::duration<double, std::milli>(deadline_ms);
    const auto begin = Clock::now();
    const auto end = begin + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    long in_flight = 0, on_time = 0, late = 0;
    long codes[17] = {0};
    std::vector<std::string> messages[17]; // the distinct messages of each code (a few), to tell refusals apart
    std::vector<double> micros;
    auto start_one = [&]() {
        auto *call = new TimedCall;
        call->sent = Clock::now();
        call->context.set_deadline(std::chrono::system_clock::now() +
                                   std::chrono::duration_cast<std::chrono::system_clock::duration>(budget));
        call->reader = stub.PrepareUnaryCall(&call->context, kPredict, request, &cq);
        call->reader->StartCall();
        call->reader->Finish(&call->reply, &call->status, call);
        ++in_flight;
    };
    for (int i = 0; i < k; ++i)
        start_one();
    void *tag;
    bool ok;
    while (in_flight > 0 && cq.Next(&tag, &ok)) {
        auto *call = static_cast<TimedCall *>(tag);
        --in_flight;
        const auto took = Clock::now() - call->sent;
        const int code = static_cast<int>(call->status.error_code());
        const int slot = code >= 0 && code < 17 ? code : 2;
        codes[slot]++;
        auto &said = messages[slot];
        if (slot != 0 && said.size() < 4 &&
            std::find(said.begin(), said.end(), call->status.error_message()) == said.end())
            said.push_back(call->status.error_message());
        if (call->status.ok() && took <= budget) {
            ++on_time;
            micros.push_back(std::chrono::duration<double, std::micro>(took).count());
        } else if (call->status.ok()) {
            ++late;
        }
        delete call;
        if (Clock::now() < end)
            start_one();
    }
    const double elapsed = std::chrono::duration<double>(Clock::now() - begin).count();
    std::sort(micros.begin(), micros.end());
    const double p50 = micros.empty() ? 0 : Percentile(micros, 0.5),
                 p99 = micros.empty() ? 0 : Percentile(micros, 0.99);
    std::printf("{\"in_flight\": %d, \"deadline_ms\": %.1f, \"ok_in_time_per_s\": %.1f, \"ok_late\": %ld, "
                "\"p50_us\": %.1f, \"p99_us\": %.1f, \"codes\": {",
                k, deadline_ms, on_time / elapsed, late, p50, p99);
    bool first = true;
    for (int c = 0; c < 17; ++c) {
        if (codes[c]) {
            std::printf("%s\"%d\": %ld", first ? "" : ", ", c, codes[c]);
            first = false;
        }
    }
    std::printf("}, \"messages\": {");
    first = true;
    for (int c = 1; c < 17; ++c) {
        if (codes[c]) {
            std::printf("%s\"%d\": [", first ? "" : ", ", c);
            for (size_t i = 0; i < messages[c].size(); ++i)
                std::printf("%s\"%s\"", i ? ", " : "", Escaped(messages[c][i]).c_str());
            std::printf("]");
            first = false;
        }
    }
    std::printf("}}\n");
}

void Stream(grpc::GenericStub &stub, int k, long n) {
    enum Tag : intptr_t { kStarted = 1, kWritten, kRead, kWritesDone, kFinished };
    grpc::CompletionQueue cq;
    grpc::ClientContext context;
    const grpc::ByteBuffer request = Request();
    grpc::ByteBuffer reply;
    grpc::Status status;
    auto call = stub.PrepareCall(&context, kStream, &cq);
    void *tag;
    bool ok;
    call->StartCall(reinterpret_cast<void *>(kStarted));
    cq.Next(&tag, &ok);
    const auto begin = Clock::now();
    long sent = 0, received = 0;
    bool writing = false, closing = false;
    call->Read(&reply, reinterpret_cast<void *>(kRead));
    while (received < n) {
        if (!writing && sent < n && sent - received < k) {
            call->Write(request, reinterpret_cast<void *>(kWritten));
            writing = true;
        } else if (!writing && sent == n && !closing) {
            call->WritesDone(reinterpret_cast<void *>(kWritesDone));
            writing = closing = true;
        }
        cq.Next(&tag, &ok);
        switch (reinterpret_cast<intptr_t>(tag)) {
        case kWritten:
            ++sent;
            writing = false;
            break;
        case kWritesDone:
            writing = false;
            break;
        case kRead:
            if (!ok) {
                call->Finish(&status, reinterpret_cast<void *>(kFinished));
                cq.Next(&tag, &ok);
                Fail("PredictStream", status.ok() ? grpc::Status(grpc::StatusCode::INTERNAL, "ended early") : status);
            }
            if (++received < n)
                call->Read(&reply, reinterpret_cast<void *>(kRead));
            break;
        }
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - begin).count();
    while (writing) { // the last Write's or the WritesDone's completion
        cq.Next(&tag, &ok);
        writing = false;
    }
    if (!closing) {
        call->WritesDone(reinterpret_cast<void *>(kWritesDone));
        cq.Next(&tag, &ok);
    }
    call->Finish(&status, reinterpret_cast<void *>(kFinished));
    cq.Next(&tag, &ok);
    if (!status.ok())
        Fail("PredictStream", status);
    std::printf("{\"messages\": %ld, \"in_flight\": %d, \"messages_per_s\": %.1f}\n", n, k, n / seconds);
}

} // namespace

int main(int argc, char **argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: %s TARGET seq N | inflight K N | stream K N | overload K S D\n", argv[0]);
        return 2;
    }
    grpc::GenericStub stub(grpc::CreateChannel(argv[1], grpc::InsecureChannelCredentials()));
    const std::string mode = argv[2];
    if (mode == "seq") {
        Sequential(stub, std::atol(argv[3]));
    } else if (mode == "inflight" && argc == 5) {
        InFlight(stub, std::atoi(argv[3]), std::atol(argv[4]));
    } else if (mode == "stream" && argc == 5) {
        Stream(stub, std::atoi(argv[3]), std::atol(argv[4]));
    } else if (mode == "overload" && argc == 6) {
        Overload(stub, std::atoi(argv[3]), std::atof(argv[4]), std::atof(argv[5]));
    } else {
        std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
        return 2;
    }
    return 0;
}
