//! The stateless protocol era (MCP 2026-07-28) at the edge of `/mcp`: which era a request
//! speaks, the rules only that era has (its `_meta`, its headers and their error codes), and
//! how its answers differ (`resultType`, caching hints, `server/discover`). Below this edge the
//! methods are the same for both eras.
//!
//! A request is of the new era when its `params._meta` carries
//! `io.modelcontextprotocol/protocolVersion`, or when its `MCP-Protocol-Version` header names a
//! version of the new era (a malformed request of that era, answered with that era's errors).

use std::borrow::Cow;
use std::sync::LazyLock;

use http::{HeaderMap, StatusCode};
use memchr::memmem;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::http::Response;
use super::transport::PROTOCOL_HEADER;
use crate::jsonrpc::{self, Message, code};

/// The versions of the stateless era Sluice serves, newest first.
pub const VERSIONS: [&str; 1] = ["2026-07-28"];

pub const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
pub const META_SUBSCRIPTION: &str = "io.modelcontextprotocol/subscriptionId";
/// The tasks extension: relayed between clients and upstreams that both declare it.
pub const TASKS_EXTENSION: &str = "io.modelcontextprotocol/tasks";
pub const METHOD_HEADER: &str = "mcp-method";
pub const NAME_HEADER: &str = "mcp-name";

/// Error codes of the stateless era.
pub mod codes {
    pub const HEADER_MISMATCH: i32 = -32020;
    pub const MISSING_CLIENT_CAPABILITY: i32 = -32021;
    pub const UNSUPPORTED_VERSION: i32 = -32022;
}

/// Methods of the session era that the stateless era removed.
const REMOVED: [&str; 5] = [
    "initialize",
    "ping",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
];

/// What a new-era request declared about itself in its `_meta`.
#[derive(Debug, Clone)]
pub struct Declared {
    pub version: String,
    pub capabilities: Value,
    /// `io.modelcontextprotocol/logLevel`: log messages are relayed only when it is set.
    pub log_level: Option<String>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(rename = "_meta", default)]
    meta: Option<Meta>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    uri: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "taskId")]
    task_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(rename = "io.modelcontextprotocol/protocolVersion", default)]
    version: Option<Value>,
    #[serde(rename = "io.modelcontextprotocol/clientCapabilities", default)]
    capabilities: Option<Value>,
    #[serde(rename = "io.modelcontextprotocol/logLevel", default)]
    log_level: Option<String>,
}

/// Whether `message` (with `headers`) speaks the stateless era.
pub fn is_modern(headers: &HeaderMap, message: &Message<'_>) -> bool {
    let header_modern = headers
        .get(PROTOCOL_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| is_dated_version(v.trim()) && v.trim() >= VERSIONS[VERSIONS.len() - 1]);
    header_modern
        || message.method == Some("server/discover")
        || message.params.is_some_and(|p| {
            // A searcher is costly to build: built once.
            static FINDER: LazyLock<memmem::Finder<'static>> =
                LazyLock::new(|| memmem::Finder::new(META_VERSION));
            FINDER.find(p.get().as_bytes()).is_some() && meta_version(p).is_some()
        })
}

/// `YYYY-MM-DD`, the shape of every MCP version; anything else in the header is not a claim
/// to the new era.
fn is_dated_version(v: &str) -> bool {
    v.len() == 10
        && v.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
}

fn meta_version(params: &RawValue) -> Option<Value> {
    serde_json::from_str::<Params<'_>>(params.get())
        .ok()?
        .meta?
        .version
}

