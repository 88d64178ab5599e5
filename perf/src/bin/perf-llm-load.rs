//! A fixed-rate load generator that records time to first byte as well as total time.
//!
//! oha reports only whole-response latency, and a streamed LLM answer is judged by when its
//! first event arrives. This sends one request body at a fixed rate over a fixed set of
//! keep-alive HTTP/1.1 connections and prints, as JSON, exact percentiles of both times over
//! every request, status and error counts.
//!
//! Open loop, coordinated omission accounted for: a dedicated thread releases request `i` at
//! `start + i / rate` (a thread's sleep is far more precise than tokio's 1 ms timer, whose
//! slack would be counted as latency), and both times are measured from that intended moment.
//! A request that waits because every connection is busy therefore counts its wait, as the
//! client of a slow server would see it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http::{HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};

#[derive(Parser)]
#[command(about = "Fixed-rate HTTP load with time to first byte (JSON report on stdout)")]
struct Args {
    /// `http://host:port/path` (plain HTTP only).
    #[arg(long)]
    url: Uri,
    /// Requests per second.
    #[arg(long)]
    rate: f64,
    /// Seconds of load.
    #[arg(long)]
    duration: f64,
    /// Keep-alive connections, opened before the clock starts.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// A request header, `name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// The request body (every request is a POST of it).
    #[arg(long)]
    body: String,
    /// A string every response body must contain; one that does not is an error.
    #[arg(long)]
    expect: Option<String>,
    /// Seconds before a request (connection wait included) counts as timed out.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Tokio worker threads (the releasing thread is apart).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// What every connection needs to send requests and check answers.
struct Plan {
    uri: Uri,
    authority: HeaderValue,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    expect: Option<Vec<u8>>,
    timeout: Duration,
}

/// One connection's results.
#[derive(Default)]
struct Tally {
    /// Microseconds from the intended send to the first body byte, and to the end.
    first_byte_us: Vec<u64>,
    total_us: Vec<u64>,
    errors: BTreeMap<String, u64>,
    last_end: Option<Instant>,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    if !(args.rate > 0.0 && args.duration > 0.0 && args.connections > 0) {
        return Err("--rate, --duration and --connections must be positive".into());
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<(), String> {
    let plan = Arc::new(plan(&args)?);
    let mut connections = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        connections.push(
            connect(&plan.uri)
                .await
                .map_err(|e| format!("connect: {e}"))?,
        );
    }
    let total = (args.rate * args.duration).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let (release, released) = mpsc::unbounded_channel::<Instant>();
    let released = Arc::new(Mutex::new(released));
    let workers: Vec<_> = connections
        .into_iter()
        .map(|sender| tokio::spawn(worker(plan.clone(), Some(sender), released.clone())))
        .collect();
    let start = Instant::now();
    // The clock: a plain thread, so that each release is late by a thread wake-up (tens of
    // microseconds), not by a timer tick.
    let clock = std::thread::spawn(move || {
        for i in 0..total {
            let intended = start + interval.mul_f64(i as f64);
            if let Some(wait) = intended.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if release.send(intended).is_err() {
                break;
            }
        }
    });
    let mut tally = Tally::default();
    for worker in workers {
        let part = worker.await.map_err(|e| e.to_string())?;
        tally.first_byte_us.extend(part.first_byte_us);
        tally.total_us.extend(part.total_us);
        for (kind, n) in part.errors {
            *tally.errors.entry(kind).or_default() += n;
        }
        tally.last_end = tally.last_end.max(part.last_end);
    }
    clock.join().map_err(|_| "the clock thread panicked")?;
    let elapsed = tally
        .last_end
        .map_or(0.0, |end| (end - start).as_secs_f64());
    let ok = tally.total_us.len() as u64;
    let errors: u64 = tally.errors.values().sum();
    let report = serde_json::json!({
        "rate": args.rate,
        "duration_s": args.duration,
        "connections": args.connections,
        "requests": ok + errors,
        "ok": ok,
        "errors": errors,
        "error_kinds": tally.errors,
        "elapsed_s": elapsed,
        "achieved_rps": if elapsed > 0.0 { (ok + errors) as f64 / elapsed } else { 0.0 },
        "first_byte_ms": percentiles(tally.first_byte_us),
        "total_ms": percentiles(tally.total_us),
    });
    println!("{report}");
    Ok(())
}

fn plan(args: &Args) -> Result<Plan, String> {
    let authority = args
        .url
        .authority()
        .filter(|_| args.url.scheme_str() == Some("http"))
        .ok_or("--url must be http://host:port/path")?;
    let headers = args
        .headers
        .iter()
        .map(|h| {
            let (name, value) = h.split_once(':').ok_or(format!("bad header `{h}`"))?;
            Ok((
                HeaderName::try_from(name.trim()).map_err(|e| format!("`{h}`: {e}"))?,
                HeaderValue::try_from(value.trim()).map_err(|e| format!("`{h}`: {e}"))?,
            ))
        })
        .collect::<Result<_, String>>()?;
    Ok(Plan {
        uri: args.url.clone(),
        authority: HeaderValue::try_from(authority.as_str()).map_err(|e| e.to_string())?,
        headers,
        body: Bytes::from(args.body.clone()),
        expect: args.expect.as_ref().map(|e| e.as_bytes().to_vec()),
        timeout: Duration::from_secs_f64(args.timeout),
    })
}

async fn connect(uri: &Uri) -> Result<SendRequest<Full<Bytes>>, String> {
    let host = uri.host().unwrap_or("127.0.0.1");
    let port = uri.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One connection: takes the next released request, sends it, times it. A connection that
/// failed is replaced before the next request.
async fn worker(
    plan: Arc<Plan>,
    mut sender: Option<SendRequest<Full<Bytes>>>,
    released: Arc<Mutex<mpsc::UnboundedReceiver<Instant>>>,
) -> Tally {
    let mut tally = Tally::default();
    loop {
        let Some(intended) = released.lock().await.recv().await else {
            return tally;
        };
        let outcome =
            tokio::time::timeout_at((intended + plan.timeout).into(), send(&plan, &mut sender))
                .await
                .unwrap_or_else(|_| Err("timeout".into()));
        let end = Instant::now();
        tally.last_end = Some(end);
        match outcome {
            Ok(first_byte) => {
                tally.first_byte_us.push(micros(first_byte - intended));
                tally.total_us.push(micros(end - intended));
            }
            Err(kind) => {
                sender = None;
                *tally.errors.entry(kind).or_default() += 1;
            }
        }
    }
}

/// Send one request and read its answer; returns when the first body byte arrived.
async fn send(
    plan: &Plan,
    sender: &mut Option<SendRequest<Full<Bytes>>>,
) -> Result<Instant, String> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = Some(
            connect(&plan.uri)
                .await
                .map_err(|e| format!("connect: {e}"))?,
        );
    }
    let sender = sender.as_mut().expect("connected above");
    sender
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let mut request = Request::post(plan.uri.clone())
        .body(Full::new(plan.body.clone()))
        .map_err(|e| e.to_string())?;
    let headers = request.headers_mut();
    headers.insert(http::header::HOST, plan.authority.clone());
    for (name, value) in &plan.headers {
        headers.append(name.clone(), value.clone());
    }
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let mut body = response.into_body();
    let mut first_byte = None;
    let mut received = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        if let Some(data) = frame.data_ref().filter(|d| !d.is_empty()) {
            first_byte.get_or_insert_with(Instant::now);
            received.extend_from_slice(data);
        }
    }
    if !status.is_success() {
        return Err(format!("HTTP {}", status.as_u16()));
    }
    if let Some(expect) = &plan.expect
        && !received
            .windows(expect.len())
            .any(|w| w == expect.as_slice())
    {
        return Err("body without the expected text".into());
    }
    // An empty body's first byte is its end.
    Ok(first_byte.unwrap_or_else(Instant::now))
}

fn micros(d: Duration) -> u64 {
    d.as_micros().try_into().unwrap_or(u64::MAX)
}

/// Exact p50, p99, p99.9 and max in milliseconds (nearest rank); nulls when there is nothing.
fn percentiles(mut us: Vec<u64>) -> serde_json::Value {
    us.sort_unstable();
    let at = |q: f64| -> Option<f64> {
        let rank = ((q * us.len() as f64).ceil() as usize).clamp(1, us.len().max(1));
        us.get(rank - 1).map(|&v| v as f64 / 1000.0)
    };
    serde_json::json!({"p50": at(0.5), "p99": at(0.99), "p99.9": at(0.999), "max": at(1.0)})
}
