//! Fixtures shared by the criterion benchmarks and the callgrind driver: the real `/mcp`
//! pipeline ([`McpEndpoint`]) with a session, a key with a rate limit (so the limiter runs), the
//! audit log on (to a temporary file) and metrics on, in front of an in-process upstream
//! ([`LocalServer`], attached with [`Upstreams::attach_local`]) that answers at once. What is
//! measured is everything Sluice does for a request except the sockets: transport checks, key,
//! rate limit, JSON-RPC framing, session, grant, routing, relay, answer, audit record, metrics.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::json;
use serde_json::value::RawValue;
use sluice_filters::audit::AuditLog;
use sluice_filters::catalog::CatalogStore;
use sluice_filters::mcp::{Body, McpEndpoint, Request, Response, Services};
use sluice_filters::metrics::Metrics;
use sluice_filters::ratelimit::LocalRateLimiter;
use sluice_filters::upstream::{LocalServer, Outcome, Upstreams};

pub const KEY: &str = "bench-key-0123456789";

/// The key's limit: high enough never to refuse (one request per 15 ns), so that the limiter
/// runs on every request without ever tripping.
pub const REQUESTS_PER_MINUTE: u32 = 4_000_000_000;

/// A configuration with one key granted half of the catalog through a group and a glob, with a
/// rate limit, `tools/list` in one page, and the audit log at `audit` (bounded: rotated at 8 MB, one old file kept).
/// The server `fast` is listed for its settings only: the benchmarks attach it in process.
pub fn config(audit: &Path) -> sluice_conf::Config {
    let text = format!(
        r#"listen: [{{address: 127.0.0.1:1}}]
audit: {{ path: "{audit}", max_bytes: 8388608, max_files: 1 }}
mcp:
  page_size: 1000
  servers:
    - name: fast
      http: {{ url: "http://127.0.0.1:1/mcp" }}
  tool_groups:
    half: ["fast__tool_1*", "fast__tool_2*", "fast__small"]
keys:
  - name: bench
    key: {KEY}
    tool_groups: [half]
    tools: ["fast__tool_3*"]
    rate_limit: {{ requests_per_minute: {REQUESTS_PER_MINUTE} }}
"#,
        audit = audit.display()
    );
    sluice_conf::parse(Path::new("bench.yaml"), &text, &|_| None).expect("valid bench config")
}

/// A tool definition shaped like real ones (description, typed properties, required fields).
pub fn tool(name: &str) -> serde_json::Value {
    json!({
        "name": name,
        "title": format!("Tool {name}"),
        "description": "Searches the knowledge base for documents matching a query and returns the best matches with their titles, URLs and a short excerpt.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "query": { "type": "string", "description": "What to look for" },
                "limit": { "type": "integer", "minimum": 1, "maximum": 100, "default": 10 },
                "filters": { "type": "object", "properties": { "tag": { "type": "string" }, "after": { "type": "string", "format": "date" } } }
            },
            "required": ["query"]
        },
        "annotations": { "readOnlyHint": true }
    })
}

/// `n` tools: `tool_0` .. `tool_{n-2}` and `small`.
pub fn tools(n: usize) -> Vec<serde_json::Value> {
    let mut tools: Vec<_> = (0..n.saturating_sub(1))
        .map(|i| tool(&format!("tool_{i}")))
        .collect();
    tools.push(tool("small"));
    tools
}

/// The `tools/call` request a client sends.
pub const CALL: &[u8] = br#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"fast__small","arguments":{"query":"pingora proxy phases","limit":5}}}"#;
/// The small tool result the in-process upstream answers.
pub const RESULT: &str = r#"{"content":[{"type":"text","text":"ok: pingora proxy phases"}]}"#;
/// The `tools/list` request.
pub const LIST: &[u8] = br#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#;

/// An MCP server in Sluice's process: `tools/list` answers the catalog, `tools/call` a small
/// result, everything else (resources, prompts) "method not found", which Sluice reads as
/// "this server has none".
pub struct BenchServer {
    list: Box<RawValue>,
    result: Box<RawValue>,
    not_found: Box<RawValue>,
}

impl BenchServer {
    pub fn new(tools: usize) -> Self {
        let raw = |v: &serde_json::Value| serde_json::value::to_raw_value(v).expect("json");
        BenchServer {
            list: raw(&json!({ "tools": self::tools(tools) })),
            result: RawValue::from_string(RESULT.to_string()).expect("json"),
            not_found: raw(&json!({ "code": -32601, "message": "Method not found" })),
        }
    }
}

impl LocalServer for BenchServer {
    fn handle(&self, method: &str, _params: Option<&RawValue>) -> Outcome {
        match method {
            "tools/call" => Outcome::Result(self.result.clone()),
            "tools/list" => Outcome::Result(self.list.clone()),
            _ => Outcome::Error(self.not_found.clone()),
        }
    }
}

