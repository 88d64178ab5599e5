//! A fast Streamable HTTP MCP server and fake Anthropic provider for load tests (HTTP/1.1
//! keep-alive).
//!
//! `POST /mcp` answers `initialize`, `ping`, `tools/list` and `tools/call` (see
//! `sluice_perf::mcp`) with JSON; `POST /v1/messages` answers as Anthropic's Messages API does,
//! streamed when asked (see `sluice_perf::anthropic`); `GET /stats` reports how many TCP
//! connections were accepted, which is how the benchmark sees whether a gateway reuses its
//! upstream connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sluice_perf::anthropic::{Answer, Provider};
use sluice_perf::mcp::{Reply, Server};
use tokio::net::TcpListener;
use tokio::time::Sleep;

/// Requests larger than this are refused; the scenarios send a few hundred bytes.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

#[derive(Parser)]
#[command(about = "Fast upstream MCP server for Sluice's benchmarks")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// Tools in the catalog (at least the two scenario tools, `small` and `large`).
    #[arg(long, default_value_t = 500)]
    tools: usize,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// The API key `POST /v1/messages` accepts (in `x-api-key`).
    #[arg(long, default_value = "sk-fake")]
    api_key: String,
    /// How long a streamed answer waits between `message_start` and the other events.
    #[arg(long, default_value_t = 20)]
    stream_delay_ms: u64,
}

/// Every answer: whole (`Full`), or in two parts (a streamed Messages answer).
type AnswerBody = Either<Full<Bytes>, Delayed>;

struct State {
    server: Server,
    provider: Provider,
    stream_delay: Duration,
    connections_accepted: AtomicU64,
    connections_open: AtomicU64,
    requests: AtomicU64,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> std::io::Result<()> {
    let state = Arc::new(State {
        server: Server::new(args.tools),
        provider: Provider::new(args.api_key.clone()),
        stream_delay: Duration::from_millis(args.stream_delay_ms),
        connections_accepted: AtomicU64::new(0),
        connections_open: AtomicU64::new(0),
        requests: AtomicU64::new(0),
    });
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!(
        "perf-upstream listening on {} ({} tools, tools/list result {} bytes)",
        listener.local_addr()?,
        args.tools.max(2),
        state.server.tools_list_bytes()
    );
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Small answers must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        state.connections_accepted.fetch_add(1, Ordering::Relaxed);
        state.connections_open.fetch_add(1, Ordering::Relaxed);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(|req| serve(state.clone(), req));
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            state.connections_open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn serve(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<AnswerBody>, Infallible> {
    let response = match (req.method(), req.uri().path()) {
        (&Method::POST, "/mcp") => {
            state.requests.fetch_add(1, Ordering::Relaxed);
            match Limited::new(req.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
            {
                Ok(body) => reply(state.server.handle(&body.to_bytes())),
                Err(_) => empty(StatusCode::BAD_REQUEST),
            }
        }
        (&Method::POST, "/v1/messages") => {
            state.requests.fetch_add(1, Ordering::Relaxed);
            let (head, body) = req.into_parts();
            match Limited::new(body, MAX_BODY_BYTES).collect().await {
                Ok(body) => {
                    let header = |name| head.headers.get(name).map(HeaderValue::as_bytes);
                    let answer = state.provider.handle(
                        header("x-api-key"),
                        header("anthropic-version"),
                        &body.to_bytes(),
                    );
                    return Ok(messages_answer(answer, state.stream_delay));
                }
                Err(_) => empty(StatusCode::BAD_REQUEST),
            }
        }
        (&Method::GET, "/stats") => json(
            StatusCode::OK,
            Bytes::from(
                serde_json::json!({
                    "connections_accepted": state.connections_accepted.load(Ordering::Relaxed),
                    "connections_open": state.connections_open.load(Ordering::Relaxed),
                    "requests": state.requests.load(Ordering::Relaxed),
                })
                .to_string(),
            ),
        ),
        // Sessions are not tracked, so ending one always succeeds.
        (&Method::DELETE, "/mcp") => empty(StatusCode::OK),
        // No server-initiated stream (GET /mcp): this server never sends requests.
        (_, "/mcp") => empty(StatusCode::METHOD_NOT_ALLOWED),
        _ => empty(StatusCode::NOT_FOUND),
    };
    Ok(response.map(Either::Left))
}

fn messages_answer(answer: Answer, delay: Duration) -> Response<AnswerBody> {
    match answer {
        Answer::Json { status, body } => json(status, body).map(Either::Left),
        Answer::Stream { first, rest } => {
            let body = Delayed {
                first: Some(first),
                rest: Some(rest),
                // From now, not from when `first` is written: the delay is the model's.
                sleep: Box::pin(tokio::time::sleep(delay)),
            };
            let mut response = Response::new(Either::Right(body));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
    }
}

/// A chunked body of two pieces: the first at once, the second when `sleep` ends. hyper writes
/// the first piece out while the second is pending, which is what makes the time to first byte
/// shorter than the whole answer's.
struct Delayed {
    first: Option<Bytes>,
    rest: Option<Bytes>,
    sleep: Pin<Box<Sleep>>,
}

impl Body for Delayed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if self.rest.is_none() {
            return Poll::Ready(None);
        }
        ready!(self.sleep.as_mut().poll(cx));
        Poll::Ready(self.rest.take().map(|rest| Ok(Frame::data(rest))))
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn reply(reply: Reply) -> Response<Full<Bytes>> {
    match reply {
        Reply::Accepted => empty(StatusCode::ACCEPTED),
        Reply::Json {
            status,
            body,
            session_id,
        } => {
            let mut response = json(status, body);
            if let Some(value) = session_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
                response.headers_mut().insert("mcp-session-id", value);
            }
            response
        }
    }
}

fn json(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}
