//! Speaking MCP 2026-07-28 (stateless) to an upstream that offers it: how Sluice finds out
//! (`server/discover` first, as the specification's backward-compatibility section asks), how
//! each request carries its version and capabilities (`_meta`, `MCP-Protocol-Version`,
//! `Mcp-Method`, `Mcp-Name`), and how an upstream's `InputRequiredResult` is read, so that the
//! connection can put its questions to the calling client and retry with the answers.

use base64::Engine;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The stateless version Sluice speaks upstream.
pub const VERSION: &str = "2026-07-28";
const CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";

/// The `_meta` every stateless request of Sluice's carries: its version, and every client
/// capability (Sluice relays the questions to its own client, or answers them itself).
fn meta() -> Value {
    serde_json::json!({
        "io.modelcontextprotocol/protocolVersion": VERSION,
        "io.modelcontextprotocol/clientCapabilities": {
            "sampling": {}, "elicitation": { "form": {}, "url": {} }, "roots": {}
        },
        "io.modelcontextprotocol/clientInfo": {
            "name": "sluice", "version": env!("CARGO_PKG_VERSION")
        },
    })
}

/// `params` with Sluice's `_meta` merged in (the caller's own `_meta` keys, such as a
/// progress token, stay).
pub fn params(params: Option<&RawValue>) -> Box<RawValue> {
    let mut object: Map<String, Value> = params
        .and_then(|p| serde_json::from_str(p.get()).ok())
        .unwrap_or_default();
    let mut meta_object = match object.remove("_meta") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    // Extensions the client declared (the tasks extension) stay declared upstream.
    let extensions = meta_object
        .get(CAPABILITIES)
        .and_then(|c| c.get("extensions"))
        .cloned();
    if let Value::Object(ours) = meta() {
        meta_object.extend(ours);
    }
    if let (Some(extensions), Some(Value::Object(capabilities))) =
        (extensions, meta_object.get_mut(CAPABILITIES))
    {
        capabilities.insert("extensions".into(), extensions);
    }
    object.insert("_meta".into(), Value::Object(meta_object));
    serde_json::value::to_raw_value(&object).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// The keys of a 2026-07-28 client's request envelope. A session-era upstream has its
/// session for them, and some refuse requests that carry them.
const ENVELOPE_KEYS: [&str; 4] = [
    "io.modelcontextprotocol/protocolVersion",
    CAPABILITIES,
    "io.modelcontextprotocol/clientInfo",
    "io.modelcontextprotocol/logLevel",
];

/// `params` without a stateless client's envelope in `_meta`, for an upstream Sluice speaks
/// to in a session; `None` when there is nothing to remove (the common case, decided without
/// parsing).
pub fn without_envelope(params: Option<&RawValue>) -> Option<Box<RawValue>> {
    let text = params?.get();
    if !text.contains("io.modelcontextprotocol/") {
        return None;
    }
    let mut object: Map<String, Value> = serde_json::from_str(text).ok()?;
    let Some(Value::Object(meta)) = object.get_mut("_meta") else {
        return None;
    };
    let before = meta.len();
    meta.retain(|key, _| !ENVELOPE_KEYS.contains(&key.as_str()));
    if meta.len() == before {
        return None;
    }
    if meta.is_empty() {
        object.remove("_meta");
    }
    serde_json::value::to_raw_value(&object).ok()
}

/// The `Mcp-Name` header of a request: the tool or prompt name, or the resource URI.
pub fn name_header(method: &str, params: Option<&RawValue>) -> Option<String> {
    let field = match method {
        "tools/call" | "prompts/get" => "name",
        "resources/read" => "uri",
        "tasks/get" | "tasks/update" | "tasks/cancel" => "taskId",
        _ => return None,
    };
    let value: Value = serde_json::from_str(params?.get()).ok()?;
    let name = value.get(field)?.as_str()?;
    Some(header_value(name))
}

/// A header value as the specification writes it: as is, or `=?base64?...?=` when it holds
/// anything but visible ASCII or has spaces at its ends.
fn header_value(value: &str) -> String {
    let plain = value.bytes().all(|b| (0x20..0x7f).contains(&b))
        && value.trim() == value
        && !value.starts_with("=?base64?");
    if plain {
        value.to_string()
    } else {
        format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode(value)
        )
    }
}

