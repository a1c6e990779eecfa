//! A typed client for VoxGuard's FraudDetection service (`proto/fraud_detection.proto`): gRPC spoken directly
//! over `h2` and `tokio`, for builds where tonic is not available.
//!
//! - `Predict` with a per-call deadline (sent as `grpc-timeout`, enforced here too) and one retry on the next
//!   endpoint, within the same deadline, on `UNAVAILABLE` or `RESOURCE_EXHAUSTED` (what the server answers while
//!   it drains, has no champion yet, or is at capacity; a refused connection counts as `UNAVAILABLE`);
//! - `PredictBatch` (many rows, one call) and `PredictStream` (one answer per request, in order);
//! - plaintext HTTP/2, or TLS / mutual TLS with rustls when a [`Tls`] is given.
//!
//! One HTTP/2 connection per endpoint is opened on first use and kept; a broken one is replaced on the next call.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::rustls;

/// The generated FraudDetection messages (`PredictionRequest`, `PredictionResponse`, `ScoredPrediction`, ...).
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

const PREDICT: &str = "/FraudDetection/Predict";
const PREDICT_BATCH: &str = "/FraudDetection/PredictBatch";
const PREDICT_STREAM: &str = "/FraudDetection/PredictStream";

/// A gRPC status code (the numbers are the protocol's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// The code of a `grpc-status` value; numbers outside the protocol are `Unknown`.
    pub fn from_i32(value: i32) -> Code {
        use Code::*;
        const ALL: [Code; 17] = [
            Ok,
            Cancelled,
            Unknown,
            InvalidArgument,
            DeadlineExceeded,
            NotFound,
            AlreadyExists,
            PermissionDenied,
            ResourceExhausted,
            FailedPrecondition,
            Aborted,
            OutOfRange,
            Unimplemented,
            Internal,
            Unavailable,
            DataLoss,
            Unauthenticated,
        ];
        ALL.get(value as usize)
            .copied()
            .filter(|_| value >= 0)
            .unwrap_or(Unknown)
    }

    /// The protocol's name of the code, e.g. `DEADLINE_EXCEEDED` (what grpcurl and the Python client print).
    pub fn name(self) -> &'static str {
        use Code::*;
        match self {
            Ok => "OK",
            Cancelled => "CANCELLED",
            Unknown => "UNKNOWN",
            InvalidArgument => "INVALID_ARGUMENT",
            DeadlineExceeded => "DEADLINE_EXCEEDED",
            NotFound => "NOT_FOUND",
            AlreadyExists => "ALREADY_EXISTS",
            PermissionDenied => "PERMISSION_DENIED",
            ResourceExhausted => "RESOURCE_EXHAUSTED",
            FailedPrecondition => "FAILED_PRECONDITION",
            Aborted => "ABORTED",
            OutOfRange => "OUT_OF_RANGE",
            Unimplemented => "UNIMPLEMENTED",
            Internal => "INTERNAL",
            Unavailable => "UNAVAILABLE",
            DataLoss => "DATA_LOSS",
            Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// Whether another replica may answer: the server is draining, has no champion yet, or is at capacity.
    /// `DEADLINE_EXCEEDED` (the time is gone) and `INVALID_ARGUMENT` (the request is wrong) are not retried.
    pub fn retryable(self) -> bool {
        matches!(self, Code::Unavailable | Code::ResourceExhausted)
    }
}

/// A failed call: the server's `grpc-status` and `grpc-message`, or what went wrong on the way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub message: String,
}

impl Status {
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.name(), self.message)
    }
}

impl std::error::Error for Status {}

/// A failed transport (connection refused or reset, GOAWAY, TLS handshake): `UNAVAILABLE`, as gRPC maps it.
fn h2_status(context: &str, err: h2::Error) -> Status {
    if let Some(reason) = err.reason() {
        if reason == h2::Reason::CANCEL {
            return Status::new(Code::Cancelled, format!("{}: stream cancelled", context));
        }
        if reason == h2::Reason::ENHANCE_YOUR_CALM {
            return Status::new(Code::ResourceExhausted, format!("{}: {}", context, err));
        }
        if err.is_remote() && !err.is_go_away() && reason != h2::Reason::REFUSED_STREAM {
            return Status::new(Code::Internal, format!("{}: {}", context, err));
        }
    }
    Status::new(Code::Unavailable, format!("{}: {}", context, err))
}

