//! OpenAI chunks → Anthropic events.
//!
//! OpenAI streams deltas with no block structure; Anthropic wants blocks opened, filled and
//! closed one at a time. A text delta opens (or continues) a text block, a tool call piece a
//! `tool_use` block per tool call index; a change of kind closes the open block. OpenAI sends
//! usage after the finish reason, so `message_delta` waits for `[DONE]` (or the end).

use std::collections::HashSet;

use serde_json::{Value, json};

use super::super::sse::{self, Event, SseParser};
use super::super::{anthropic_tool_id, nonce, stop};

#[derive(Debug)]
pub(crate) struct ToAnthropic {
    parser: SseParser,
    model: String,
    pub(super) nonce: String,
    started: bool,
    open: Option<Open>,
    /// Index of the next Anthropic content block.
    next_block: u64,
    /// OpenAI tool call indexes already given a block (open or closed).
    tools_seen: HashSet<u64>,
    /// One more than the largest of `tools_seen`.
    next_tool: u64,
    stop_reason: Option<&'static str>,
    usage: Option<Value>,
    pub(super) done: bool,
}

/// The content block being written.
#[derive(Debug)]
enum Open {
    Text { block: u64 },
    Tool { block: u64, call: u64, id: String },
}

impl ToAnthropic {
    pub(crate) fn new(model: &str) -> Self {
        ToAnthropic {
            parser: SseParser::new(),
            model: model.to_owned(),
            nonce: nonce(),
            started: false,
            open: None,
            next_block: 0,
            tools_seen: HashSet::new(),
            next_tool: 0,
            stop_reason: None,
            usage: None,
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
        if self.stop_reason.is_some() {
            // A finish reason came but no [DONE]: some servers end that way.
            self.end(out);
        } else {
            self.fail(
                out,
                "the provider's stream ended before the response was complete",
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
                Err(e @ sse::SseError::TooLarge { .. }) => self.fail(out, &e.to_string()),
                Err(e) => tracing::debug!(error = %e, "skipped an unreadable stream event"),
            }
        }
    }

    fn event(&mut self, event: &Event, out: &mut Vec<u8>) {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.end(out);
            return;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            tracing::debug!("skipped a stream event that is not JSON");
            return;
        };
        if let Some(error) = chunk.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| error.to_string());
            self.fail(out, &message);
            return;
        }
        self.start(&chunk, out);
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(super::super::response::anthropic_usage(usage));
        }
        let choices = chunk.get("choices").and_then(Value::as_array);
        for choice in choices.into_iter().flatten() {
            // Only the first choice (Anthropic has no others).
            if choice.get("index").and_then(Value::as_u64).unwrap_or(0) != 0 {
                continue;
            }
            let delta = choice.get("delta").unwrap_or(&Value::Null);
            if let Some(text) = delta.get("content").and_then(Value::as_str)
                && !text.is_empty()
            {
                self.text(text, out);
            }
            let calls = delta.get("tool_calls").and_then(Value::as_array);
            for call in calls.into_iter().flatten() {
                self.tool_piece(call, out);
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                self.stop_reason = Some(stop::to_anthropic(reason));
            }
        }
    }

    /// `message_start`, before anything else.
    fn start(&mut self, chunk: &Value, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let id = chunk
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("msg_{}", self.nonce));
        write(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
        );
    }

    fn text(&mut self, text: &str, out: &mut Vec<u8>) {
        let block = match self.open {
            Some(Open::Text { block }) => block,
            _ => {
                self.close(out);
                let block = self.open_block(out, json!({"type": "text", "text": ""}));
                self.open = Some(Open::Text { block });
                block
            }
        };
        write(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": block,
                    "delta": {"type": "text_delta", "text": text}}),
        );
    }

    fn tool_piece(&mut self, call: &Value, out: &mut Vec<u8>) {
        let id = call
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let index = match call.get("index").and_then(Value::as_u64) {
            Some(i) => i,
            None => self.implied_index(id),
        };
        let arguments = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let block = match &self.open {
            Some(Open::Tool { block, call, .. }) if *call == index => *block,
            _ if self.tools_seen.contains(&index) => {
                tracing::debug!(index, "dropped a piece of a tool call already closed");
                return;
            }
            _ => {
                self.close(out);
                let id = id
                    .map(anthropic_tool_id)
                    .unwrap_or_else(|| format!("toolu_{}_{index}", self.nonce));
                let name = call
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let block = self.open_block(
                    out,
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                );
                self.tools_seen.insert(index);
                self.next_tool = self.next_tool.max(index.saturating_add(1));
                self.open = Some(Open::Tool {
                    block,
                    call: index,
                    id,
                });
                block
            }
        };
        if !arguments.is_empty() {
            write(
                out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": block,
                        "delta": {"type": "input_json_delta", "partial_json": arguments}}),
            );
        }
    }

    /// A tool call index for servers that leave it out: a new id means a new call.
    fn implied_index(&self, id: Option<&str>) -> u64 {
        match (&self.open, id) {
            (Some(Open::Tool { call, id: open, .. }), Some(id))
                if *open == anthropic_tool_id(id) =>
            {
                *call
            }
            (Some(Open::Tool { call, .. }), None) => *call,
            _ => self.next_tool,
        }
    }

    fn open_block(&mut self, out: &mut Vec<u8>, content_block: Value) -> u64 {
        let block = self.next_block;
        self.next_block += 1;
        write(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": block, "content_block": content_block}),
        );
        block
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        let block = match self.open.take() {
            Some(Open::Text { block } | Open::Tool { block, .. }) => block,
            None => return,
        };
        write(
            out,
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": block}),
        );
    }

    /// The proper end: `message_delta` with the stop reason and usage, then `message_stop`.
    fn end(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.start(&Value::Null, out);
        self.close(out);
        let stop_reason = match self.stop_reason {
            Some("end_turn") | None if !self.tools_seen.is_empty() => "tool_use",
            Some(reason) => reason,
            None => "end_turn",
        };
        let usage = self
            .usage
            .take()
            .unwrap_or_else(|| json!({"input_tokens": 0, "output_tokens": 0}));
        write(
            out,
            "message_delta",
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                    "usage": usage}),
        );
        write(out, "message_stop", &json!({"type": "message_stop"}));
        self.done = true;
    }

    /// An `error` event, and nothing after it.
    fn fail(&mut self, out: &mut Vec<u8>, message: &str) {
        if self.done {
            return;
        }
        write(
            out,
            "error",
            &json!({"type": "error", "error": {"type": "api_error", "message": message}}),
        );
        self.done = true;
    }
}

fn write(out: &mut Vec<u8>, event: &str, data: &Value) {
    sse::write_event(out, Some(event), &data.to_string());
}
