//! The fast upstream's fake Anthropic provider: `POST /v1/messages` in, Anthropic's wire
//! format out.
//!
//! A gateway benchmark needs a provider that answers at once, so that what is measured is the
//! gateway, and in the real format, so that the gateway does its real work on the answer
//! (parsing the event stream, counting usage). The answer is fixed text, not a model. A streamed
//! answer is split in two: `message_start` is sent at once and the other events after a fixed
//! delay (the HTTP layer waits), so that time to first byte and total time differ, as they do
//! with a real model. Bad input gets Anthropic's error body, never a panic.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

/// The answer's text, sent as one `text_delta` per piece when streamed.
const TEXT: [&str; 3] = ["Hello", " from the", " fake provider."];
/// Fixed token counts: the fake does not tokenize.
const INPUT_TOKENS: u64 = 12;
const OUTPUT_TOKENS: u64 = 6;

/// What the HTTP layer should send back.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// `application/json`: a Message, or an error.
    Json { status: StatusCode, body: Bytes },
    /// `200`, `text/event-stream`: `first` at once, `rest` after the stream delay.
    Stream { first: Bytes, rest: Bytes },
}

/// The fake provider: the API key it accepts and a message counter for ids.
pub struct Provider {
    api_key: String,
    messages: AtomicU64,
}

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    model: Cow<'a, str>,
    #[allow(dead_code)] // required, as by the real API; its value does not matter here
    max_tokens: u64,
    #[serde(borrow)]
    messages: &'a RawValue,
    #[serde(default)]
    stream: bool,
}

impl Provider {
    pub fn new(api_key: impl Into<String>) -> Self {
        Provider {
            api_key: api_key.into(),
            messages: AtomicU64::new(0),
        }
    }

    /// Answer one request, given its `x-api-key` and `anthropic-version` headers and its body.
    pub fn handle(&self, api_key: Option<&[u8]>, version: Option<&[u8]>, body: &[u8]) -> Answer {
        if api_key != Some(self.api_key.as_bytes()) {
            return error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid x-api-key",
            );
        }
        if version.is_none() {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "anthropic-version: header is required",
            );
        }
        let request: Request = match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    &e.to_string(),
                );
            }
        };
        if !request.messages.get().starts_with('[') {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "messages: Input should be a valid list",
            );
        }
        let n = self.messages.fetch_add(1, Ordering::Relaxed);
        let id = format!("msg_bench{n:016}");
        if request.stream {
            stream(&id, &request.model)
        } else {
            message(&id, &request.model)
        }
    }
}

fn message(id: &str, model: &str) -> Answer {
    let body = json!({
        "id": id, "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": TEXT.concat()}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS},
    });
    Answer::Json {
        status: StatusCode::OK,
        body: Bytes::from(body.to_string()),
    }
}

fn stream(id: &str, model: &str) -> Answer {
    let start = event(&json!({
        "type": "message_start",
        "message": {
            "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1},
        },
    }));
    let mut rest = event(&json!({
        "type": "content_block_start", "index": 0,
        "content_block": {"type": "text", "text": ""},
    }));
    rest += &event(&json!({"type": "ping"}));
    for text in TEXT {
        rest += &event(&json!({
            "type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": text},
        }));
    }
    rest += &event(&json!({"type": "content_block_stop", "index": 0}));
    rest += &event(&json!({
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": null},
        "usage": {"output_tokens": OUTPUT_TOKENS},
    }));
    rest += &event(&json!({"type": "message_stop"}));
    Answer::Stream {
        first: Bytes::from(start),
        rest: Bytes::from(rest),
    }
}

/// One server-sent event, named after its `type` as Anthropic names them.
fn event(data: &Value) -> String {
    format!(
        "event: {}\ndata: {data}\n\n",
        data["type"].as_str().unwrap_or("")
    )
}

fn error(status: StatusCode, kind: &str, message: &str) -> Answer {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    Answer::Json {
        status,
        body: Bytes::from(body.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str =
        r#"{"model":"claude-bench","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;
    const STREAM_BODY: &str = r#"{"model":"claude-bench","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

    fn provider() -> Provider {
        Provider::new("sk-fake")
    }

    fn json_answer(answer: Answer) -> (StatusCode, Value) {
        match answer {
            Answer::Json { status, body } => (status, serde_json::from_slice(&body).unwrap()),
            Answer::Stream { .. } => panic!("unexpected stream"),
        }
    }

    /// The `data:` of every event, checked against its `event:` line.
    fn events(text: &str) -> Vec<Value> {
        text.split_terminator("\n\n")
            .map(|block| {
                let (name, data) = block.split_once('\n').unwrap();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(name.strip_prefix("event: ").unwrap(), data["type"]);
                data
            })
            .collect()
    }

    #[test]
    fn answers_a_message_with_usage() {
        let answer = provider().handle(Some(b"sk-fake"), Some(b"2023-06-01"), BODY.as_bytes());
        let (status, body) = json_answer(answer);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["type"], "message");
        assert_eq!(body["model"], "claude-bench");
        assert_eq!(body["content"][0]["text"], "Hello from the fake provider.");
        assert_eq!(body["usage"]["output_tokens"], OUTPUT_TOKENS);
    }

    #[test]
    fn streams_message_start_first_then_the_rest() {
        let answer = provider().handle(
            Some(b"sk-fake"),
            Some(b"2023-06-01"),
            STREAM_BODY.as_bytes(),
        );
        let Answer::Stream { first, rest } = answer else {
            panic!("not a stream")
        };
        let first = events(std::str::from_utf8(&first).unwrap());
        assert_eq!(first.len(), 1);
        assert_eq!(first[0]["type"], "message_start");
        assert_eq!(first[0]["message"]["model"], "claude-bench");
        let rest = events(std::str::from_utf8(&rest).unwrap());
        let types: Vec<&str> = rest.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(rest[6]["usage"]["output_tokens"], OUTPUT_TOKENS);
    }

    #[test]
    fn refuses_a_wrong_key_a_missing_version_and_bad_bodies() {
        let p = provider();
        let refused = |key: Option<&str>, version: Option<&str>, body: &str| {
            let answer = p.handle(
                key.map(str::as_bytes),
                version.map(str::as_bytes),
                body.as_bytes(),
            );
            let (status, answer) = json_answer(answer);
            assert_eq!(answer["type"], "error", "{body}");
            status
        };
        let (key, v) = (Some("sk-fake"), Some("2023-06-01"));
        let unauthorized = StatusCode::UNAUTHORIZED;
        assert_eq!(refused(Some("bench-key"), v, BODY), unauthorized);
        assert_eq!(refused(None, v, BODY), unauthorized);
        assert_eq!(refused(key, None, BODY), StatusCode::BAD_REQUEST);
        assert_eq!(refused(key, v, "{"), StatusCode::BAD_REQUEST);
        let not_a_list = r#"{"model":"m","max_tokens":1,"messages":"x"}"#;
        assert_eq!(refused(key, v, not_a_list), StatusCode::BAD_REQUEST);
    }
}
