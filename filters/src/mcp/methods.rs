//! The MCP methods `/mcp` answers itself or routes to an upstream.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::http::StatusCode;
use ::http::header::HeaderValue;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rmcp::model::{Implementation, InitializeResult, ServerCapabilities, ToolsCapability};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::http::Response;
use super::list_cache::PageKey;
use super::{McpEndpoint, Policy, session_header};
use crate::auth::KeyEntry;
use crate::jsonrpc::{self, Message, code};
use crate::policy::Narrowing;
use crate::protocol;
use crate::upstream::Outcome;

/// What a method needs to know about the request it serves.
pub(super) struct Context<'a> {
    pub endpoint: &'a McpEndpoint,
    pub policy: &'a Policy,
    pub caller: &'a KeyEntry,
    pub narrowing: Option<&'a Narrowing>,
}

impl Context<'_> {
    /// Whether the caller may use the catalog's tool `name` at `index`.
    fn may_use(&self, index: usize, name: &str, allowed: &crate::policy::Allowed) -> bool {
        allowed.contains(index) && self.narrowing.is_none_or(|n| n.matches(name))
    }
}

/// Work done for the audit log and metrics (tool calls).
pub(super) struct Work {
    pub server: Option<Arc<str>>,
    pub tool: Option<String>,
    pub argument_bytes: usize,
    pub arguments: Option<Box<RawValue>>,
    /// `ok`, `tool_error`, `error` or `denied`.
    pub status: &'static str,
    pub error: Option<String>,
    pub upstream_time: Option<Duration>,
}

/// `initialize`: Sluice answers as one server and opens a session bound to the caller's key.
pub(super) fn initialize(
    endpoint: &McpEndpoint,
    caller: &KeyEntry,
    message: &Message<'_>,
) -> Response {
    let Some(id) = message.id else {
        return Response::refuse(
            StatusCode::BAD_REQUEST,
            None,
            code::INVALID_REQUEST,
            "`initialize` must be a request with an id",
        );
    };
    #[derive(Deserialize)]
    struct Params<'a> {
        #[serde(rename = "protocolVersion", borrow)]
        protocol_version: Option<Cow<'a, str>>,
    }
    let requested = message
        .params
        .and_then(|p| serde_json::from_str::<Params<'_>>(p.get()).ok())
        .and_then(|p| p.protocol_version);
    let version = protocol::negotiate(requested.as_deref());
    let mut capabilities = ServerCapabilities::default();
    capabilities.tools = Some(ToolsCapability::default());
    let result = InitializeResult::new(capabilities)
        .with_protocol_version(protocol::to_rmcp(version))
        .with_server_info(
            Implementation::new("sluice", env!("CARGO_PKG_VERSION"))
                .with_title("Sluice MCP gateway"),
        )
        .with_instructions(
            "Sluice aggregates several MCP servers; tool names are `<server>__<tool>`.",
        );
    let result = serde_json::to_string(&result).unwrap_or_default();
    let token = endpoint.sessions.issue(version, &caller.name);
    let mut response = Response::json(StatusCode::OK, jsonrpc::result_bytes(id, &result));
    if let Ok(value) = HeaderValue::try_from(token) {
        response = response.with_header(session_header(), value);
    }
    response
}

/// Every request after `initialize`: the answer's body, and the work to account for.
pub(super) async fn dispatch(
    context: &Context<'_>,
    message: &Message<'_>,
) -> (Vec<u8>, Option<Work>) {
    let Some(id) = message.id else {
        return (Vec::new(), None);
    };
    match message.method.unwrap_or_default() {
        "ping" => (jsonrpc::result_bytes(id, "{}"), None),
        "tools/list" => (tools_list(context, id, message.params), None),
        "tools/call" => {
            let (body, work) = tools_call(context, id, message.params).await;
            (body, Some(work))
        }
        "logging/setLevel" => (jsonrpc::result_bytes(id, "{}"), None),
        method => (
            jsonrpc::error_bytes(
                Some(id),
                code::METHOD_NOT_FOUND,
                &format!("method `{method}` is not supported by Sluice"),
                None,
            ),
            None,
        ),
    }
}

