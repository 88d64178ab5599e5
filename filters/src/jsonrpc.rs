//! JSON-RPC 2.0 framing: parse an incoming message without copying what is only forwarded,
//! and write answers as bytes.
//!
//! `params`, `result` and `error` stay [`RawValue`]s: Sluice routes on the method and a few
//! fields and passes everything else through byte for byte, so a tool result comes back exactly
//! as the upstream wrote it.

use serde::Deserialize;
use serde_json::value::RawValue;

/// Standard JSON-RPC error codes, plus the ones MCP uses.
pub mod code {
    pub const PARSE_ERROR: i32 = -32700;
    pub const INVALID_REQUEST: i32 = -32600;
    pub const METHOD_NOT_FOUND: i32 = -32601;
    pub const INVALID_PARAMS: i32 = -32602;
    pub const INTERNAL_ERROR: i32 = -32603;
    /// The client cancelled the request (or went away) before its answer.
    pub const REQUEST_CANCELLED: i32 = -32800;
}

/// One incoming JSON-RPC message, borrowing from the request body.
#[derive(Debug)]
pub struct Message<'a> {
    /// The request id, verbatim; `None` for notifications and responses.
    pub id: Option<&'a RawValue>,
    /// `None` for a response (a client answering a server request).
    pub method: Option<&'a str>,
    pub params: Option<&'a RawValue>,
    /// A response's `result` (a client answering a server request).
    pub result: Option<&'a RawValue>,
    /// A response's `error`.
    pub error: Option<&'a RawValue>,
}

impl Message<'_> {
    /// A request expects an answer; notifications and responses do not.
    pub fn is_request(&self) -> bool {
        self.id.is_some() && self.method.is_some()
    }
}

/// Why a body is not a usable JSON-RPC message.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("the body is not valid JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("the body is JSON but not a JSON-RPC 2.0 message: {0}")]
    NotJsonRpc(&'static str),
    #[error("the body nests arrays and objects deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// The deepest nesting of arrays and objects accepted in a message: far beyond any tool's
/// arguments, and short of what would make a parser, here or upstream, recurse without end.
pub const MAX_DEPTH: usize = 100;

impl ParseError {
    pub fn code(&self) -> i32 {
        match self {
            ParseError::NotJson(_) | ParseError::TooDeep => code::PARSE_ERROR,
            ParseError::NotJsonRpc(_) => code::INVALID_REQUEST,
        }
    }
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    jsonrpc: Option<&'a str>,
    /// `Some("null")` for `"id": null`, which is not a notification but a mistake.
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<&'a str>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

/// `text` cut to `max` characters for echoing in an error message (clients can send anything
/// as a method name or version, and a message should stay a sentence).
pub fn shorten(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(text),
        Some((cut, _)) => std::borrow::Cow::Owned(format!("{}…", &text[..cut])),
    }
}

/// A member that is present, `null` included.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Whether `json` nests arrays and objects deeper than `max` (strings are skipped).
pub fn nests_deeper_than(json: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Parse one JSON-RPC message from `body`.
pub fn parse(body: &[u8]) -> Result<Message<'_>, ParseError> {
    // The usual body, a JSON object, is read once, straight into its members; any other is
    // read again only to say what is wrong with it. (The object check comes first: serde
    // would also read a struct from an array, by position.)
    let object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let wire = match object.then(|| serde_json::from_slice::<Wire<'_>>(body)) {
        Some(Ok(wire)) => wire,
        _ => return Err(what_is_wrong(body)),
    };
    if nests_deeper_than(body, MAX_DEPTH) {
        return Err(ParseError::TooDeep);
    }
    if wire.jsonrpc != Some("2.0") {
        return Err(ParseError::NotJsonRpc("`jsonrpc` must be \"2.0\""));
    }
    if let Some(id) = wire.id {
        let t = id.get().as_bytes().first().copied().unwrap_or(b'n');
        if !(t == b'"' || t == b'-' || t.is_ascii_digit()) {
            return Err(ParseError::NotJsonRpc(
                "`id` must be a string or a number (not null)",
            ));
        }
    }
    if wire.method.is_none() && wire.result.is_none() && wire.error.is_none() {
        return Err(ParseError::NotJsonRpc(
            "a message needs a `method` (request or notification) or a `result`/`error` (response)",
        ));
    }
    Ok(Message {
        id: wire.id,
        method: wire.method,
        params: wire.params,
        result: wire.result,
        error: wire.error,
    })
}

/// Why `body`, which is not a JSON object with members of the right types, cannot be parsed:
/// "not JSON" and "JSON of the wrong shape" each get their own error code.
fn what_is_wrong(body: &[u8]) -> ParseError {
    let raw: &RawValue = match serde_json::from_slice(body) {
        Ok(raw) => raw,
        Err(e) => return ParseError::NotJson(e),
    };
    if nests_deeper_than(raw.get().as_bytes(), MAX_DEPTH) {
        return ParseError::TooDeep;
    }
    let text = raw.get().trim_start();
    if text.starts_with('[') {
        return ParseError::NotJsonRpc(
            "batches are not supported; send one JSON-RPC message per request",
        );
    }
    if !text.starts_with('{') {
        return ParseError::NotJsonRpc("a JSON-RPC message is a JSON object");
    }
    ParseError::NotJsonRpc("`jsonrpc`, `id`, `method` have the wrong types")
}

/// `{"jsonrpc":"2.0","id":<id>,"result":<result>}` where `result` is already serialized.
pub fn result_bytes(id: &RawValue, result: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + id.get().len() + result.len());
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.get().as_bytes());
    out.extend_from_slice(b",\"result\":");
    out.extend_from_slice(result.as_bytes());
    out.push(b'}');
    out
}

