//! The whole `/mcp` pipeline ([`McpEndpoint::handle`]) from plain bytes, without sockets:
//! transport checks, key, rate limit, JSON-RPC, session, both protocol eras, grants, routing to
//! an in-process upstream, the answer.
//!
//! An input is one to [`MAX_REQUESTS`] requests separated by a line `===`, each written like
//! HTTP/1.1 without the request target:
//!
//! ```text
//! POST
//! authorization: Bearer fuzz-key-0123456789
//! accept: application/json, text/event-stream
//! content-type: application/json
//! mcp-session-id: $SESSION
//!
//! {"jsonrpc":"2.0","id":2,"method":"tools/list"}
//! ```
//!
//! `$SESSION` in a header value stands for the last session id an answer carried, or, before
//! any, for one opened with `initialize` first (with the request's key). Every input gets a new
//! endpoint (same configuration, same upstream) on a new runtime whose clock is paused, so
//! inputs do not depend on each other and timers fire at once.
//!
//! Checked besides "no panic": every JSON answer is JSON, and every event of an event stream
//! carries JSON. `SLUICE_FUZZ_VERBOSE=1` prints every request and answer (to see how far an
//! input gets): `SLUICE_FUZZ_VERBOSE=1 cargo fuzz run -s none mcp_request <file>`.
#![no_main]

use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures::StreamExt;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use sluice_filters::audit::AuditLog;
use sluice_filters::catalog::CatalogStore;
use sluice_filters::codemode::CodeMode;
use sluice_filters::codemode::pool::{Pool, WorkerCommand};
use sluice_filters::mcp::{Body, McpEndpoint, Request, Response, Services};
use sluice_filters::metrics::Metrics;
use sluice_filters::ratelimit::LocalRateLimiter;
use sluice_filters::sse::SseReader;
use sluice_filters::upstream::{LocalServer, Outcome, Upstreams};

const MAX_REQUESTS: usize = 6;
/// Events read from one event stream before the test lets it go.
const MAX_EVENTS: usize = 16;
const SECRET: &[u8] = b"sluice-fuzz-session-secret-0123456789";
const KEY: &str = "fuzz-key-0123456789";

/// One upstream (`local`, in process), a tool group, a key granted part of the catalog, a key
/// granted everything with a rate limit of 2 requests a minute, a Code Mode key, small pages,
/// one allowed browser origin, and no audit log.
const CONFIG: &str = r#"
listen: [{address: 127.0.0.1:1}]
audit: {path: null}
mcp:
  page_size: 2
  allowed_origins: ["https://app.example"]
  servers:
    - name: local
      http: {url: "http://127.0.0.1:1/mcp"}
  tool_groups:
    reading: ["local__echo", "local__list_*"]
keys:
  - name: fuzz
    key: fuzz-key-0123456789
    tool_groups: [reading]
    tools: ["local__fail", "local__greet", "local__resource:mem://*"]
  - name: limited
    key: fuzz-limited-key-0123456789
    tools: ["*"]
    rate_limit: {requests_per_minute: 2}
  - name: coder
    key: fuzz-coder-key-0123456789
    tools: ["local__*"]
    code_mode: true
"#;

/// What every input shares: the configuration and the upstream with its catalog.
struct Shared {
    config: sluice_conf::Config,
    upstreams: Arc<Upstreams>,
    audit: Arc<AuditLog>,
    metrics: Arc<Metrics>,
}

static SHARED: LazyLock<Shared> = LazyLock::new(|| {
    let config = sluice_conf::parse(Path::new("fuzz.yaml"), CONFIG, &|_| None)
        .expect("the fuzz configuration is valid");
    let upstreams = Arc::new(Upstreams::new(&[], Arc::new(CatalogStore::new())));
    runtime()
        .block_on(upstreams.attach_local(config.mcp.servers[0].clone(), Arc::new(Upstream)))
        .expect("in-process upstream attached");
    Shared {
        audit: Arc::new(AuditLog::open(&config.audit).expect("audit log off")),
        metrics: Arc::new(Metrics::new()),
        upstreams,
        config,
    }
});

/// Code Mode with a worker program that does not exist: `run_script` fails to start one, and
/// the fuzzer never starts a process.
fn code_mode(config: &sluice_conf::Config) -> Arc<CodeMode> {
    let worker = WorkerCommand {
        program: "/nonexistent/sluice-fuzz-starts-no-code-worker".into(),
        args: Vec::new(),
    };
    Arc::new(CodeMode::new(Pool::new(worker, &config.code_mode)))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
}

/// An MCP server with a few tools, resources and prompts; `tools/call` answers its
/// (forwarded) params back, `local__fail` an error.
struct Upstream;

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_string()).expect("valid JSON")
}

