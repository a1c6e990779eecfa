// The native gRPC transport (see grpc_transport.h).
#include "grpc_transport.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>

#include "fraud_detection.grpc.pb.h"
#include "grpc_predict_v2.grpc.pb.h"

namespace voxguard {
namespace {

constexpr size_t kErrLen = 256;
constexpr size_t kStackOut = 1024;
const char kServiceName[] = "FraudDetection";
constexpr double kServeOnSeconds = 0.5; // of the shutdown grace, spent answering calls accepted before it

// One message through the core: request bytes in, reply bytes (or the refusal as a gRPC status) out.
grpc::Status Handle(vg_core *core, int call, const grpc::ByteBuffer &request, grpc::ByteBuffer *reply) {
    grpc::Slice joined;
    if (request.Valid() && !request.TrySingleSlice(&joined).ok() && !request.DumpToSingleSlice(&joined).ok()) {
        return grpc::Status(grpc::StatusCode::INTERNAL, "cannot read the request bytes");
    }
    const uint8_t *data = joined.begin();
    const size_t len = joined.size();
    const size_t cap = vg_core_output_bound(core, call, data, len);
    char err[kErrLen];
    size_t out_len = 0;
    int status;
    if (cap <= kStackOut) {
        uint8_t out[kStackOut];
        status = vg_core_handle(core, call, data, len, out, cap, &out_len, err, kErrLen);
        if (status == VG_OK) {
            grpc::Slice slice(out, out_len);
            *reply = grpc::ByteBuffer(&slice, 1);
        }
    } else {
        grpc::Slice buffer(cap);
        status =
            vg_core_handle(core, call, data, len, const_cast<uint8_t *>(buffer.begin()), cap, &out_len, err, kErrLen);
        if (status == VG_OK) {
            grpc::Slice slice = buffer.sub(0, out_len);
            *reply = grpc::ByteBuffer(&slice, 1);
        }
    }
    if (status != VG_OK) {
        return grpc::Status(static_cast<grpc::StatusCode>(status), err);
    }
    return grpc::Status::OK;
}

// Admission: a request is scored only when its caller can still use the answer and the process has room for it.
// A refusal is immediate, under its own gRPC code, and counted beside the core's own errors.
class Admission {
  public:
    Admission(vg_core *core, const TransportOptions &options)
        : core_(core), max_in_flight_(options.max_in_flight), min_deadline_(options.min_deadline_ms) {}

    // OK and one more request in flight (end it with Leave), or the refusal. A message of a stream opened
    // before the shutdown began is still served (`in_open_stream`): the stream gets to finish within the grace.
    grpc::Status Enter(grpc::CallbackServerContext *context, bool in_open_stream = false) {
        if (!in_open_stream && Closing()) {
            return Refuse(grpc::StatusCode::UNAVAILABLE, "the server is shutting down: call another replica");
        }
        if (context->IsCancelled()) {
            return Refuse(grpc::StatusCode::CANCELLED, "the call was cancelled before it was scored");
        }
        const auto deadline = context->deadline();
        const bool bounded = deadline != std::chrono::system_clock::time_point::max();
        const auto left = deadline - std::chrono::system_clock::now();
        if (bounded && left <= std::chrono::system_clock::duration::zero()) {
            return Refuse(grpc::StatusCode::DEADLINE_EXCEEDED, "the deadline passed before the request was scored");
        }
        if (min_deadline_.count() > 0 && (!bounded || left < min_deadline_)) {
            return Refuse(grpc::StatusCode::DEADLINE_EXCEEDED, "calls need a deadline of at least " +
                                                                   std::to_string(min_deadline_.count()) +
                                                                   " ms (ML_MIN_DEADLINE_MS)");
        }
        const size_t now = in_flight_.fetch_add(1, std::memory_order_relaxed) + 1;
        if (max_in_flight_ > 0 && now > max_in_flight_) {
            in_flight_.fetch_sub(1, std::memory_order_relaxed);
            return Refuse(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          "server at capacity (" + std::to_string(max_in_flight_) +
                              " requests in flight): fall back or retry on another replica");
        }
        return grpc::Status::OK;
    }

