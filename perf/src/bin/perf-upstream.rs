//! A fast Streamable HTTP MCP server for load tests (HTTP/1.1 keep-alive, JSON answers only).
//!
//! `POST /mcp` answers `initialize`, `ping`, `tools/list` and `tools/call` (see
//! `sluice_perf::mcp`); `GET /stats` reports how many TCP connections were accepted, which is how
//! the benchmark sees whether a gateway reuses its upstream connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sluice_perf::mcp::{Reply, Server};
use tokio::net::TcpListener;

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
}

struct State {
    server: Server,
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
) -> Result<Response<Full<Bytes>>, Infallible> {
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
    Ok(response)
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