/// TLS settings: the CA that signs the server's certificate, the name to verify it for (a DNS name: the
/// certificate must list it), and optionally a client certificate and key for mutual TLS. PEM files' contents.
#[derive(Clone)]
pub struct Tls {
    pub ca_pem: Vec<u8>,
    pub server_name: String,
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Vec<u8>>,
}

struct TlsConnector {
    connector: tokio_rustls::TlsConnector,
    server_name: rustls::ServerName,
}

impl Tls {
    fn connector(&self) -> Result<TlsConnector, Status> {
        let invalid = |what: String| Status::new(Code::InvalidArgument, what);
        let mut roots = rustls::RootCertStore::empty();
        let cas = rustls_pemfile::certs(&mut &self.ca_pem[..]).map_err(|e| invalid(format!("CA: {}", e)))?;
        if cas.is_empty() {
            return Err(invalid("CA: no certificate in the PEM".into()));
        }
        for der in cas {
            roots
                .add(&rustls::Certificate(der))
                .map_err(|e| invalid(format!("CA: {}", e)))?;
        }
        let builder = rustls::ClientConfig::builder()
            .with_safe_defaults()
            .with_root_certificates(roots);
        let mut config = match (&self.client_cert_pem, &self.client_key_pem) {
            (Some(cert), Some(key)) => {
                let chain = rustls_pemfile::certs(&mut &cert[..])
                    .map_err(|e| invalid(format!("client certificate: {}", e)))?
                    .into_iter()
                    .map(rustls::Certificate)
                    .collect();
                builder
                    .with_single_cert(chain, private_key(key)?)
                    .map_err(|e| invalid(format!("client certificate: {}", e)))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(invalid("a client certificate and its key go together".into())),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        let server_name = rustls::ServerName::try_from(self.server_name.as_str())
            .map_err(|_| invalid(format!("server name {:?}: not a DNS name", self.server_name)))?;
        Ok(TlsConnector {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

/// The first private key of a PEM (PKCS#8, PKCS#1 RSA or SEC1 EC).
fn private_key(pem: &[u8]) -> Result<rustls::PrivateKey, Status> {
    let mut reader = pem;
    loop {
        match rustls_pemfile::read_one(&mut reader) {
            Ok(Some(rustls_pemfile::Item::PKCS8Key(der)))
            | Ok(Some(rustls_pemfile::Item::RSAKey(der)))
            | Ok(Some(rustls_pemfile::Item::ECKey(der))) => return Ok(rustls::PrivateKey(der)),
            Ok(Some(_)) => continue,
            Ok(None) => {
                return Err(Status::new(
                    Code::InvalidArgument,
                    "client key: no private key in the PEM",
                ))
            }
            Err(e) => return Err(Status::new(Code::InvalidArgument, format!("client key: {}", e))),
        }
    }
}

/// One endpoint (`host:port`) and its HTTP/2 connection, opened on first use and replaced when broken.
struct Channel {
    address: String,
    tls: Option<Arc<TlsConnector>>,
    connection: Mutex<Option<SendRequest<Bytes>>>,
}

impl Channel {
    async fn sender(&self) -> Result<SendRequest<Bytes>, Status> {
        let cached = self.connection.lock().await.clone();
        if let Some(sender) = cached {
            if let Ok(ready) = sender.ready().await {
                return Ok(ready);
            }
        }
        let sender = self.connect().await?;
        let ready = sender.ready().await.map_err(|e| h2_status(&self.address, e))?;
        *self.connection.lock().await = Some(ready.clone());
        Ok(ready)
    }

    async fn connect(&self) -> Result<SendRequest<Bytes>, Status> {
        let unavailable = |e: std::io::Error| Status::new(Code::Unavailable, format!("{}: {}", self.address, e));
        let tcp = TcpStream::connect(&self.address).await.map_err(unavailable)?;
        tcp.set_nodelay(true).map_err(unavailable)?;
        match &self.tls {
            None => handshake(&self.address, tcp).await,
            Some(tls) => {
                let stream = tls
                    .connector
                    .connect(tls.server_name.clone(), tcp)
                    .await
                    .map_err(unavailable)?;
                handshake(&self.address, stream).await
            }
        }
    }

    /// Opens a call: the request headers (deadline as `grpc-timeout`), the stream to send messages on, and the
    /// response still to come.
    async fn open(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<(h2::client::ResponseFuture, SendStream<Bytes>), Status> {
        let mut sender = self.sender().await?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("{}://{}{}", scheme, self.address, path))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", grpc_timeout(timeout))
            .header(
                "user-agent",
                concat!("voxguard-rust-client/", env!("CARGO_PKG_VERSION")),
            )
            .body(())
            .map_err(|e| Status::new(Code::Internal, e.to_string()))?;
        sender
            .send_request(request, false)
            .map_err(|e| h2_status(&self.address, e))
    }

    /// One request message, then every response message and the call's status.
    async fn unary(&self, path: &str, message: &impl Message, timeout: Duration) -> Result<Vec<Bytes>, Status> {
        let (response, mut send) = self.open(path, timeout).await?;
        send.send_data(frame(message), true)
            .map_err(|e| h2_status(&self.address, e))?;
        let mut reader = Reader::start(&self.address, response).await?;
        let mut messages = Vec::new();
        while let Some(message) = reader.next().await? {
            messages.push(message);
        }
        Ok(messages)
    }
}

async fn handshake<S>(address: &str, io: S) -> Result<SendRequest<Bytes>, Status>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = h2::client::handshake(io).await.map_err(|e| h2_status(address, e))?;
    // The connection task drives the socket; it ends when the server or the last sender closes it.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// A deadline as the `grpc-timeout` header: whole milliseconds, rounded up (the protocol allows 8 digits).
fn grpc_timeout(timeout: Duration) -> String {
    let millis = (timeout.as_micros() + 999) / 1000;
    if millis <= 99_999_999 {
        format!("{}m", millis.max(1))
    } else {
        format!("{}S", timeout.as_secs().min(99_999_999))
    }
}

/// A message in gRPC's length-prefixed framing: no compression (the server refuses compressed requests).
fn frame(message: &impl Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut out = BytesMut::with_capacity(5 + body.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out.freeze()
}

/// Reads a call's response: headers, length-prefixed messages, then the trailers' `grpc-status`.
struct Reader {
    address: String,
    body: Option<RecvStream>,
    buffer: BytesMut,
}

impl Reader {
    async fn start(address: &str, response: h2::client::ResponseFuture) -> Result<Reader, Status> {
        let response = response.await.map_err(|e| h2_status(address, e))?;
        let (parts, body) = response.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(http_status(parts.status));
        }
        // A "trailers-only" answer carries the status in the headers and has no body.
        check_status(&parts.headers)?;
        Ok(Reader {
            address: address.to_string(),
            body: Some(body),
            buffer: BytesMut::new(),
        })
    }

    /// The next message, or None after the trailers said OK.
    async fn next(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            if self.buffer.len() >= 5 {
                if self.buffer[0] != 0 {
                    return Err(Status::new(
                        Code::Internal,
                        "compressed response (the client accepts identity only)",
                    ));
                }
                let length = u32::from_be_bytes([self.buffer[1], self.buffer[2], self.buffer[3], self.buffer[4]]);
                if self.buffer.len() >= 5 + length as usize {
                    self.buffer.advance(5);
                    return Ok(Some(self.buffer.split_to(length as usize).freeze()));
                }
            }
            let body = match self.body.as_mut() {
                Some(body) => body,
                None => return Ok(None),
            };
            match body.data().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(|e| h2_status(&self.address, e))?;
                    let _ = body.flow_control().release_capacity(chunk.len());
                    self.buffer.extend_from_slice(&chunk);
                }
                None => {
                    let trailers = body.trailers().await.map_err(|e| h2_status(&self.address, e))?;
                    self.body = None;
                    if !self.buffer.is_empty() {
                        return Err(Status::new(Code::Internal, "response ended inside a message"));
                    }
                    return match trailers {
                        Some(trailers) if trailers.contains_key("grpc-status") => check_status(&trailers).map(|_| None),
                        _ => Err(Status::new(Code::Internal, "response without grpc-status")),
                    };
                }
            }
        }
    }
}

/// Err when headers or trailers carry a `grpc-status` other than 0.
fn check_status(headers: &http::HeaderMap) -> Result<(), Status> {
    let code = match headers.get("grpc-status") {
        None => return Ok(()),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
            .map(Code::from_i32)
            .unwrap_or(Code::Unknown),
    };
    if code == Code::Ok {
        return Ok(());
    }
    let message = headers
        .get("grpc-message")
        .map(|v| percent_decode(v.as_bytes()))
        .unwrap_or_default();
    Err(Status::new(code, message))
}

/// The gRPC code of an HTTP status other than 200 (the protocol's table).
fn http_status(status: http::StatusCode) -> Status {
    let code = match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(code, format!("HTTP status {}", status))
}

/// `grpc-message` is percent-encoded UTF-8.
fn percent_decode(raw: &[u8]) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            if let (Some(high), Some(low)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                out.push(high << 4 | low);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn decode<M: Message + Default>(bytes: Bytes) -> Result<M, Status> {
    M::decode(bytes).map_err(|e| Status::new(Code::Internal, format!("undecodable response: {}", e)))
}

/// The single answer of a unary call.
fn single<M: Message + Default>(mut messages: Vec<Bytes>) -> Result<M, Status> {
    if messages.len() != 1 {
        return Err(Status::new(
            Code::Internal,
            format!("{} response messages to a unary call", messages.len()),
        ));
    }
    decode(messages.remove(0))
}

/// How long is left until `deadline`, or `DEADLINE_EXCEEDED`.
fn remaining(deadline: Instant) -> Result<Duration, Status> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|left| !left.is_zero())
        .ok_or_else(|| Status::new(Code::DeadlineExceeded, "deadline exceeded"))
}

/// `future`, or `DEADLINE_EXCEEDED` when `deadline` passes first (the call's streams are then reset).
async fn until<T>(
    deadline: Instant,
    future: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), future).await {
        Ok(result) => result,
        Err(_) => Err(Status::new(Code::DeadlineExceeded, "deadline exceeded")),
    }
}