    void Leave() { in_flight_.fetch_sub(1, std::memory_order_release); }

    bool Closing() const { return closing_.load(std::memory_order_acquire); }

    grpc::Status Refuse(grpc::StatusCode code, const std::string &message) {
        vg_core_count_refusal(core_, static_cast<int>(code));
        return grpc::Status(code, message);
    }

    // From now on every new request is refused with UNAVAILABLE; true once none is in flight (by `until`).
    bool Close(std::chrono::steady_clock::time_point until) {
        closing_.store(true, std::memory_order_release);
        while (in_flight_.load(std::memory_order_acquire) != 0) {
            if (std::chrono::steady_clock::now() >= until) {
                return false;
            }
            std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
        return true;
    }

  private:
    vg_core *const core_;
    const size_t max_in_flight_;
    const std::chrono::milliseconds min_deadline_;
    std::atomic<size_t> in_flight_{0};
    std::atomic<bool> closing_{false};
};

// PredictStream: one reply per request, in order. Reading continues while replies are written (up to `window`
// replies queued), so a client with many messages in flight is not serialised on write completions. The first
// refused message ends the stream with its status after the replies before it are sent, as with grpcio.
class StreamReactor : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
  public:
    StreamReactor(vg_core *core, Admission *admission, grpc::CallbackServerContext *context, size_t window)
        : core_(core), admission_(admission), context_(context), window_(window) {
        if (admission_->Closing()) { // opened after the shutdown began: refused like a new unary call
            reads_done_ = true;
            status_ =
                admission_->Refuse(grpc::StatusCode::UNAVAILABLE, "the server is shutting down: call another replica");
        }
        Perform(NextActions());
    }

    void OnReadDone(bool ok) override {
        grpc::ByteBuffer reply;
        grpc::Status status = grpc::Status::OK;
        if (ok && (status = admission_->Enter(context_, true)).ok()) {
            status = Handle(core_, VG_CALL_STREAM, request_, &reply);
            admission_->Leave();
        }
        Actions actions;
        {
            std::lock_guard<std::mutex> guard(lock_);
            read_pending_ = false;
            if (!ok || !status.ok()) {
                reads_done_ = true;
                status_ = status;
            } else {
                replies_.push_back(std::move(reply));
            }
            actions = NextActions();
        }
        Perform(actions);
    }

    void OnWriteDone(bool ok) override {
        Actions actions;
        {
            std::lock_guard<std::mutex> guard(lock_);
            write_pending_ = false;
            if (!ok) { // cancelled or the client went away: nothing more can be sent
                broken_ = true;
                replies_.clear();
            }
            actions = NextActions();
        }
        Perform(actions);
    }

    void OnDone() override { delete this; }

  private:
    struct Actions {
        bool write = false;
        bool read = false;
        bool finish = false;
        grpc::Status status;
    };

    // What to start next, decided under the lock (or in the constructor); started by Perform without it.
    Actions NextActions() {
        Actions next;
        if (finished_) {
            return next;
        }
        if (!write_pending_ && !broken_ && !replies_.empty()) {
            writing_ = std::move(replies_.front());
            replies_.pop_front();
            write_pending_ = next.write = true;
        }
        if (!read_pending_ && !reads_done_ && !broken_ && replies_.size() < window_) {
            read_pending_ = next.read = true;
        }
        if (!read_pending_ && !write_pending_ && replies_.empty() && (reads_done_ || broken_)) {
            finished_ = next.finish = true;
            next.status = status_;
        }
        return next;
    }

    void Perform(const Actions &actions) {
        if (actions.write) {
            StartWrite(&writing_);
        }
        if (actions.read) {
            StartRead(&request_);
        }
        if (actions.finish) {
            Finish(actions.status);
        }
    }