impl LocalServer for Upstream {
    fn handle(&self, method: &str, params: Option<&RawValue>) -> Outcome {
        let params = params.map(RawValue::get).unwrap_or("null");
        Outcome::Result(raw(match method {
            "tools/list" => {
                r#"{"tools":[
                {"name":"echo","description":"Echo","inputSchema":{"type":"object","properties":{"message":{"type":"string"}}}},
                {"name":"fail","inputSchema":{"type":"object"}},
                {"name":"list_things","inputSchema":{"type":"object"},"annotations":{"readOnlyHint":true}},
                {"name":"hidden","inputSchema":{"type":"object"}}]}"#
            }
            "tools/call" if params.contains("\"fail\"") => {
                return Outcome::Error(raw(r#"{"code":-32000,"message":"failed"}"#));
            }
            "tools/call" => {
                return Outcome::Result(raw(&format!(
                    r#"{{"content":[{{"type":"text","text":"ok"}}],"structuredContent":{params}}}"#
                )));
            }
            "resources/list" => {
                r#"{"resources":[{"uri":"mem://a","name":"a"},{"uri":"mem://b","name":"b","mimeType":"text/plain"}]}"#
            }
            "resources/templates/list" => {
                r#"{"resourceTemplates":[{"uriTemplate":"mem://{name}","name":"by name"}]}"#
            }
            "resources/read" => r#"{"contents":[{"uri":"mem://a","text":"hello"}]}"#,
            "resources/subscribe" | "resources/unsubscribe" | "ping" => "{}",
            "prompts/list" => {
                r#"{"prompts":[{"name":"greet","arguments":[{"name":"who","required":true}]}]}"#
            }
            "prompts/get" => {
                r#"{"messages":[{"role":"user","content":{"type":"text","text":"hi"}}]}"#
            }
            "completion/complete" => r#"{"completion":{"values":["a"],"hasMore":false}}"#,
            _ => return Outcome::Error(raw(r#"{"code":-32601,"message":"Method not found"}"#)),
        }))
    }
}

/// One request of an input.
struct Raw<'a> {
    method: Method,
    headers: Vec<(HeaderName, &'a [u8])>,
    body: &'a [u8],
}

fn split<'a>(data: &'a [u8], separator: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let data = rest?;
        match memchr::memmem::find(data, separator) {
            Some(i) => {
                rest = Some(&data[i + separator.len()..]);
                Some(&data[..i])
            }
            None => {
                rest = None;
                Some(data)
            }
        }
    })
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b'\r', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\r'] = s {
        s = rest;
    }
    s
}

/// Read one request; `None` when its method line is not an HTTP method.
fn read_request(data: &[u8]) -> Option<Raw<'_>> {
    // The head ends at the first empty line (`\n\n` or `\n\r\n`).
    let mut end = None;
    for (i, _) in data.iter().enumerate().filter(|(_, b)| **b == b'\n') {
        match data[i + 1..] {
            [b'\n', ..] => end = Some((i, i + 2)),
            [b'\r', b'\n', ..] => end = Some((i, i + 3)),
            _ => continue,
        }
        break;
    }
    let (head, body) = match end {
        Some((head, body)) => (&data[..head], &data[body..]),
        None => (data, &b""[..]),
    };
    let mut lines = head.split(|b| *b == b'\n');
    let method = Method::from_bytes(trim(lines.next()?)).ok()?;
    let headers = lines
        .filter_map(|line| {
            let colon = line.iter().position(|b| *b == b':')?;
            let name = HeaderName::from_bytes(trim(&line[..colon])).ok()?;
            Some((name, trim(&line[colon + 1..])))
        })
        .collect();
    Some(Raw {
        method,
        headers,
        body,
    })
}

/// The session id `$SESSION` stands for when no answer carried one yet: `initialize` with the
/// request's `Authorization` header, or with [`KEY`] if that is refused.
async fn open_session(endpoint: &McpEndpoint, authorization: Option<HeaderValue>) -> HeaderValue {
    if let Some(authorization) = authorization
        && let Some(id) = initialize(endpoint, authorization).await
    {
        return id;
    }
    let bearer = HeaderValue::from_str(&format!("Bearer {KEY}")).expect("header value");
    initialize(endpoint, bearer)
        .await
        .expect("initialize with the fuzz key on a new endpoint")
}

async fn initialize(endpoint: &McpEndpoint, authorization: HeaderValue) -> Option<HeaderValue> {
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, authorization);
    headers.insert(
        "accept",
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let body = br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"sampling":{},"elicitation":{},"roots":{}},"clientInfo":{"name":"fuzz","version":"1"}}}"#;
    let response = endpoint
        .handle(Request {
            method: &Method::POST,
            headers: &headers,
            body,
        })
        .await;
    if response.status != StatusCode::OK {
        return None;
    }
    Some(session_of(&response).expect("a successful initialize answers a session id"))
}

