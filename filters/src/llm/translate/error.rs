//! Error bodies in the client's format, from a provider's error (any bytes) or Sluice's own.
//!
//! Clients key their retries on the status and the error type, so the type follows the status;
//! the provider's message is kept (cut short) because it is what a person acts on.

use serde_json::{Value, json};

use super::Format;

/// Longest message kept from a provider's error body.
const MAX_MESSAGE: usize = 1024;

/// A provider error body (any bytes, maybe not JSON) and its HTTP status, as the client's error
/// body. When the provider already speaks the client's format and sent a proper error object,
/// the body is passed on as it is.
pub fn error_body(status: u16, body: &[u8], from: Format, to: Format) -> Vec<u8> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    if from == to
        && body.len() <= 64 * 1024
        && let Some(v) = &parsed
        && v.get("error").is_some_and(Value::is_object)
    {
        return body.to_vec();
    }
    let message = parsed
        .as_ref()
        .and_then(message_of)
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    let message = if message.is_empty() {
        format!("the provider answered with status {status}")
    } else {
        message
    };
    let code = parsed
        .as_ref()
        .and_then(|v| v.pointer("/error/code"))
        .cloned()
        .unwrap_or(Value::Null);
    build(to, status, cut(&message), code)
}

/// The HTTP status to give a client of `to` for a provider's `status`: Anthropic's 529
/// (overloaded) is not an OpenAI status, and OpenAI clients retry a 503.
pub fn client_status(status: u16, to: Format) -> u16 {
    match (status, to) {
        (529, Format::OpenAi) => 503,
        _ => status,
    }
}

/// An error body of `format` for Sluice's own errors.
pub fn error_message(format: Format, status: u16, message: &str) -> Vec<u8> {
    build(format, status, cut(message), Value::Null)
}

fn build(format: Format, status: u16, message: &str, code: Value) -> Vec<u8> {
    let body = match format {
        Format::Anthropic => json!({
            "type": "error",
            "error": {"type": anthropic_type(status), "message": message},
        }),
        Format::OpenAi => json!({
            "error": {"message": message, "type": openai_type(status), "param": null, "code": code},
        }),
    };
    body.to_string().into_bytes()
}

/// The message of an error body in either format, or of common other shapes.
fn message_of(v: &Value) -> Option<String> {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    text(v.pointer("/error/message"))
        .or_else(|| text(v.get("error")))
        .or_else(|| text(v.get("message")))
        .or_else(|| text(v.get("detail")))
        .or_else(|| (!v.is_null()).then(|| v.to_string()))
}

/// `message` cut to [`MAX_MESSAGE`] bytes, at a character boundary.
fn cut(message: &str) -> &str {
    if message.len() <= MAX_MESSAGE {
        return message;
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// Anthropic's error type for an HTTP status.
pub(crate) fn anthropic_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// OpenAI's error type for an HTTP status.
fn openai_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(b: Vec<u8>) -> Value {
        serde_json::from_slice(&b).unwrap()
    }

    #[test]
    fn openai_error_to_anthropic() {
        let body = br#"{"error":{"message":"Rate limit reached for gpt-4o","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        let v = parse(error_body(429, body, Format::OpenAi, Format::Anthropic));
        assert_eq!(
            v,
            json!({"type":"error","error":{"type":"rate_limit_error","message":"Rate limit reached for gpt-4o"}})
        );
    }

    #[test]
    fn anthropic_error_to_openai() {
        let body =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let v = parse(error_body(529, body, Format::Anthropic, Format::OpenAi));
        assert_eq!(v["error"]["message"], "Overloaded");
        assert_eq!(v["error"]["type"], "overloaded_error");
        assert_eq!(v["error"]["code"], Value::Null);
    }

    #[test]
    fn status_decides_the_type() {
        for (status, t) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (429, "rate_limit_error"),
            (503, "overloaded_error"),
            (529, "overloaded_error"),
            (500, "api_error"),
            (502, "api_error"),
        ] {
            let v = parse(error_message(Format::Anthropic, status, "x"));
            assert_eq!(v["error"]["type"], t, "{status}");
        }
    }

    #[test]
    fn not_json_and_empty_and_long() {
        let v = parse(error_body(
            502,
            b"<html>Bad Gateway</html>\n",
            Format::OpenAi,
            Format::Anthropic,
        ));
        assert_eq!(v["error"]["message"], "<html>Bad Gateway</html>");
        assert_eq!(v["error"]["type"], "api_error");
        let v = parse(error_body(500, b"", Format::Anthropic, Format::OpenAi));
        assert_eq!(
            v["error"]["message"],
            "the provider answered with status 500"
        );
        let long = "é".repeat(2000);
        let v = parse(error_body(
            400,
            long.as_bytes(),
            Format::OpenAi,
            Format::OpenAi,
        ));
        let m = v["error"]["message"].as_str().unwrap();
        assert!(m.len() <= MAX_MESSAGE && m.len() > MAX_MESSAGE - 4);
        let v = parse(error_body(400, b"\xff\xfe", Format::OpenAi, Format::OpenAi));
        assert!(v["error"]["message"].is_string());
    }

    #[test]
    fn overloaded_status_for_openai_clients() {
        assert_eq!(client_status(529, Format::OpenAi), 503);
        assert_eq!(client_status(529, Format::Anthropic), 529);
        assert_eq!(client_status(429, Format::OpenAi), 429);
    }

    #[test]
    fn same_format_passes_through() {
        let body = br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too big"}}"#;
        assert_eq!(
            error_body(400, body, Format::Anthropic, Format::Anthropic),
            body.to_vec()
        );
    }
}