    vg_core *const core_;
    Admission *const admission_;
    grpc::CallbackServerContext *const context_;
    const size_t window_;
    std::mutex lock_;
    grpc::ByteBuffer request_;             // the message being read (owned by the pending read)
    grpc::ByteBuffer writing_;             // the reply being written (owned by the pending write)
    std::deque<grpc::ByteBuffer> replies_; // replies waiting for the pending write to complete
    grpc::Status status_;
    bool read_pending_ = false;
    bool write_pending_ = false;
    bool reads_done_ = false; // the client half-closed, or a message was refused
    bool broken_ = false;     // a write failed: the call is cancelled
    bool finished_ = false;
};

using RawService = FraudDetection::WithRawCallbackMethod_Predict<FraudDetection::WithRawCallbackMethod_PredictBatch<
    FraudDetection::WithRawCallbackMethod_PredictStream<FraudDetection::Service>>>;

class FraudDetectionService final : public RawService {
  public:
    FraudDetectionService(vg_core *core, const TransportOptions &options)
        : core_(core), admission_(core, options), window_(options.stream_window > 0 ? options.stream_window : 1) {}

    grpc::ServerUnaryReactor *Predict(grpc::CallbackServerContext *context, const grpc::ByteBuffer *request,
                                      grpc::ByteBuffer *reply) override {
        return Unary(context, VG_CALL_PREDICT, request, reply);
    }

    grpc::ServerUnaryReactor *PredictBatch(grpc::CallbackServerContext *context, const grpc::ByteBuffer *request,
                                           grpc::ByteBuffer *reply) override {
        return Unary(context, VG_CALL_BATCH, request, reply);
    }

    Admission &admission() { return admission_; }

    grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> *
    PredictStream(grpc::CallbackServerContext *context) override {
        return new StreamReactor(core_, &admission_, context, window_);
    }

  private:
    grpc::ServerUnaryReactor *Unary(grpc::CallbackServerContext *context, int call, const grpc::ByteBuffer *request,
                                    grpc::ByteBuffer *reply) {
        grpc::ServerUnaryReactor *reactor = context->DefaultReactor();
        grpc::Status status = admission_.Enter(context);
        if (status.ok()) {
            status = Handle(core_, call, *request, reply);
            admission_.Leave();
        }
        reactor->Finish(status);
        return reactor;
    }

    vg_core *const core_;
    Admission admission_;
    const size_t window_;
};

// What the Open Inference Protocol's metadata calls answer: set from Python at every convergence, read per call.
class ModelDirectory {
  public:
    void Set(const ModelDescription &description) {
        std::lock_guard<std::mutex> guard(lock_);
        description_ = description;
    }

    void SetServing(bool serving) {
        std::lock_guard<std::mutex> guard(lock_);
        serving_ = serving;
    }

    bool Serving() {
        std::lock_guard<std::mutex> guard(lock_);
        return serving_;
    }

    // Whether `name` (and `version`, or the default one when empty) can score now.
    bool Ready(const std::string &name, const std::string &version) {
        std::lock_guard<std::mutex> guard(lock_);
        return serving_ && name == description_.model_name && (version.empty() || Has(version));
    }

    grpc::Status Metadata(const inference::ModelMetadataRequest &request, inference::ModelMetadataResponse *reply) {
        std::lock_guard<std::mutex> guard(lock_);
        const ModelDescription &d = description_;
        if (request.name() != d.model_name) {
            return grpc::Status(grpc::StatusCode::NOT_FOUND,
                                "unknown model '" + request.name() + "': this server serves '" + d.model_name + "'");
        }
        if (!request.version().empty() && !Has(request.version())) {
            return grpc::Status(grpc::StatusCode::NOT_FOUND,
                                "version '" + request.version() + "' of model '" + d.model_name + "' is not serving");
        }
        reply->set_name(d.model_name);
        for (const auto &version : d.versions) {
            reply->add_versions(version);
        }
        reply->set_platform(d.platform);
        auto *input = reply->add_inputs();
        input->set_name("features");
        input->set_datatype("FP32");
        input->add_shape(-1);
        input->add_shape(static_cast<int64_t>(d.feature_names.size()));
        std::string names;
        for (const auto &feature : d.feature_names) {
            names += (names.empty() ? "" : ",") + feature;
        }
        (*input->mutable_parameters())["feature_names"].set_string_param(names);
        auto *probability = reply->add_outputs();
        probability->set_name("probability");
        probability->set_datatype("FP32");
        probability->add_shape(-1);
        auto *is_fraud = reply->add_outputs();
        is_fraud->set_name("is_fraud");
        is_fraud->set_datatype("BOOL");
        is_fraud->add_shape(-1);
        return grpc::Status::OK;
    }

