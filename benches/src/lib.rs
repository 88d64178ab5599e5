//! Fixtures shared by the criterion benchmarks and the callgrind driver: a catalog of realistic
//! tools, a key policy over it, and the `tools/call` hot path composed from the public stages
//! of `sluice-filters` (parse, authenticate, check, pick the upstream, rewrite, write the answer).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method};
use serde_json::json;
use serde_json::value::RawValue;
use sluice_filters::audit::AuditLog;
use sluice_filters::auth::KeyStore;
use sluice_filters::catalog::CatalogStore;
use sluice_filters::jsonrpc;
use sluice_filters::mcp::{McpEndpoint, Request, Services, forward_params};
use sluice_filters::metrics::Metrics;
use sluice_filters::ratelimit::LocalRateLimiter;
use sluice_filters::upstream::Upstreams;

pub const KEY: &str = "bench-key-0123456789";

/// A configuration with one key granted half of the catalog through a group and a glob.
pub fn config() -> sluice_conf::Config {
    let text = format!(
        "listen: [{{address: 127.0.0.1:1}}]\naudit: {{ path: null }}\nmcp:\n  tool_groups:\n    half: [\"fast__tool_1*\", \"fast__tool_2*\", \"fast__small\"]\nkeys:\n  - name: bench\n    key: {KEY}\n    tool_groups: [half]\n    tools: [\"fast__tool_3*\"]\n"
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

/// A catalog of `n` tools from one server named `fast`.
pub fn catalog(n: usize) -> Arc<CatalogStore> {
    let store = Arc::new(CatalogStore::new());
    let mut tools: Vec<_> = (0..n.saturating_sub(1))
        .map(|i| tool(&format!("tool_{i}")))
        .collect();
    tools.push(tool("small"));
    store.set_server_tools("fast", 0, "fast", tools);
    store
}

/// The `tools/call` request a client sends.
pub const CALL: &[u8] = br#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"fast__small","arguments":{"query":"pingora proxy phases","limit":5}}}"#;
/// A small tool result as an upstream answers it.
pub const RESULT: &str = r#"{"content":[{"type":"text","text":"ok: pingora proxy phases"}]}"#;

/// Headers of an authenticated request.
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

/// Everything Sluice does for a `tools/call` except the upstream round trip: parse the body,
/// authenticate the key, check the grant, find the owning server, rewrite the params, and
/// write the answer around the upstream's result. Returns the answer's length.
pub fn tools_call_hot_path(
    keys: &KeyStore,
    catalog: &CatalogStore,
    headers: &HeaderMap,
    body: &[u8],
) -> usize {
    let message = jsonrpc::parse(body).expect("valid request");
    let caller = keys.authenticate(headers).expect("valid key");
    #[derive(serde::Deserialize)]
    struct Params<'a> {
        #[serde(borrow)]
        name: &'a str,
        #[serde(borrow)]
        arguments: Option<&'a RawValue>,
    }
    let params: Params<'_> =
        serde_json::from_str(message.params.expect("params").get()).expect("params");
    let catalog = catalog.load();
    let (index, tool) = catalog.find(params.name).expect("known tool");
    assert!(caller.grants.allowed(&catalog).contains(index), "granted");
    let forwarded = forward_params(&tool.upstream_name, params.arguments, None);
    let answer = jsonrpc::result_bytes(message.id.expect("id"), RESULT);
    forwarded.get().len() + answer.len() + tool.server.len()
}

/// A `/mcp` endpoint over `catalog` with no upstream connections, for `tools/list`.
pub fn endpoint(catalog: Arc<CatalogStore>) -> McpEndpoint {
    let config = config();
    let upstreams = Arc::new(Upstreams::new(&[], catalog));
    let services = Services {
        upstreams,
        audit: Arc::new(AuditLog::open(&config.audit).expect("no audit file")),
        metrics: Arc::new(Metrics::new()),
        rate_limiter: Arc::new(LocalRateLimiter::new()),
    };
    McpEndpoint::new(
        &config,
        services,
        b"bench-secret-0123456789",
        Duration::from_secs(3600),
    )
}

/// Open a session on `endpoint` and return the headers that carry it.
pub fn session(runtime: &tokio::runtime::Runtime, endpoint: &McpEndpoint) -> HeaderMap {
    let mut headers = headers();
    let init = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#;
    let response = runtime.block_on(endpoint.handle(Request {
        method: &Method::POST,
        headers: &headers,
        body: init,
    }));
    let session = response
        .headers
        .iter()
        .find(|(name, _)| name.as_str() == "mcp-session-id")
        .map(|(_, value)| value.clone())
        .expect("session id");
    headers.insert("mcp-session-id", session);
    headers
}

/// The `tools/list` request.
pub const LIST: &[u8] = br#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#;