/// Check a new-era request in the order the specification gives: its `_meta`, then its
/// headers against its body. The refusal carries the new era's code and HTTP status.
pub fn check(headers: &HeaderMap, message: &Message<'_>) -> Result<Declared, Response> {
    let id = message.id;
    let params: Option<Params<'_>> = message
        .params
        .and_then(|p| serde_json::from_str(p.get()).ok());
    let meta = params.as_ref().and_then(|p| p.meta.as_ref());
    let (Some(version), Some(capabilities)) = (
        meta.and_then(|m| m.version.as_ref()),
        meta.and_then(|m| m.capabilities.as_ref()),
    ) else {
        return Err(refuse(
            id,
            code::INVALID_PARAMS,
            &format!(
                "a {} request needs `params._meta` with `{META_VERSION}` and `{META_CAPABILITIES}`",
                VERSIONS[0]
            ),
            None,
        ));
    };
    if !capabilities.is_object() {
        return Err(refuse(
            id,
            code::INVALID_PARAMS,
            &format!("`params._meta.{META_CAPABILITIES}` must be an object"),
            None,
        ));
    }
    let version = version.as_str().unwrap_or_default().to_string();
    let header = headers
        .get(PROTOCOL_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    if header != Some(version.as_str()) {
        return Err(refuse(
            id,
            codes::HEADER_MISMATCH,
            &format!(
                "the MCP-Protocol-Version header ({}) must equal `_meta.{META_VERSION}` ({})",
                crate::jsonrpc::shorten(header.unwrap_or("missing"), 40),
                crate::jsonrpc::shorten(&version, 40)
            ),
            None,
        ));
    }
    if !VERSIONS.contains(&version.as_str()) {
        let mut supported: Vec<&str> = VERSIONS.to_vec();
        supported.extend(crate::protocol::SUPPORTED);
        return Err(refuse(
            id,
            codes::UNSUPPORTED_VERSION,
            &format!(
                "protocol version `{}` is not supported; Sluice speaks {}",
                crate::jsonrpc::shorten(&version, 40),
                supported.join(", ")
            ),
            Some(serde_json::json!({
                "supported": supported,
                "requested": crate::jsonrpc::shorten(&version, 40),
            })),
        ));
    }
    let method = message.method.unwrap_or_default();
    let method_header = headers.get(METHOD_HEADER).and_then(|v| v.to_str().ok());
    if method_header.map(str::trim) != Some(method) {
        return Err(refuse(
            id,
            codes::HEADER_MISMATCH,
            &format!(
                "the Mcp-Method header ({}) must equal the body's method ({})",
                crate::jsonrpc::shorten(method_header.unwrap_or("missing"), 100),
                crate::jsonrpc::shorten(method, 100)
            ),
            None,
        ));
    }
    let named = match method {
        "tools/call" | "prompts/get" => params.as_ref().and_then(|p| p.name.as_deref()),
        "resources/read" => params.as_ref().and_then(|p| p.uri.as_deref()),
        "tasks/get" | "tasks/update" | "tasks/cancel" => {
            params.as_ref().and_then(|p| p.task_id.as_deref())
        }
        _ => None,
    };
    if let Some(named) = named {
        let header = headers
            .get(NAME_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| decode_header_value(v.trim()));
        if header.as_deref() != Some(named) {
            return Err(refuse(
                id,
                codes::HEADER_MISMATCH,
                &format!(
                    "the Mcp-Name header must equal the body's name or uri ({})",
                    crate::jsonrpc::shorten(named, 200)
                ),
                None,
            ));
        }
    }
    if REMOVED.contains(&method) {
        return Err(not_found(id, method));
    }
    let log_level = meta.and_then(|m| m.log_level.clone());
    Ok(Declared {
        version,
        capabilities: capabilities.clone(),
        log_level,
    })
}

/// A header value as sent: literal, or `=?base64?...?=` for values that cannot be sent as
/// they are. `None` when the encoding is broken.
fn decode_header_value(value: &str) -> Option<Cow<'_, str>> {
    use base64::Engine;
    let Some(encoded) = value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    else {
        return Some(Cow::Borrowed(value));
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    String::from_utf8(bytes).ok().map(Cow::Owned)
}

/// A method the stateless era does not have (or Sluice does not serve): 404.
pub fn not_found(id: Option<&RawValue>, method: &str) -> Response {
    refuse(
        id,
        code::METHOD_NOT_FOUND,
        &format!(
            "method `{}` does not exist in MCP {}",
            crate::jsonrpc::shorten(method, 100),
            VERSIONS[0]
        ),
        None,
    )
    .with_status(StatusCode::NOT_FOUND)
}

fn refuse(id: Option<&RawValue>, code: i32, message: &str, data: Option<Value>) -> Response {
    Response::json(
        StatusCode::BAD_REQUEST,
        jsonrpc::error_bytes(id, code, message, data.as_ref()),
    )
}

/// The fields a complete new-era result starts with; lists and reads also say how long they
/// may be cached (not at all, and only for this caller: they are filtered for its key).
pub fn result_head(cacheable: bool) -> &'static str {
    if cacheable {
        "\"resultType\":\"complete\",\"ttlMs\":0,\"cacheScope\":\"private\""
    } else {
        "\"resultType\":\"complete\""
    }
}

/// A result of a session-era upstream as a new-era client reads it: `resultType` (and the
/// caching hints) and Sluice's `serverInfo` in `_meta` added, unless the upstream already
/// speaks the new era.
pub fn complete(result: &str, cacheable: bool) -> String {
    let trimmed = result.trim_start();
    let Some(rest) = trimmed.strip_prefix('{') else {
        return result.to_string();
    };
    if top_level_has(result, "resultType") {
        return result.to_string();
    }
    if top_level_has(result, "_meta") {
        return complete_with_meta(result, cacheable).unwrap_or_else(|| result.to_string());
    }
    let head = result_head(cacheable);
    let info = server_info_meta();
    let mut out = String::with_capacity(result.len() + head.len() + info.len() + 4);
    out.push('{');
    out.push_str(head);
    out.push(',');
    out.push_str(info);
    if !rest.trim_start().starts_with('}') {
        out.push(',');
    }
    out.push_str(rest);
    out
}

