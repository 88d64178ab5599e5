//! The MCP methods `/mcp` answers itself or routes to an upstream.

use std::borrow::Cow;

use ::http::StatusCode;
use ::http::header::{HeaderName, HeaderValue};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::http::Response;
use super::transport::SESSION_HEADER;
use super::{Caller, McpEndpoint, Settings};
use crate::jsonrpc::{self, Message, code};
use crate::protocol;
use crate::upstream::Outcome;

/// `initialize`: Sluice answers as one server and opens a session.
pub(super) fn initialize(
    endpoint: &McpEndpoint,
    caller: &Caller,
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
    let result = serde_json::json!({
        "protocolVersion": version,
        "capabilities": { "tools": { "listChanged": false } },
        "serverInfo": { "name": "sluice", "title": "Sluice MCP gateway", "version": env!("CARGO_PKG_VERSION") },
        "instructions": "Sluice aggregates several MCP servers; tool names are `<server>__<tool>`."
    });
    let token = endpoint.sessions.issue(version, &caller.key_id);
    let mut response = Response::json(
        StatusCode::OK,
        jsonrpc::result_bytes(id, &result.to_string()),
    );
    if let Ok(value) = HeaderValue::try_from(token) {
        response = response.with_header(HeaderName::from_static(SESSION_HEADER), value);
    }
    response
}

/// Every request after `initialize`.
pub(super) async fn dispatch(
    endpoint: &McpEndpoint,
    settings: &Settings,
    _caller: &Caller,
    message: &Message<'_>,
) -> Response {
    let Some(id) = message.id else {
        return Response::empty(StatusCode::ACCEPTED);
    };
    let body = match message.method.unwrap_or_default() {
        "ping" => jsonrpc::result_bytes(id, "{}"),
        "tools/list" => tools_list(endpoint, settings, id, message.params),
        "tools/call" => tools_call(endpoint, id, message.params).await,
        "logging/setLevel" => jsonrpc::result_bytes(id, "{}"),
        method => jsonrpc::error_bytes(
            Some(id),
            code::METHOD_NOT_FOUND,
            &format!("method `{method}` is not supported by Sluice"),
            None,
        ),
    };
    Response::json(StatusCode::OK, body)
}

/// A page of the merged catalog. The cursor is the offset of the next page, opaque to clients.
fn tools_list(
    endpoint: &McpEndpoint,
    settings: &Settings,
    id: &RawValue,
    params: Option<&RawValue>,
) -> Vec<u8> {
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
    let catalog = endpoint.upstreams.catalog().load();
    let tools = catalog.tools();
    let start = offset.min(tools.len());
    let end = (start + settings.page_size).min(tools.len());
    let mut result = String::with_capacity(
        64 + tools[start..end]
            .iter()
            .map(|t| t.definition.get().len() + 1)
            .sum::<usize>(),
    );
    result.push_str("{\"tools\":[");
    for (i, tool) in tools[start..end].iter().enumerate() {
        if i > 0 {
            result.push(',');
        }
        result.push_str(tool.definition.get());
    }
    result.push(']');
    if end < tools.len() {
        result.push_str(",\"nextCursor\":\"");
        result.push_str(&encode_cursor(end));
        result.push('"');
    }
    result.push('}');
    jsonrpc::result_bytes(id, &result)
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

/// `tools/call`: find the owning upstream, rename the tool, forward, pass the answer back.
async fn tools_call(endpoint: &McpEndpoint, id: &RawValue, params: Option<&RawValue>) -> Vec<u8> {
    #[derive(Deserialize)]
    struct Params<'a> {
        #[serde(borrow)]
        name: Cow<'a, str>,
        #[serde(borrow, default)]
        arguments: Option<&'a RawValue>,
        #[serde(borrow, default, rename = "_meta")]
        meta: Option<&'a RawValue>,
    }
    let Some(params) = params else {
        return jsonrpc::error_bytes(
            Some(id),
            code::INVALID_PARAMS,
            "tools/call needs params with the tool `name`",
            None,
        );
    };
    let params: Params<'_> = match serde_json::from_str(params.get()) {
        Ok(p) => p,
        Err(e) => {
            return jsonrpc::error_bytes(
                Some(id),
                code::INVALID_PARAMS,
                &format!("invalid tools/call params: {e}"),
                None,
            );
        }
    };
    if let Some(args) = params.arguments
        && !args.get().trim_start().starts_with('{')
    {
        return jsonrpc::error_bytes(
            Some(id),
            code::INVALID_PARAMS,
            "tools/call `arguments` must be an object",
            None,
        );
    }
    let catalog = endpoint.upstreams.catalog().load();
    let Some(tool) = catalog.get(&params.name) else {
        return jsonrpc::error_bytes(
            Some(id),
            code::INVALID_PARAMS,
            &format!(
                "unknown tool `{}`; call tools/list for the tools available",
                params.name
            ),
            None,
        );
    };
    let Some(upstream) = endpoint.upstreams.get(&tool.server) else {
        return jsonrpc::error_bytes(
            Some(id),
            code::INTERNAL_ERROR,
            &format!(
                "tool `{}` belongs to a server that is no longer configured",
                params.name
            ),
            None,
        );
    };
    let forwarded = forward_params(&tool.upstream_name, params.arguments, params.meta);
    match upstream.request("tools/call", Some(&forwarded)).await {
        Ok(Outcome::Result(result)) => jsonrpc::result_bytes(id, result.get()),
        Ok(Outcome::Error(error)) => jsonrpc::error_object_bytes(Some(id), error.get()),
        Err(e) => jsonrpc::error_bytes(
            Some(id),
            code::INTERNAL_ERROR,
            &e.to_string(),
            Some(&serde_json::json!({ "server": e.server() })),
        ),
    }
}

/// The params sent upstream: the upstream's tool name, the caller's arguments and `_meta` as
/// they came.
fn forward_params(
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
}