/// The FraudDetection client over one or more endpoints: the first answers, the others take a retry.
pub struct Client {
    channels: Vec<Channel>,
}

impl Client {
    /// A client for `endpoints` (`host:port`, tried in this order); `tls` None means plaintext HTTP/2.
    /// No connection is made until the first call.
    pub fn new(endpoints: &[String], tls: Option<Tls>) -> Result<Client, Status> {
        if endpoints.is_empty() {
            return Err(Status::new(Code::InvalidArgument, "no endpoint"));
        }
        let tls = match tls {
            Some(tls) => Some(Arc::new(tls.connector()?)),
            None => None,
        };
        let channels = endpoints
            .iter()
            .map(|address| Channel {
                address: address.clone(),
                tls: tls.clone(),
                connection: Mutex::new(None),
            })
            .collect();
        Ok(Client { channels })
    }

    /// Scores one row within `timeout`. On `UNAVAILABLE` or `RESOURCE_EXHAUSTED` from the first endpoint it
    /// retries once on the next one with the time left; any other failure is returned as is.
    pub async fn predict(
        &self,
        request: &pb::PredictionRequest,
        timeout: Duration,
    ) -> Result<pb::PredictionResponse, Status> {
        let deadline = Instant::now() + timeout;
        let attempts = self.channels.len().min(2);
        let mut last = Status::new(Code::Unavailable, "no endpoint tried");
        for channel in &self.channels[..attempts] {
            let left = remaining(deadline)?;
            match until(deadline, channel.unary(PREDICT, request, left))
                .await
                .and_then(single)
            {
                Ok(response) => return Ok(response),
                Err(status) if status.code.retryable() => last = status,
                Err(status) => return Err(status),
            }
        }
        Err(last)
    }

