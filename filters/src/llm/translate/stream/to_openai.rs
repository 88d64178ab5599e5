//! Anthropic events → OpenAI chunks.
//!
//! Each Anthropic `tool_use` block becomes a tool call with the next tool call index; text
//! deltas become `content`; thinking is dropped. Usage is always sent in a last chunk with no
//! choices (Sluice meters the client's side of the stream), then `[DONE]`.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::super::sse::{self, Event, SseParser};
use super::super::{nonce, now, stop};

#[derive(Debug)]
pub(crate) struct ToOpenAi {
    parser: SseParser,
    model: String,
    pub(super) nonce: String,
    pub(super) created: u64,
    id: Option<String>,
    role_sent: bool,
    /// Anthropic block index → OpenAI tool call index, for the tool_use blocks.
    tools: HashMap<u64, u64>,
    /// Anthropic usage fields, the latest non-zero value of each.
    usage: Value,
    finish_reason: Option<&'static str>,
    pub(super) done: bool,
}

const USAGE_FIELDS: [&str; 4] = [
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
];

impl ToOpenAi {
    pub(crate) fn new(model: &str) -> Self {
        ToOpenAi {
            parser: SseParser::new(),
            model: model.to_owned(),
            nonce: nonce(),
            created: now(),
            id: None,
            role_sent: false,
            tools: HashMap::new(),
            usage: json!({}),
            finish_reason: None,
            done: false,
        }
    }

    pub(crate) fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let events = self.parser.push(chunk);
        self.take(events, out);
    }

    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        let events = self.parser.finish();
        self.take(events, out);
        if self.done {
            return;
        }
        if self.finish_reason.is_some() {
            // message_delta came but not message_stop: the answer is complete.
            self.end(out);
        } else {
            self.fail(
                out,
                "the provider's stream ended before the response was complete",
                "server_error",
            );
        }
    }

    fn take(&mut self, events: Vec<Result<Event, sse::SseError>>, out: &mut Vec<u8>) {
        for event in events {
            if self.done {
                return;
            }
            match event {
                Ok(event) => self.event(&event, out),
                Err(e @ sse::SseError::TooLarge { .. }) => {
                    self.fail(out, &e.to_string(), "server_error")
                }
                Err(e) => tracing::debug!(error = %e, "skipped an unreadable stream event"),
            }
        }
    }

    fn event(&mut self, event: &Event, out: &mut Vec<u8>) {
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
            tracing::debug!("skipped a stream event that is not JSON");
            return;
        };
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(event.event.as_str());
        match kind {
            "message_start" => {
                let message = data.get("message").unwrap_or(&Value::Null);
                if let Some(id) = message.get("id").and_then(Value::as_str) {
                    self.id = Some(id.to_owned());
                }
                self.add_usage(message.get("usage"));
                self.role(out);
            }
            "content_block_start" => self.block_start(&data, out),
            "content_block_delta" => self.block_delta(&data, out),
            "message_delta" => {
                self.add_usage(data.get("usage"));
                let reason = data
                    .pointer("/delta/stop_reason")
                    .and_then(Value::as_str)
                    .map_or("stop", stop::to_openai);
                self.finish_reason = Some(reason);
                self.chunk(out, json!({}), json!(reason));
            }
            "message_stop" => self.end(out),
            "error" => {
                let error = data.get("error").unwrap_or(&Value::Null);
                let message = error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("the provider reported an error");
                let kind = error
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("server_error")
                    .to_owned();
                self.fail(out, message, &kind);
            }
            // ping, content_block_stop, and anything new.
            _ => {}
        }
    }

    fn block_start(&mut self, data: &Value, out: &mut Vec<u8>) {
        let block = data.get("content_block").unwrap_or(&Value::Null);
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = block.get("text").and_then(Value::as_str).unwrap_or("");
                if !text.is_empty() {
                    self.chunk(out, json!({"content": text}), Value::Null);
                }
            }
            Some("tool_use") => {
                let call = self.tools.len() as u64;
                self.tools.insert(index, call);
                let id = block.get("id").and_then(Value::as_str).unwrap_or_default();
                let name = block
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                self.chunk(
                    out,
                    json!({"tool_calls": [{"index": call, "id": id, "type": "function",
                                          "function": {"name": name, "arguments": ""}}]}),
                    Value::Null,
                );
                // Input is normally streamed; a provider may put it all here instead.
                if let Some(input) = block.get("input").and_then(Value::as_object)
                    && !input.is_empty()
                {
                    let arguments = Value::Object(input.clone()).to_string();
                    self.arguments(out, call, &arguments);
                }
            }
            _ => {}
        }
    }

    fn block_delta(&mut self, data: &Value, out: &mut Vec<u8>) {
        let delta = data.get("delta").unwrap_or(&Value::Null);
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
        match delta.get("type").and_then(Value::as_str) {
            Some("text_delta") => {
                let text = delta.get("text").and_then(Value::as_str).unwrap_or("");
                if !text.is_empty() {
                    self.chunk(out, json!({"content": text}), Value::Null);
                }
            }
            Some("input_json_delta") => {
                let piece = delta
                    .get("partial_json")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let call = self.tools.get(&index).copied();
                if let (Some(call), false) = (call, piece.is_empty()) {
                    self.arguments(out, call, piece);
                }
            }
            // thinking_delta, signature_delta, citations_delta.
            _ => {}
        }
    }

    fn arguments(&mut self, out: &mut Vec<u8>, call: u64, piece: &str) {
        self.chunk(
            out,
            json!({"tool_calls": [{"index": call, "function": {"arguments": piece}}]}),
            Value::Null,
        );
    }

    fn add_usage(&mut self, usage: Option<&Value>) {
        let Some(usage) = usage else { return };
        for field in USAGE_FIELDS {
            if let Some(n) = usage.get(field).and_then(Value::as_u64)
                && n > 0
            {
                self.usage[field] = json!(n);
            }
        }
    }

    fn id(&self) -> String {
        self.id
            .clone()
            .unwrap_or_else(|| format!("chatcmpl-{}", self.nonce))
    }

    /// The first chunk, with the role.
    fn role(&mut self, out: &mut Vec<u8>) {
        if !self.role_sent {
            self.role_sent = true;
            self.chunk(
                out,
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            );
        }
    }

    fn chunk(&mut self, out: &mut Vec<u8>, delta: Value, finish_reason: Value) {
        self.role(out);
        let chunk = json!({
            "id": self.id(), "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        });
        sse::write_event(out, None, &chunk.to_string());
    }

    /// The proper end: the finish reason if none came, the usage chunk, `[DONE]`.
    fn end(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if self.finish_reason.is_none() {
            let reason = if self.tools.is_empty() {
                "stop"
            } else {
                "tool_calls"
            };
            self.finish_reason = Some(reason);
            self.chunk(out, json!({}), json!(reason));
        }
        let chunk = json!({
            "id": self.id(), "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "choices": [],
            "usage": super::super::response::openai_usage(&self.usage),
        });
        sse::write_event(out, None, &chunk.to_string());
        sse::write_event(out, None, "[DONE]");
        self.done = true;
    }

    /// An error chunk and `[DONE]`, and nothing after them.
    fn fail(&mut self, out: &mut Vec<u8>, message: &str, kind: &str) {
        if self.done {
            return;
        }
        let error =
            json!({"error": {"message": message, "type": kind, "param": null, "code": null}});
        sse::write_event(out, None, &error.to_string());
        sse::write_event(out, None, "[DONE]");
        self.done = true;
    }
}
