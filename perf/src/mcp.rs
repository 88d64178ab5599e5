//! The fast upstream's MCP answers: JSON-RPC in, bytes out.
//!
//! Everything that does not depend on the request (the `tools/list` result, the 100 KB
//! `tools/call` result) is serialized once at start, so that an answer costs a parse of the
//! request and one copy. Bad input never panics: it gets a JSON-RPC error, because a fixture
//! that crashes under load would read as a gateway failure.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::catalog;

/// Protocol version answered when the client asks for none.
pub const PROTOCOL_VERSION: &str = "2025-11-25";

/// JSON-RPC error codes used here.
const PARSE_ERROR: i64 = -32700;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;

/// What the HTTP layer should send back.
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// A JSON body; `session_id` goes into an `Mcp-Session-Id` header (set on `initialize`).
    Json {
        status: StatusCode,
        body: Bytes,
        session_id: Option<String>,
    },
    /// `202 Accepted` with no body: the answer to a notification.
    Accepted,
}

/// The upstream's state: precomputed answers and a session counter.
pub struct Server {
    tools_list_result: String,
    large_call_result: String,
    tool_names: HashSet<String>,
    sessions: AtomicU64,
}

#[derive(Deserialize)]
struct Request<'a> {
    /// Absent (or null) on notifications. Kept raw so that it is echoed byte for byte.
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct CallParams<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default)]
    arguments: Map<String, Value>,
}

#[derive(Deserialize)]
struct InitializeParams<'a> {
    #[serde(borrow, rename = "protocolVersion")]
    protocol_version: Option<Cow<'a, str>>,
}

impl Server {
    /// An upstream serving a catalog of `tools` tools (see [`catalog::tools`]).
    pub fn new(tools: usize) -> Server {
        let tools = catalog::tools(tools);
        let tool_names = tools
            .iter()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect();
        Server {
            tools_list_result: json!({ "tools": tools }).to_string(),
            large_call_result: text_result(&catalog::large_text()),
            tool_names,
            sessions: AtomicU64::new(0),
        }
    }

    /// Size in bytes of the serialized `tools/list` result.
    pub fn tools_list_bytes(&self) -> usize {
        self.tools_list_result.len()
    }

    /// Answer one POSTed JSON-RPC message.
    pub fn handle(&self, body: &[u8]) -> Reply {
        let request: Request = match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(e) => {
                return Reply::Json {
                    status: StatusCode::BAD_REQUEST,
                    body: error(None, PARSE_ERROR, &format!("not a JSON-RPC request: {e}")),
                    session_id: None,
                };
            }
        };
        let Some(id) = request.id else {
            // notifications/initialized, notifications/cancelled, ...: nothing to answer.
            return Reply::Accepted;
        };
        let mut session_id = None;
        let body = match request.method.as_ref() {
            "initialize" => {
                let n = self.sessions.fetch_add(1, Ordering::Relaxed);
                session_id = Some(format!("perf-upstream-{n}"));
                let asked = request
                    .params
                    .and_then(|p| serde_json::from_str::<InitializeParams>(p.get()).ok())
                    .and_then(|p| p.protocol_version);
                let result = json!({
                    "protocolVersion": asked.as_deref().unwrap_or(PROTOCOL_VERSION),
                    "capabilities": { "tools": { "listChanged": false } },
                    "serverInfo": { "name": "perf-upstream", "version": env!("CARGO_PKG_VERSION") }
                });
                success(id, &result.to_string())
            }
            "ping" => success(id, "{}"),
            "tools/list" => success(id, &self.tools_list_result),
            "tools/call" => self.call(id, request.params),
            other => error(
                Some(id),
                METHOD_NOT_FOUND,
                &format!("method not found: {other}"),
            ),
        };
        Reply::Json {
            status: StatusCode::OK,
            body,
            session_id,
        }
    }

    fn call(&self, id: &RawValue, params: Option<&RawValue>) -> Bytes {
        let params = match params.map(|p| serde_json::from_str::<CallParams>(p.get())) {
            Some(Ok(params)) => params,
            Some(Err(e)) => return error(Some(id), INVALID_PARAMS, &format!("bad params: {e}")),
            None => return error(Some(id), INVALID_PARAMS, "tools/call needs params.name"),
        };
        match params.name.as_ref() {
            catalog::LARGE => success(id, &self.large_call_result),
            catalog::SMALL => {
                let text = params.arguments.get("text").and_then(Value::as_str);
                success(id, &text_result(&format!("echo: {}", text.unwrap_or(""))))
            }
            name if self.tool_names.contains(name) => success(id, &text_result("ok")),
            name => error(Some(id), INVALID_PARAMS, &format!("unknown tool: {name}")),
        }
    }
}