/// Headers of an authenticated request, before the session.
pub fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        HeaderValue::from_static("Bearer bench-key-0123456789"),
    );
    h.insert(
        "accept",
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h
}

/// The real `/mcp` pipeline over an in-process upstream with `tools` tools, and a session
/// opened on it. The audit log's directory is removed on drop.
pub struct Bench {
    pub runtime: tokio::runtime::Runtime,
    pub endpoint: McpEndpoint,
    /// Key, session (`Mcp-Session-Id` from `initialize`) and protocol version headers.
    pub headers: HeaderMap,
    pub audit_path: PathBuf,
    dir: PathBuf,
}

impl Bench {
    pub fn new(tools: usize) -> Self {
        let dir =
            std::env::temp_dir().join(format!("sluice-benches-{}-{tools}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let audit_path = dir.join("audit.jsonl");
        let config = config(&audit_path);
        assert!(
            config.keys[0].rate_limit.is_some(),
            "the bench key has a rate limit"
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let upstreams = Arc::new(Upstreams::new(&[], Arc::new(CatalogStore::new())));
        runtime
            .block_on(upstreams.attach_local(
                config.mcp.servers[0].clone(),
                Arc::new(BenchServer::new(tools)),
            ))
            .expect("in-process upstream attached");
        let services = Services {
            upstreams,
            audit: Arc::new(AuditLog::open(&config.audit).expect("audit log")),
            metrics: Arc::new(Metrics::new()),
            rate_limiter: Arc::new(LocalRateLimiter::new()),
            code_mode: Arc::new(sluice_filters::codemode::CodeMode::new(
                sluice_filters::codemode::pool::Pool::new(
                    sluice_filters::codemode::pool::WorkerCommand {
                        program: "sluice".into(),
                        args: vec!["code-worker".into()],
                    },
                    &config.code_mode,
                ),
            )),
            links: std::sync::Arc::new(sluice_filters::llm::links::ToolUseBook::new(
                std::time::Duration::from_secs(60),
            )),
        };
        let endpoint = McpEndpoint::new(
            &config,
            services,
            b"bench-secret-0123456789",
            Duration::from_secs(3600),
        );
        let headers = session(&runtime, &endpoint);
        Bench {
            runtime,
            endpoint,
            headers,
            audit_path,
            dir,
        }
    }

    /// One request through [`McpEndpoint::handle`], with the session's headers.
    pub fn post(&self, headers: &HeaderMap, body: &[u8]) -> Response {
        self.runtime.block_on(self.endpoint.handle(Request {
            method: &Method::POST,
            headers,
            body,
        }))
    }

    /// Check that `tools/call` goes through and answers the upstream's result, and
    /// `tools/list` the granted tools; panics otherwise (a benchmark of an error path would
    /// measure the wrong thing).
    pub fn check(&self) {
        let response = self.post(&self.headers, CALL);
        let body = full_body(&response);
        let expected = format!(r#"{{"jsonrpc":"2.0","id":42,"result":{RESULT}}}"#);
        assert_eq!(response.status, StatusCode::OK, "tools/call: {body}");
        assert_eq!(body, expected, "tools/call answer");
        let response = self.post(&self.headers, LIST);
        let body = full_body(&response);
        assert_eq!(response.status, StatusCode::OK, "tools/list: {body}");
        assert!(
            body.contains(r#""name":"fast__small""#),
            "tools/list: {body}"
        );
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The body of a JSON answer, as text.
pub fn full_body(response: &Response) -> String {
    match &response.body {
        Body::Full(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Body::Events(_) | Body::Stream(_) => panic!("expected a whole JSON answer, got a stream"),
    }
}

/// Open a session on `endpoint` (`initialize`, then `notifications/initialized`) and return
/// the headers that carry it.
pub fn session(runtime: &tokio::runtime::Runtime, endpoint: &McpEndpoint) -> HeaderMap {
    let mut headers = headers();
    let init = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#;
    let response = runtime.block_on(endpoint.handle(Request {
        method: &Method::POST,
        headers: &headers,
        body: init,
    }));
    assert_eq!(response.status, StatusCode::OK, "initialize");
    let session = response
        .headers
        .iter()
        .find(|(name, _)| name.as_str() == "mcp-session-id")
        .map(|(_, value)| value.clone())
        .expect("session id");
    headers.insert("mcp-session-id", session);
    headers.insert(
        "mcp-protocol-version",
        HeaderValue::from_static("2025-11-25"),
    );
    let initialized = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let response = runtime.block_on(endpoint.handle(Request {
        method: &Method::POST,
        headers: &headers,
        body: initialized,
    }));
    assert_eq!(
        response.status,
        StatusCode::ACCEPTED,
        "notifications/initialized"
    );
    headers
}