    /// Scores many rows in one call on the first endpoint: every row is scored, or the call fails (the message
    /// names the bad row). Answers are in the order of the requests.
    pub async fn predict_batch(
        &self,
        requests: Vec<pb::PredictionRequest>,
        timeout: Duration,
    ) -> Result<Vec<pb::ScoredPrediction>, Status> {
        let deadline = Instant::now() + timeout;
        let batch = pb::PredictionBatchRequest { requests };
        let response: pb::PredictionBatchResponse =
            until(deadline, self.channels[0].unary(PREDICT_BATCH, &batch, timeout))
                .await
                .and_then(single)?;
        Ok(response.responses)
    }

    /// Opens a PredictStream call on the first endpoint, open for `timeout`: send requests and read one answer
    /// per request, in order, as they come.
    pub async fn predict_stream(&self, timeout: Duration) -> Result<ScoreStream, Status> {
        let deadline = Instant::now() + timeout;
        let channel = &self.channels[0];
        let (response, send) = until(deadline, channel.open(PREDICT_STREAM, timeout)).await?;
        Ok(ScoreStream {
            address: channel.address.clone(),
            deadline,
            send: Some(send),
            response: Some(response),
            reader: None,
        })
    }
}

/// An open PredictStream call: `send` requests, `finish` when there are no more, `recv` the answers.
pub struct ScoreStream {
    address: String,
    deadline: Instant,
    send: Option<SendStream<Bytes>>,
    response: Option<h2::client::ResponseFuture>,
    reader: Option<Reader>,
}