/// A `tools/call` result with one text block, serialized.
fn text_result(text: &str) -> String {
    json!({ "content": [{ "type": "text", "text": text }], "isError": false }).to_string()
}

/// `{"jsonrpc":"2.0","id":ID,"result":RESULT}` by concatenation: `result` is already JSON.
fn success(id: &RawValue, result: &str) -> Bytes {
    const HEAD: &[u8] = br#"{"jsonrpc":"2.0","id":"#;
    const MID: &[u8] = br#","result":"#;
    let mut out = Vec::with_capacity(HEAD.len() + id.get().len() + MID.len() + result.len() + 1);
    out.extend_from_slice(HEAD);
    out.extend_from_slice(id.get().as_bytes());
    out.extend_from_slice(MID);
    out.extend_from_slice(result.as_bytes());
    out.push(b'}');
    Bytes::from(out)
}

fn error(id: Option<&RawValue>, code: i64, message: &str) -> Bytes {
    let body = json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": { "code": code, "message": message }
    });
    Bytes::from(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(server: &Server, request: &str) -> (StatusCode, Value, Option<String>) {
        match server.handle(request.as_bytes()) {
            Reply::Json {
                status,
                body,
                session_id,
            } => (status, serde_json::from_slice(&body).unwrap(), session_id),
            Reply::Accepted => panic!("unexpected 202 for {request}"),
        }
    }

    #[test]
    fn initialize_gives_a_session_and_echoes_the_version() {
        let server = Server::new(10);
        let (status, body, session) = answer(
            &server,
            r#"{"jsonrpc":"2.0","id":"a","method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#,
        );
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["id"], "a");
        assert_eq!(body["result"]["protocolVersion"], "2025-06-18");
        assert!(session.is_some());
    }

    #[test]
    fn notifications_are_accepted() {
        let server = Server::new(10);
        let reply = server.handle(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!(reply, Reply::Accepted);
    }

    #[test]
    fn tools_list_returns_the_whole_catalog() {
        let server = Server::new(500);
        let (_, body, _) = answer(&server, r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#);
        assert_eq!(body["id"], 7);
        assert_eq!(body["result"]["tools"].as_array().unwrap().len(), 500);
    }

    #[test]
    fn small_echoes_and_large_is_100_kb() {
        let server = Server::new(10);
        let (_, small, _) = answer(
            &server,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"small","arguments":{"text":"hi"}}}"#,
        );
        assert_eq!(small["result"]["content"][0]["text"], "echo: hi");
        let (_, large, _) = answer(
            &server,
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"large"}}"#,
        );
        let text = large["result"]["content"][0]["text"].as_str().unwrap();
        assert_eq!(text.len(), catalog::LARGE_RESULT_BYTES);
    }

    #[test]
    fn bad_input_gets_json_rpc_errors() {
        let server = Server::new(10);
        let (status, body, _) = answer(&server, "{not json");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], PARSE_ERROR);
        let (_, body, _) = answer(&server, r#"{"jsonrpc":"2.0","id":1,"method":"nope"}"#);
        assert_eq!(body["error"]["code"], METHOD_NOT_FOUND);
        let (_, body, _) = answer(&server, r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#);
        assert_eq!(body["error"]["code"], INVALID_PARAMS);
        let (_, body, _) = answer(
            &server,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"missing"}}"#,
        );
        assert_eq!(body["error"]["code"], INVALID_PARAMS);
    }
}