/// An error answer; `id` is `null` when the request's id could not be read.
pub fn error_bytes(
    id: Option<&RawValue>,
    code: i32,
    message: &str,
    data: Option<&serde_json::Value>,
) -> Vec<u8> {
    let mut error = serde_json::json!({ "code": code, "message": message });
    if let Some(data) = data {
        error["data"] = data.clone();
    }
    error_object_bytes(id, &error.to_string())
}

/// An error answer whose error object is already serialized (an upstream's, passed through).
pub fn error_object_bytes(id: Option<&RawValue>, error: &str) -> Vec<u8> {
    let id = id.map(RawValue::get).unwrap_or("null");
    let mut out = Vec::with_capacity(40 + id.len() + error.len());
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b",\"error\":");
    out.extend_from_slice(error.as_bytes());
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_and_null_ids_are_refused() {
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"x","params":{}1{}}}"#,
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        assert!(matches!(parse(deep.as_bytes()), Err(ParseError::TooDeep)));
        // Brackets inside strings do not count.
        let quoted = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"x","params":{{"a":"{}\"["}}}}"#,
            "[".repeat(500)
        );
        assert!(parse(quoted.as_bytes()).is_ok(), "{quoted}");
        let null = parse(br#"{"jsonrpc":"2.0","id":null,"method":"x"}"#);
        assert_eq!(null.err().map(|e| e.code()), Some(code::INVALID_REQUEST));
        let notification = parse(br#"{"jsonrpc":"2.0","method":"x"}"#).unwrap();
        assert!(!notification.is_request());
    }

    #[test]
    fn parses_request_and_keeps_params_raw() {
        let m = parse(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"a","arguments":{"x": 1}}}"#).unwrap();
        assert!(m.is_request());
        assert_eq!(m.id.unwrap().get(), "7");
        assert_eq!(
            m.params.unwrap().get(),
            r#"{"name":"a","arguments":{"x": 1}}"#
        );
    }

    #[test]
    fn tells_parse_errors_from_invalid_requests() {
        assert_eq!(parse(b"{nope").unwrap_err().code(), code::PARSE_ERROR);
        assert_eq!(
            parse(br#"{"foo":1}"#).unwrap_err().code(),
            code::INVALID_REQUEST
        );
        assert_eq!(
            parse(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#)
                .unwrap_err()
                .code(),
            code::INVALID_REQUEST
        );
        assert_eq!(
            parse(br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#)
                .unwrap_err()
                .code(),
            code::INVALID_REQUEST
        );
        assert_eq!(
            parse(br#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#)
                .unwrap_err()
                .code(),
            code::INVALID_REQUEST
        );
    }

    #[test]
    fn only_an_object_is_a_message() {
        // serde would read the struct from an array by position.
        let by_position = parse(br#"["2.0", 1, "ping"]"#);
        assert_eq!(
            by_position.err().map(|e| e.code()),
            Some(code::INVALID_REQUEST)
        );
        assert_eq!(
            parse(b"  \"text\"").unwrap_err().code(),
            code::INVALID_REQUEST
        );
        assert_eq!(
            parse(br#"{"jsonrpc":"2.0","id":1,"method":"ping"} x"#)
                .unwrap_err()
                .code(),
            code::PARSE_ERROR
        );
        let spaced = parse(b" \n{\"jsonrpc\":\"2.0\",\"id\":\"a\",\"method\":\"ping\"}\n").unwrap();
        assert_eq!(spaced.method, Some("ping"));
    }

    #[test]
    fn notification_is_not_a_request() {
        let m = parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert!(!m.is_request());
    }

    #[test]
    fn writes_answers() {
        let id = RawValue::from_string("\"a\"".into()).unwrap();
        assert_eq!(
            result_bytes(&id, "{}"),
            br#"{"jsonrpc":"2.0","id":"a","result":{}}"#
        );
        let e = error_bytes(None, -32700, "bad", None);
        let v: serde_json::Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(v["error"]["code"], -32700);
        assert!(v["id"].is_null());
    }
}