/// A page of the caller's tools. The cursor is the catalog offset of the next page, opaque to
/// clients. Pages are cached per key, policy and catalog version unless the request narrows.
fn tools_list(context: &Context<'_>, id: &RawValue, params: Option<&RawValue>) -> Vec<u8> {
    #[derive(Deserialize)]
    struct Params {
        cursor: Option<String>,
    }
    let cursor = match params.map(|p| serde_json::from_str::<Params>(p.get())) {
        None => None,
        Some(Ok(p)) => p.cursor,
        Some(Err(e)) => {
            return jsonrpc::error_bytes(
                Some(id),
                code::INVALID_PARAMS,
                &format!("invalid tools/list params: {e}"),
                None,
            );
        }
    };
    let offset = match cursor.as_deref().map(decode_cursor) {
        None => 0,
        Some(Some(offset)) => offset,
        Some(None) => {
            return jsonrpc::error_bytes(
                Some(id),
                code::INVALID_PARAMS,
                "invalid cursor; pass the `nextCursor` of the previous page unchanged",
                None,
            );
        }
    };
    let catalog = context.endpoint.upstreams().catalog().load();
    let cache_key = context.narrowing.is_none().then(|| PageKey {
        key: context.caller.name.clone(),
        policy_version: context.policy.version,
        catalog_version: catalog.version,
        offset,
    });
    if let Some(page) = cache_key
        .as_ref()
        .and_then(|k| context.endpoint.list_cache.get(k))
    {
        return jsonrpc::result_bytes(id, &page);
    }
    let allowed = context.caller.grants.allowed(&catalog);
    let tools = catalog.tools();
    let mut page = String::with_capacity(1024);
    page.push_str("{\"tools\":[");
    let mut count = 0;
    let mut next = None;
    for (index, tool) in tools.iter().enumerate().skip(offset) {
        if !context.may_use(index, &tool.exposed_name, &allowed) {
            continue;
        }
        if count == context.policy.page_size {
            next = Some(index);
            break;
        }
        if count > 0 {
            page.push(',');
        }
        page.push_str(tool.definition.get());
        count += 1;
    }
    page.push(']');
    if let Some(next) = next {
        page.push_str(",\"nextCursor\":\"");
        page.push_str(&encode_cursor(next));
        page.push('"');
    }
    page.push('}');
    let body = jsonrpc::result_bytes(id, &page);
    if let Some(key) = cache_key {
        context.endpoint.list_cache.put(key, Arc::from(page));
    }
    body
}

fn encode_cursor(offset: usize) -> String {
    URL_SAFE_NO_PAD.encode(format!("offset:{offset}"))
}

fn decode_cursor(cursor: &str) -> Option<usize> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    std::str::from_utf8(&bytes)
        .ok()?
        .strip_prefix("offset:")?
        .parse()
        .ok()
}