impl ScoreStream {
    /// Queues one request (HTTP/2 flow control paces the socket).
    pub fn send(&mut self, request: &pb::PredictionRequest) -> Result<(), Status> {
        match self.send.as_mut() {
            Some(send) => send
                .send_data(frame(request), false)
                .map_err(|e| h2_status(&self.address, e)),
            None => Err(Status::new(Code::FailedPrecondition, "the stream was finished")),
        }
    }

    /// Ends the request side; the server answers what it has and then closes the call.
    pub fn finish(&mut self) -> Result<(), Status> {
        match self.send.take() {
            Some(mut send) => send
                .send_data(Bytes::new(), true)
                .map_err(|e| h2_status(&self.address, e)),
            None => Ok(()),
        }
    }

    /// The next answer; None once the server closed the call with OK.
    pub async fn recv(&mut self) -> Result<Option<pb::ScoredPrediction>, Status> {
        let deadline = self.deadline;
        until(deadline, async {
            if self.reader.is_none() {
                let response = self
                    .response
                    .take()
                    .ok_or_else(|| Status::new(Code::Internal, "no response"))?;
                self.reader = Some(Reader::start(&self.address, response).await?);
            }
            match self.reader.as_mut().expect("reader started").next().await? {
                Some(bytes) => decode(bytes).map(Some),
                None => Ok(None),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_header_rounds_up_to_milliseconds() {
        assert_eq!(grpc_timeout(Duration::from_micros(1500)), "2m");
        assert_eq!(grpc_timeout(Duration::from_millis(20)), "20m");
        assert_eq!(grpc_timeout(Duration::from_nanos(1)), "1m");
    }

    #[test]
    fn frames_carry_the_length_prefix() {
        let request = pb::PredictionRequest {
            features: vec![1.0; 8],
            request_id: "a".into(),
            ..Default::default()
        };
        let bytes = frame(&request);
        assert_eq!(bytes[0], 0);
        assert_eq!(
            u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize,
            bytes.len() - 5
        );
    }

    #[test]
    fn grpc_message_is_percent_decoded() {
        assert_eq!(
            percent_decode(b"row 3: 7 features%2C expected 8"),
            "row 3: 7 features, expected 8"
        );
        assert_eq!(percent_decode(b"100%"), "100%");
    }

    #[test]
    fn codes_round_trip_and_only_capacity_and_availability_retry() {
        assert_eq!(Code::from_i32(14), Code::Unavailable);
        assert_eq!(Code::from_i32(99), Code::Unknown);
        assert_eq!(Code::from_i32(-1), Code::Unknown);
        assert!(Code::ResourceExhausted.retryable() && !Code::DeadlineExceeded.retryable());
    }
}