    void ServerMetadata(inference::ServerMetadataResponse *reply) {
        std::lock_guard<std::mutex> guard(lock_);
        reply->set_name(description_.server_name);
        reply->set_version(description_.server_version);
    }

  private:
    bool Has(const std::string &version) const {
        return std::find(description_.versions.begin(), description_.versions.end(), version) !=
               description_.versions.end();
    }

    std::mutex lock_;
    ModelDescription description_;
    bool serving_ = false;
};

using RawInferenceService =
    inference::GRPCInferenceService::WithRawCallbackMethod_ModelInfer<inference::GRPCInferenceService::CallbackService>;

// inference.GRPCInferenceService: ModelInfer through the core as bytes (like Predict), the rest from the directory.
class InferenceService final : public RawInferenceService {
  public:
    InferenceService(vg_core *core, Admission *admission, ModelDirectory *directory)
        : core_(core), admission_(admission), directory_(directory) {}

    grpc::ServerUnaryReactor *ModelInfer(grpc::CallbackServerContext *context, const grpc::ByteBuffer *request,
                                         grpc::ByteBuffer *reply) override {
        grpc::ServerUnaryReactor *reactor = context->DefaultReactor();
        grpc::Status status = admission_->Enter(context);
        if (status.ok()) {
            status = Handle(core_, VG_CALL_INFER, *request, reply);
            admission_->Leave();
        }
        reactor->Finish(status);
        return reactor;
    }

    grpc::ServerUnaryReactor *ServerLive(grpc::CallbackServerContext *context, const inference::ServerLiveRequest *,
                                         inference::ServerLiveResponse *reply) override {
        reply->set_live(!admission_->Closing());
        return Done(context, grpc::Status::OK);
    }

    grpc::ServerUnaryReactor *ServerReady(grpc::CallbackServerContext *context, const inference::ServerReadyRequest *,
                                          inference::ServerReadyResponse *reply) override {
        reply->set_ready(!admission_->Closing() && directory_->Serving());
        return Done(context, grpc::Status::OK);
    }

    grpc::ServerUnaryReactor *ModelReady(grpc::CallbackServerContext *context,
                                         const inference::ModelReadyRequest *request,
                                         inference::ModelReadyResponse *reply) override {
        reply->set_ready(!admission_->Closing() && directory_->Ready(request->name(), request->version()));
        return Done(context, grpc::Status::OK);
    }

    grpc::ServerUnaryReactor *ServerMetadata(grpc::CallbackServerContext *context,
                                             const inference::ServerMetadataRequest *,
                                             inference::ServerMetadataResponse *reply) override {
        directory_->ServerMetadata(reply);
        return Done(context, grpc::Status::OK);
    }

    grpc::ServerUnaryReactor *ModelMetadata(grpc::CallbackServerContext *context,
                                            const inference::ModelMetadataRequest *request,
                                            inference::ModelMetadataResponse *reply) override {
        return Done(context, directory_->Metadata(*request, reply));
    }

  private:
    static grpc::ServerUnaryReactor *Done(grpc::CallbackServerContext *context, const grpc::Status &status) {
        grpc::ServerUnaryReactor *reactor = context->DefaultReactor();
        reactor->Finish(status);
        return reactor;
    }