/// `"_meta":{"io.modelcontextprotocol/serverInfo":{...}}`, written once.
fn server_info_meta() -> &'static str {
    static META: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    META.get_or_init(|| {
        format!(
            "\"_meta\":{{\"{META_SERVER_INFO}\":{{\"name\":\"sluice\",\"version\":\"{}\"}}}}",
            env!("CARGO_PKG_VERSION")
        )
    })
}

/// [`complete`] for a result that has a `_meta` of its own: Sluice's `serverInfo` joins it.
fn complete_with_meta(result: &str, cacheable: bool) -> Option<String> {
    let mut object: serde_json::Map<String, Value> = serde_json::from_str(result).ok()?;
    let head: serde_json::Map<String, Value> =
        serde_json::from_str(&format!("{{{}}}", result_head(cacheable))).ok()?;
    let info: serde_json::Map<String, Value> =
        serde_json::from_str(&format!("{{{}}}", server_info_meta())).ok()?;
    if let (Some(Value::Object(meta)), Some(Value::Object(ours))) =
        (object.get_mut("_meta"), info.get("_meta"))
    {
        for (k, v) in ours {
            meta.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    object.extend(head);
    serde_json::to_string(&object).ok()
}

/// Whether a JSON object has `key` among its own members (cheap check on the raw text first).
fn top_level_has(object: &str, key: &str) -> bool {
    object.contains(key)
        && serde_json::from_str::<serde_json::Map<String, Value>>(object)
            .is_ok_and(|m| m.contains_key(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn message(body: &str) -> Message<'_> {
        jsonrpc::parse(body.as_bytes()).unwrap()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;

    #[test]
    fn tells_the_eras_apart() {
        assert!(is_modern(&headers(&[]), &message(CALL)));
        let legacy = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"progressToken":1}}}"#;
        assert!(!is_modern(
            &headers(&[("mcp-protocol-version", "2025-11-25")]),
            &message(legacy)
        ));
        assert!(is_modern(
            &headers(&[("mcp-protocol-version", "2026-07-28")]),
            &message(legacy)
        ));
    }

    #[test]
    fn checks_meta_then_headers() {
        let good = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ]);
        assert!(check(&good, &message(CALL)).is_ok());
        let encoded = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?ZWNobw==?="),
        ]);
        assert!(check(&encoded, &message(CALL)).is_ok());
        let code_of = |r: Response| {
            let v: Value = serde_json::from_slice(r.body.as_bytes().unwrap()).unwrap();
            (r.status, v["error"]["code"].as_i64().unwrap())
        };
        let wrong_name = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "other"),
        ]);
        assert_eq!(
            code_of(check(&wrong_name, &message(CALL)).unwrap_err()),
            (StatusCode::BAD_REQUEST, -32020)
        );
        let no_meta = r#"{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{}}"#;
        assert_eq!(
            code_of(check(&good, &message(no_meta)).unwrap_err()),
            (StatusCode::BAD_REQUEST, -32602)
        );
        let future = CALL.replace("2026-07-28", "v999");
        let h = headers(&[
            ("mcp-protocol-version", "v999"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ]);
        assert_eq!(
            code_of(check(&h, &message(&future)).unwrap_err()),
            (StatusCode::BAD_REQUEST, -32022)
        );
        assert_eq!(
            code_of(check(&good, &message(&future)).unwrap_err()),
            (StatusCode::BAD_REQUEST, -32020)
        );
    }

    #[test]
    fn completes_results() {
        let info = server_info_meta();
        assert_eq!(
            complete("{}", false),
            format!(r#"{{"resultType":"complete",{info}}}"#)
        );
        assert_eq!(
            complete(r#"{"content":[]}"#, false),
            format!(r#"{{"resultType":"complete",{info},"content":[]}}"#)
        );
        let with_meta: Value =
            serde_json::from_str(&complete(r#"{"content":[],"_meta":{"a":1}}"#, true)).unwrap();
        assert_eq!(with_meta["_meta"]["a"], 1);
        assert_eq!(with_meta["_meta"][META_SERVER_INFO]["name"], "sluice");
        assert_eq!(with_meta["cacheScope"], "private");
        assert_eq!(
            complete(r#"{"resultType":"input_required"}"#, false),
            r#"{"resultType":"input_required"}"#
        );
    }
}