/// `tools/call`: check the key's grant, find the owning upstream, rename the tool, forward,
/// pass the answer back unchanged.
async fn tools_call(
    context: &Context<'_>,
    id: &RawValue,
    params: Option<&RawValue>,
) -> (Vec<u8>, Work) {
    #[derive(Deserialize)]
    struct Params<'a> {
        #[serde(borrow)]
        name: Cow<'a, str>,
        #[serde(borrow, default)]
        arguments: Option<&'a RawValue>,
        #[serde(borrow, default, rename = "_meta")]
        meta: Option<&'a RawValue>,
    }
    let mut work = Work {
        server: None,
        tool: None,
        argument_bytes: 0,
        arguments: None,
        status: "error",
        error: None,
        upstream_time: None,
    };
    let fail = |mut work: Work, code: i32, message: String| {
        let body = jsonrpc::error_bytes(Some(id), code, &message, None);
        work.error = Some(message);
        (body, work)
    };
    let Some(params) = params else {
        return fail(
            work,
            code::INVALID_PARAMS,
            "tools/call needs params with the tool `name`".into(),
        );
    };
    let params: Params<'_> = match serde_json::from_str(params.get()) {
        Ok(p) => p,
        Err(e) => {
            return fail(
                work,
                code::INVALID_PARAMS,
                format!("invalid tools/call params: {e}"),
            );
        }
    };
    work.tool = Some(params.name.to_string());
    work.argument_bytes = params.arguments.map_or(0, |a| a.get().len());
    // Copy the arguments only when the audit log records them: not on every call.
    if context.endpoint.services.audit.include_arguments() {
        work.arguments = params.arguments.map(|a| a.to_owned());
    }
    if let Some(args) = params.arguments
        && !args.get().trim_start().starts_with('{')
    {
        return fail(
            work,
            code::INVALID_PARAMS,
            "tools/call `arguments` must be an object".into(),
        );
    }
    let catalog = context.endpoint.upstreams().catalog().load();
    let allowed = context.caller.grants.allowed(&catalog);
    let Some((index, tool)) = catalog.find(&params.name) else {
        return fail(
            work,
            code::INVALID_PARAMS,
            format!(
                "unknown tool `{}`; call tools/list for the tools available",
                params.name
            ),
        );
    };
    work.server = Some(tool.server.clone());
    if !context.may_use(index, &tool.exposed_name, &allowed) {
        work.status = "denied";
        return fail(
            work,
            code::INVALID_PARAMS,
            format!(
                "tool `{}` is not granted to key `{}`; ask the gateway's operator to add it to the key or one of its tool groups",
                params.name, context.caller.name
            ),
        );
    }
    let Some(upstream) = context.endpoint.upstreams().get(&tool.server) else {
        return fail(
            work,
            code::INTERNAL_ERROR,
            format!(
                "tool `{}` belongs to a server that is no longer configured",
                params.name
            ),
        );
    };
    let forwarded = forward_params(&tool.upstream_name, params.arguments, params.meta);
    let started = Instant::now();
    let outcome = upstream.request("tools/call", Some(&forwarded)).await;
    work.upstream_time = Some(started.elapsed());
    match outcome {
        Ok(Outcome::Result(result)) => {
            work.status = if is_error_result(&result) {
                "tool_error"
            } else {
                "ok"
            };
            (jsonrpc::result_bytes(id, result.get()), work)
        }
        Ok(Outcome::Error(error)) => {
            work.error = Some(error.get().chars().take(500).collect());
            (jsonrpc::error_object_bytes(Some(id), error.get()), work)
        }
        Err(e) => {
            let message = e.to_string();
            let body = jsonrpc::error_bytes(
                Some(id),
                code::INTERNAL_ERROR,
                &message,
                Some(&serde_json::json!({ "server": e.server() })),
            );
            work.error = Some(message);
            (body, work)
        }
    }
}

/// Whether a tool result says `isError: true` (read without building the whole value).
fn is_error_result(result: &RawValue) -> bool {
    #[derive(Deserialize)]
    struct Flag {
        #[serde(rename = "isError", default)]
        is_error: bool,
    }
    serde_json::from_str::<Flag>(result.get()).is_ok_and(|f| f.is_error)
}

/// The params sent upstream: the upstream's tool name, the caller's arguments and `_meta` as
/// they came.
pub fn forward_params(
    upstream_name: &str,
    arguments: Option<&RawValue>,
    meta: Option<&RawValue>,
) -> Box<RawValue> {
    let mut out =
        String::with_capacity(32 + upstream_name.len() + arguments.map_or(0, |a| a.get().len()));
    out.push_str("{\"name\":");
    out.push_str(&serde_json::Value::from(upstream_name).to_string());
    if let Some(arguments) = arguments {
        out.push_str(",\"arguments\":");
        out.push_str(arguments.get());
    }
    if let Some(meta) = meta {
        out.push_str(",\"_meta\":");
        out.push_str(meta.get());
    }
    out.push('}');
    // Built from valid JSON parts, so this cannot fail; fall back to a bare name regardless.
    RawValue::from_string(out).unwrap_or_else(|_| {
        serde_json::value::to_raw_value(&serde_json::json!({ "name": upstream_name }))
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip() {
        assert_eq!(decode_cursor(&encode_cursor(42)), Some(42));
        assert_eq!(decode_cursor("garbage!"), None);
    }

    #[test]
    fn forwarded_params_keep_arguments_verbatim() {
        let args = RawValue::from_string(r#"{"message": "hi" }"#.into()).unwrap();
        let p = forward_params("echo", Some(&args), None);
        assert_eq!(p.get(), r#"{"name":"echo","arguments":{"message": "hi" }}"#);
    }

    #[test]
    fn reads_is_error() {
        let r = RawValue::from_string(r#"{"content":[],"isError":true}"#.into()).unwrap();
        assert!(is_error_result(&r));
        let r =
            RawValue::from_string(r#"{"content":[{"type":"text","text":"x"}]}"#.into()).unwrap();
        assert!(!is_error_result(&r));
    }
}