    vg_core *const core_;
    Admission *const admission_;
    ModelDirectory *const directory_;
};

// Plaintext, TLS, or mutual TLS, as the grpcio transport's ServerTLS.credentials() (tls.py).
std::shared_ptr<grpc::ServerCredentials> Credentials(const TransportOptions &options) {
    if (options.tls_cert_chain.empty()) {
        return grpc::InsecureServerCredentials();
    }
    grpc::SslServerCredentialsOptions ssl(options.tls_client_ca.empty()
                                              ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                              : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    ssl.pem_root_certs = options.tls_client_ca;
    ssl.pem_key_cert_pairs.push_back({options.tls_private_key, options.tls_cert_chain});
    return grpc::SslServerCredentials(ssl);
}

void EnableServerPlugins() {
    static std::once_flag once;
    std::call_once(once, [] {
        grpc::EnableDefaultHealthCheckService(true);
        grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    });
}

} // namespace

struct GrpcTransport::Impl {
    std::unique_ptr<FraudDetectionService> service; // declared first: destroyed after the server
    ModelDirectory directory;
    std::unique_ptr<InferenceService> inference;
    std::unique_ptr<grpc::Server> server;
    std::mutex lock;
    bool shut_down = false;
};

GrpcTransport::GrpcTransport(std::unique_ptr<Impl> impl, int port) : impl_(std::move(impl)), port_(port) {}

GrpcTransport::~GrpcTransport() {
    Shutdown(0.0);
}

GrpcTransport *GrpcTransport::Start(vg_core *core, const TransportOptions &options, std::string *error) {
    EnableServerPlugins();
    auto impl = std::make_unique<Impl>();
    impl->service = std::make_unique<FraudDetectionService>(core, options);
    impl->inference = std::make_unique<InferenceService>(core, &impl->service->admission(), &impl->directory);
    int port = 0;
    grpc::ServerBuilder builder;
    builder.AddListeningPort(options.address, Credentials(options), &port);
    builder.RegisterService(impl->service.get());
    builder.RegisterService(impl->inference.get());
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, options.reuse_port ? 1 : 0);
    if (options.max_receive_bytes > 0) {
        builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_receive_bytes));
    }
    if (!options.accept_compressed) {
        builder.SetCompressionAlgorithmSupportStatus(GRPC_COMPRESS_DEFLATE, false);
        builder.SetCompressionAlgorithmSupportStatus(GRPC_COMPRESS_GZIP, false);
    }
    for (const auto &[name, value] : options.channel_args) {
        builder.AddChannelArgument(name, value);
    }
    impl->server = builder.BuildAndStart();
    if (!impl->server || port == 0) {
        *error = "cannot listen on " + options.address + " (address in use or not valid)";
        return nullptr;
    }
    auto *transport = new GrpcTransport(std::move(impl), port);
    transport->SetServing(false);
    return transport;
}

void GrpcTransport::SetServing(bool serving) {
    std::lock_guard<std::mutex> guard(impl_->lock);
    if (impl_->shut_down) {
        return;
    }
    impl_->directory.SetServing(serving);
    grpc::HealthCheckServiceInterface *health = impl_->server->GetHealthCheckService();
    health->SetServingStatus("", serving);
    health->SetServingStatus(kServiceName, serving);
}

void GrpcTransport::Describe(const ModelDescription &description) {
    impl_->directory.Set(description);
}

void GrpcTransport::Shutdown(double grace_seconds) {
    {
        std::lock_guard<std::mutex> guard(impl_->lock);
        if (impl_->shut_down) {
            return;
        }
        impl_->shut_down = true;
        impl_->server->GetHealthCheckService()->Shutdown();
    }
    const double grace = grace_seconds > 0 ? grace_seconds : 0.0;
    const auto start = std::chrono::steady_clock::now();
    const auto end =
        start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(grace));
    // Serve on for a moment: calls the transport accepted before the signal and still queued for a handler
    // are answered, not cancelled (stopping the server cancels every call no handler has started yet).
    std::this_thread::sleep_until(start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                              std::chrono::duration<double>(std::min(grace / 2, kServeOnSeconds))));
    // Then refuse new calls at once (UNAVAILABLE: the caller goes to another replica) and let the running ones end.
    impl_->service->admission().Close(end);
    const auto left = std::max(end - std::chrono::steady_clock::now(), std::chrono::steady_clock::duration::zero());
    impl_->server->Shutdown(std::chrono::system_clock::now() +
                            std::chrono::duration_cast<std::chrono::system_clock::duration>(left));
    impl_->server->Wait();
}

} // namespace voxguard