/// An upstream's `InputRequiredResult`: its questions by key, and its state to send back.
#[derive(Debug)]
pub struct InputRequired {
    pub requests: Vec<(String, String, Option<Box<RawValue>>)>,
    pub state: Option<String>,
}

/// Read `result` as an `InputRequiredResult`, if it is one.
pub fn input_required(result: &RawValue) -> Option<InputRequired> {
    if !result.get().contains("input_required") {
        return None;
    }
    let value: Value = serde_json::from_str(result.get()).ok()?;
    if value.get("resultType")?.as_str()? != "input_required" {
        return None;
    }
    let mut requests = Vec::new();
    if let Some(asked) = value.get("inputRequests").and_then(Value::as_object) {
        for (key, request) in asked {
            let method = request.get("method").and_then(Value::as_str).unwrap_or("");
            let params = request
                .get("params")
                .and_then(|p| serde_json::value::to_raw_value(p).ok());
            requests.push((key.clone(), method.to_string(), params));
        }
    }
    Some(InputRequired {
        requests,
        state: value
            .get("requestState")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// The retry of a request: its params with the answers and the state.
pub fn retry(params: &RawValue, answers: Map<String, Value>, state: Option<&str>) -> Box<RawValue> {
    let mut object: Map<String, Value> = serde_json::from_str(params.get()).unwrap_or_default();
    object.insert("inputResponses".into(), Value::Object(answers));
    match state {
        Some(state) => {
            object.insert("requestState".into(), Value::from(state));
        }
        None => {
            object.remove("requestState");
        }
    }
    serde_json::value::to_raw_value(&object).unwrap_or_else(|_| params.to_owned())
}

/// Whether a `server/discover` result says the upstream speaks [`VERSION`].
pub fn speaks(result: &RawValue) -> bool {
    serde_json::from_str::<Value>(result.get())
        .ok()
        .and_then(|v| v.get("supportedVersions").cloned())
        .and_then(|v| v.as_array().cloned())
        .is_some_and(|versions| versions.iter().any(|v| v.as_str() == Some(VERSION)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_upstream_gets_no_envelope() {
        let p = RawValue::from_string(
            r#"{"name":"x","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"progressToken":1}}"#.into(),
        )
        .unwrap();
        let stripped = without_envelope(Some(&p)).unwrap();
        assert_eq!(
            stripped.get(),
            r#"{"_meta":{"progressToken":1},"name":"x"}"#
        );
        let plain = RawValue::from_string(r#"{"name":"x"}"#.into()).unwrap();
        assert!(without_envelope(Some(&plain)).is_none());
    }

    #[test]
    fn merges_meta_and_reads_input_required() {
        let p =
            RawValue::from_string(r#"{"name":"x","_meta":{"progressToken":3}}"#.into()).unwrap();
        let merged: Value = serde_json::from_str(params(Some(&p)).get()).unwrap();
        assert_eq!(merged["_meta"]["progressToken"], 3);
        assert_eq!(
            merged["_meta"]["io.modelcontextprotocol/protocolVersion"],
            VERSION
        );
        assert_eq!(name_header("tools/call", Some(&p)).as_deref(), Some("x"));
        assert_eq!(header_value("héllo"), "=?base64?aMOpbGxv?=");

        let r = RawValue::from_string(
            r#"{"resultType":"input_required","inputRequests":{"who":{"method":"elicitation/create","params":{"message":"name?"}}},"requestState":"s1"}"#.into(),
        )
        .unwrap();
        let ir = input_required(&r).unwrap();
        assert_eq!(ir.requests[0].0, "who");
        assert_eq!(ir.state.as_deref(), Some("s1"));
        let again = retry(&p, Map::new(), ir.state.as_deref());
        assert!(again.get().contains("\"requestState\":\"s1\""));
        let done =
            RawValue::from_string(r#"{"resultType":"complete","content":[]}"#.into()).unwrap();
        assert!(input_required(&done).is_none());
    }
}