fn session_of(response: &Response) -> Option<HeaderValue> {
    response
        .headers
        .iter()
        .find(|(name, _)| name.as_str() == "mcp-session-id")
        .map(|(_, value)| value.clone())
}

fn assert_json(bytes: &[u8], what: &str) {
    if let Err(e) = serde_json::from_slice::<&RawValue>(bytes) {
        panic!(
            "{what} is not JSON ({e}): {}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// `SLUICE_FUZZ_VERBOSE=1`: print each request's answer (to see what an input reaches).
static VERBOSE: LazyLock<bool> =
    LazyLock::new(|| std::env::var_os("SLUICE_FUZZ_VERBOSE").is_some());

fn show(text: &[u8]) {
    if *VERBOSE {
        let text = String::from_utf8_lossy(text);
        let cut: String = text.chars().take(4000).collect();
        eprintln!("    {cut}");
    }
}

/// Read the answer as a client would, checking that what it carries is JSON.
async fn read_body(response: Response) {
    if *VERBOSE {
        eprintln!("<- {} {:?}", response.status, response.headers);
    }
    let json = response
        .headers
        .iter()
        .any(|(name, value)| name == http::header::CONTENT_TYPE && value == "application/json");
    match response.body {
        Body::Full(bytes) => {
            show(&bytes);
            if json && !bytes.is_empty() {
                assert_json(&bytes, "a JSON answer");
            }
        }
        Body::Stream(mut stream) => {
            let mut body = Vec::new();
            let read = async {
                while let Some(piece) = stream.next().await {
                    match piece {
                        Ok(piece) => body.extend_from_slice(&piece),
                        Err(_) => return false,
                    }
                }
                true
            };
            let complete = tokio::time::timeout(Duration::from_secs(600), read).await;
            show(&body);
            if complete == Ok(true) && json {
                assert_json(&body, "a streamed JSON answer");
            }
        }
        Body::Events(events) => {
            let chunks = futures::stream::unfold(events, |mut events| async move {
                let chunk = events.recv().await?;
                Some((Ok::<_, std::convert::Infallible>(chunk), events))
            });
            let mut reader = SseReader::new(Box::pin(chunks), 1 << 24);
            for _ in 0..MAX_EVENTS {
                let next = tokio::time::timeout(Duration::from_secs(600), reader.next_event());
                match next.await {
                    Ok(Some(Ok(event))) => {
                        show(event.data.as_bytes());
                        if !event.data.is_empty() {
                            assert_json(event.data.as_bytes(), "an event's data");
                        }
                    }
                    Ok(Some(Err(e))) => panic!("Sluice wrote an unreadable event stream: {e}"),
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}

async fn run(endpoint: &McpEndpoint, data: &[u8]) {
    let mut session: Option<HeaderValue> = None;
    for chunk in split(data, b"\n===\n").take(MAX_REQUESTS) {
        let Some(raw) = read_request(chunk) else {
            continue;
        };
        let authorization = raw
            .headers
            .iter()
            .find(|(name, _)| name == AUTHORIZATION)
            .and_then(|(_, value)| HeaderValue::from_bytes(value).ok());
        let mut headers = HeaderMap::new();
        for (name, value) in raw.headers {
            let value = if memchr::memmem::find(value, b"$SESSION").is_some() {
                let id = match &session {
                    Some(id) => id.clone(),
                    None => session
                        .insert(open_session(endpoint, authorization.clone()).await)
                        .clone(),
                };
                let text = String::from_utf8_lossy(value).replace("$SESSION", id.to_str().unwrap());
                HeaderValue::from_str(&text)
            } else {
                HeaderValue::from_bytes(value)
            };
            if let Ok(value) = value {
                headers.append(name, value);
            }
        }
        if *VERBOSE {
            eprintln!("-> {} {}", raw.method, String::from_utf8_lossy(raw.body));
        }
        let response = endpoint
            .handle(Request {
                method: &raw.method,
                headers: &headers,
                body: raw.body,
            })
            .await;
        if let Some(id) = session_of(&response) {
            session = Some(id);
        }
        read_body(response).await;
    }
}

fuzz_target!(|data: &[u8]| {
    let shared = &*SHARED;
    let runtime = runtime();
    let endpoint = McpEndpoint::new(
        &shared.config,
        Services {
            upstreams: shared.upstreams.clone(),
            audit: shared.audit.clone(),
            metrics: shared.metrics.clone(),
            rate_limiter: Arc::new(LocalRateLimiter::new()),
            code_mode: code_mode(&shared.config),
            links: std::sync::Arc::new(sluice_filters::llm::links::ToolUseBook::new(std::time::Duration::from_secs(60))),
        },
        SECRET,
        Duration::from_secs(3600),
    );
    runtime.block_on(run(&endpoint, data));
});
