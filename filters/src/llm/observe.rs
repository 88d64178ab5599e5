//! What a model response says about itself, read as it passes to the client: tokens used (for
//! budgets and prices), tools called (for the audit log), why it stopped, and errors.
//!
//! Reading never changes the bytes. Memory is bounded: a tool call's input is kept up to
//! [`MAX_TOOL_INPUT`] bytes (beyond that, the call is dropped from what is observed), and at
//! most [`MAX_TOOL_USES`] calls are kept.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;
use serde_json::value::RawValue;

use super::translate::Format;
use super::translate::sse::{Event, SseError, SseParser};

/// Largest tool call input kept while a stream is read.
pub const MAX_TOOL_INPUT: usize = 1 << 20;
/// Most tool calls kept from one response.
pub const MAX_TOOL_USES: usize = 1024;

/// Tokens of one response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens neither read from nor written to the prompt cache.
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
}

impl Usage {
    /// Every token counted: input, output, cache read and cache write.
    pub fn total(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.output_tokens)
            .saturating_add(self.cache_read_tokens)
            .saturating_add(self.cache_write_tokens)
    }
}

/// A tool the model called. `input` is the parsed arguments, or the raw text as a JSON string
/// when they are not valid JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolUse {
    pub id: String,
    pub name: String,
    pub input: Value,
}

/// What was read from one response.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub usage: Usage,
    pub tool_uses: Vec<ToolUse>,
    /// In the format's own words (`end_turn`, `tool_calls`...).
    pub stop_reason: Option<String>,
    pub response_id: Option<String>,
    /// An error the response carried (an error body or event), a body that could not be read,
    /// or a stream that ended before its end event.
    pub error: Option<String>,
}

/// `v.pointer(pointer)` for the fixed pointers used here (no `~` escapes), without the
/// allocations `Value::pointer` makes for every token.
fn at<'v>(v: &'v Value, pointer: &str) -> Option<&'v Value> {
    pointer.split('/').skip(1).try_fold(v, |v, token| match v {
        Value::Object(map) => map.get(token),
        Value::Array(list) => token.parse::<usize>().ok().and_then(|i| list.get(i)),
        _ => None,
    })
}

fn u64_at(v: &Value, pointer: &str) -> u64 {
    at(v, pointer).and_then(Value::as_u64).unwrap_or(0)
}

fn string_at(v: &Value, pointer: &str) -> Option<String> {
    at(v, pointer).and_then(Value::as_str).map(str::to_owned)
}

/// The token counts a usage object may carry, under either format's names. A count that is
/// not an unsigned integer reads as 0, as does a usage that is not an object.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Counts {
    #[serde(deserialize_with = "count")]
    input_tokens: u64,
    #[serde(deserialize_with = "count")]
    output_tokens: u64,
    #[serde(deserialize_with = "count")]
    cache_read_input_tokens: u64,
    #[serde(deserialize_with = "count")]
    cache_creation_input_tokens: u64,
    #[serde(deserialize_with = "count")]
    prompt_tokens: u64,
    #[serde(deserialize_with = "count")]
    completion_tokens: u64,
    /// `prompt_tokens_details.cached_tokens`.
    #[serde(rename = "prompt_tokens_details", deserialize_with = "cached_count")]
    cached_tokens: u64,
}

fn count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(Value::deserialize(d)?.as_u64().unwrap_or(0))
}

fn cached_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(u64_at(&Value::deserialize(d)?, "/cached_tokens"))
}

impl Counts {
    fn of(usage: &Value) -> Counts {
        Counts::deserialize(usage).unwrap_or_default()
    }

    fn anthropic(&self) -> Usage {
        Usage {
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cache_read_tokens: self.cache_read_input_tokens,
            cache_write_tokens: self.cache_creation_input_tokens,
        }
    }

    /// OpenAI counts cached tokens inside `prompt_tokens`. Cache writes are not an OpenAI
    /// field; gateways translating from Anthropic (Sluice among them) add
    /// `cache_creation_input_tokens`.
    fn openai(&self) -> Usage {
        let (cached, written) = (self.cached_tokens, self.cache_creation_input_tokens);
        Usage {
            input_tokens: self
                .prompt_tokens
                .saturating_sub(cached)
                .saturating_sub(written),
            output_tokens: self.completion_tokens,
            cache_read_tokens: cached,
            cache_write_tokens: written,
        }
    }
}

fn anthropic_usage(usage: &Value) -> Usage {
    Counts::of(usage).anthropic()
}

fn openai_usage(usage: &Value) -> Usage {
    Counts::of(usage).openai()
}

/// Tool call arguments as JSON; empty means `{}`; invalid JSON is kept as a string.
fn parse_input(raw: &str) -> Value {
    if raw.trim().is_empty() {
        return Value::Object(Default::default());
    }
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
}

/// What a response carried, or the body to read it from later.
///
/// A whole body passed to the client in its own format is read after the client has it,
/// off the request's critical path, when it cannot hold a tool call: a tool call must be
/// remembered for linking before the client can act on it, and nothing else is needed earlier.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    Read(Observed),
    Unread { format: Format, body: Vec<u8> },
}

impl Observation {
    /// What the response carried, reading it now if it was left unread.
    pub fn read(self) -> Observed {
        match self {
            Observation::Read(observed) => observed,
            Observation::Unread { format, body } => observe_plain_body(format, &body),
        }
    }
}

/// Whether a JSON body can hold no tool call: neither `tool` (of `tool_use`, `tool_calls`)
/// nor a `\u` escape, the only JSON escape that could spell those letters, is in it.
pub fn holds_no_tool_call(body: &[u8]) -> bool {
    static TOOL: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"tool"));
    static ESCAPE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\\u"));
    TOOL.find(body).is_none() && ESCAPE.find(body).is_none()
}

/// Reads a complete non-streamed response body of `format` (the format the client receives).
///
/// The fields observed are read without building the rest of the body (text blocks are
/// skipped over, not copied); a body that does not read that way (not an object, duplicate
/// keys) is read whole, which gives the same answer.
pub fn observe_body(format: Format, body: &[u8]) -> Observed {
    // serde would read a struct from an array too, by position: only an object reads as one.
    let is_object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    match is_object.then(|| serde_json::from_slice::<Fields>(body)) {
        Some(Ok(fields)) => fields.observe(format),
        _ => observe_value(format, body),
    }
}

/// [`observe_body`] for a body that [`holds_no_tool_call`]: its content blocks and messages are
/// skipped over, not read (about half the work of reading a short answer).
fn observe_plain_body(format: Format, body: &[u8]) -> Observed {
    let is_object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    match is_object.then(|| serde_json::from_slice::<Fields<IgnoredAny, IgnoredAny>>(body)) {
        Some(Ok(fields)) => fields.observe_parts(format).0,
        _ => observe_value(format, body),
    }
}

/// The fields of a response body that are observed, read in one pass: text is skipped over,
/// not copied, and only a tool call's parts and an error are kept as raw JSON. A field of an
/// unexpected type fails the read, and [`observe_body`] then reads the body whole.
///
/// `Blocks` and `Msg` read the content blocks and the choices' messages, where the tool calls
/// are; [`IgnoredAny`] for both skips them ([`observe_plain_body`]).
#[derive(Deserialize)]
struct Fields<'a, Blocks = Vec<Block<'a>>, Msg = Message<'a>> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
    usage: Option<Counts>,
    #[serde(borrow)]
    stop_reason: Option<Cow<'a, str>>,
    content: Option<Blocks>,
    #[serde(borrow)]
    choices: Option<Vec<Choice<'a, Msg>>>,
}

/// An Anthropic content block: the parts of a `tool_use` block.
#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
}

/// An OpenAI choice: why it finished, and its message (with the tool calls).
#[derive(Deserialize)]
struct Choice<'a, Msg> {
    #[serde(borrow)]
    finish_reason: Option<Cow<'a, str>>,
    message: Option<Msg>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    tool_calls: Option<&'a RawValue>,
}

/// A raw JSON value read as `T`, `None` when it is not one.
fn read<'a, T: Deserialize<'a>>(raw: Option<&'a RawValue>) -> Option<T> {
    serde_json::from_str(raw?.get()).ok()
}

/// A raw JSON value, `Null` when absent or unreadable.
fn value(raw: Option<&RawValue>) -> Value {
    read(raw).unwrap_or(Value::Null)
}

impl<Blocks, Msg> Fields<'_, Blocks, Msg> {
    /// All but the tool calls; with the content blocks and the first choice's message, which
    /// hold them.
    fn observe_parts(self, format: Format) -> (Observed, Option<Blocks>, Option<Msg>) {
        let mut seen = Observed {
            response_id: self.id.map(Cow::into_owned),
            ..Observed::default()
        };
        if let Some(error) = self.error {
            let error = value(Some(error));
            seen.error = Some(string_at(&error, "/message").unwrap_or_else(|| error.to_string()));
        }
        let counts = self.usage.unwrap_or_default();
        match format {
            Format::Anthropic => {
                seen.usage = counts.anthropic();
                seen.stop_reason = self.stop_reason.map(Cow::into_owned);
                (seen, self.content, None)
            }
            Format::OpenAi => {
                seen.usage = counts.openai();
                let choice = self.choices.and_then(|c| c.into_iter().next());
                let message = choice.and_then(|choice| {
                    seen.stop_reason = choice.finish_reason.map(Cow::into_owned);
                    choice.message
                });
                (seen, None, message)
            }
        }
    }
}

impl Fields<'_> {
    fn observe(self, format: Format) -> Observed {
        let (mut seen, blocks, message) = self.observe_parts(format);
        let blocks = blocks.into_iter().flatten();
        for block in blocks.filter(|b| b.kind.as_deref() == Some("tool_use")) {
            seen.tool_uses.push(ToolUse {
                id: read(block.id).unwrap_or_default(),
                name: read(block.name).unwrap_or_default(),
                input: value(block.input),
            });
        }
        if let Some(calls) = message.and_then(|m| m.tool_calls) {
            seen.tool_uses = openai_tool_calls(&value(Some(calls)));
        }
        seen.tool_uses.truncate(MAX_TOOL_USES);
        seen
    }
}

/// An Anthropic `tool_use` content block, as a tool use.
fn anthropic_tool_use(block: &Value) -> ToolUse {
    ToolUse {
        id: string_at(block, "/id").unwrap_or_default(),
        name: string_at(block, "/name").unwrap_or_default(),
        input: block.get("input").cloned().unwrap_or(Value::Null),
    }
}

/// OpenAI `tool_calls`, as tool uses.
fn openai_tool_calls(calls: &Value) -> Vec<ToolUse> {
    let calls = calls.as_array().map(Vec::as_slice).unwrap_or_default();
    calls
        .iter()
        .map(|call| ToolUse {
            id: string_at(call, "/id").unwrap_or_default(),
            name: string_at(call, "/function/name").unwrap_or_default(),
            input: parse_input(
                at(call, "/function/arguments")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            ),
        })
        .collect()
}

/// [`observe_body`] by way of a whole [`Value`].
fn observe_value(format: Format, body: &[u8]) -> Observed {
    let mut seen = Observed::default();
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            seen.error = Some(format!("the response body is not JSON: {e}"));
            return seen;
        }
    };
    seen.response_id = string_at(&v, "/id");
    if let Some(error) = v.get("error").filter(|e| !e.is_null()) {
        seen.error = Some(string_at(error, "/message").unwrap_or_else(|| error.to_string()));
    }
    match format {
        Format::Anthropic => {
            seen.usage = anthropic_usage(v.get("usage").unwrap_or(&Value::Null));
            seen.stop_reason = string_at(&v, "/stop_reason");
            let blocks = v.get("content").and_then(Value::as_array);
            for block in blocks.into_iter().flatten() {
                if block.get("type").and_then(Value::as_str) == Some("tool_use") {
                    seen.tool_uses.push(anthropic_tool_use(block));
                }
            }
        }
        Format::OpenAi => {
            seen.usage = openai_usage(v.get("usage").unwrap_or(&Value::Null));
            seen.stop_reason = string_at(&v, "/choices/0/finish_reason");
            if let Some(calls) = at(&v, "/choices/0/message/tool_calls") {
                seen.tool_uses = openai_tool_calls(calls);
            }
        }
    }
    seen.tool_uses.truncate(MAX_TOOL_USES);
    seen
}

/// A tool call whose input is still arriving.
#[derive(Debug)]
struct Pending {
    /// Anthropic block index, or OpenAI tool call index.
    key: u64,
    id: String,
    name: String,
    input: String,
    /// Over [`MAX_TOOL_INPUT`]: dropped when finished.
    too_large: bool,
}

/// [`observe_body`] for an event stream, fed chunk by chunk as it passes to the client.
#[derive(Debug)]
pub struct StreamObserver {
    format: Format,
    parser: SseParser,
    seen: Observed,
    pending: Vec<Pending>,
    /// The stream's proper end (`message_stop`, `[DONE]`) or an error was seen.
    ended: bool,
}

impl StreamObserver {
    pub fn new(format: Format) -> Self {
        StreamObserver {
            format,
            parser: SseParser::new(),
            seen: Observed::default(),
            pending: Vec::new(),
            ended: false,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        let events = self.parser.push(chunk);
        self.take(events);
    }

    /// The tool uses whose blocks have closed so far.
    pub fn tool_uses(&self) -> &[ToolUse] {
        &self.seen.tool_uses
    }

    pub fn finish(mut self) -> Observed {
        let events = self.parser.finish();
        self.take(events);
        let pending = std::mem::take(&mut self.pending);
        for p in pending {
            self.complete(p);
        }
        if !self.ended && self.seen.error.is_none() {
            self.seen.error = Some("the stream ended before its end event".to_owned());
        }
        self.seen
    }

    fn take(&mut self, events: Vec<Result<Event, SseError>>) {
        for event in events {
            match event {
                Ok(event) => match self.format {
                    Format::Anthropic => self.anthropic(&event),
                    Format::OpenAi => self.openai(&event),
                },
                Err(e) => {
                    tracing::debug!(error = %e, "an unreadable stream event was not observed")
                }
            }
        }
    }

    fn anthropic(&mut self, event: &Event) {
        if carries_nothing_observed(event) {
            return;
        }
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
            return;
        };
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(event.event.as_str());
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
        match kind {
            "message_start" => {
                self.seen.response_id = string_at(&data, "/message/id");
                self.latest_usage(anthropic_usage(
                    at(&data, "/message/usage").unwrap_or(&Value::Null),
                ));
            }
            "content_block_start" => {
                let block = data.get("content_block").unwrap_or(&Value::Null);
                if block.get("type").and_then(Value::as_str) == Some("tool_use") {
                    let mut input = String::new();
                    // Input normally streams in; a provider may give it whole here.
                    if let Some(i) = block
                        .get("input")
                        .filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
                    {
                        input = i.to_string();
                    }
                    self.begin(
                        index,
                        string_at(block, "/id"),
                        string_at(block, "/name"),
                        &input,
                    );
                }
            }
            "content_block_delta" => {
                if let Some(piece) = at(&data, "/delta/partial_json").and_then(Value::as_str) {
                    self.append(index, piece);
                }
            }
            "content_block_stop" => {
                if let Some(at) = self.pending.iter().position(|p| p.key == index) {
                    let p = self.pending.remove(at);
                    self.complete(p);
                }
            }
            "message_delta" => {
                if let Some(reason) = string_at(&data, "/delta/stop_reason") {
                    self.seen.stop_reason = Some(reason);
                }
                self.latest_usage(anthropic_usage(data.get("usage").unwrap_or(&Value::Null)));
            }
            "message_stop" => self.ended = true,
            "error" => {
                self.seen.error =
                    Some(string_at(&data, "/error/message").unwrap_or_else(|| data.to_string()));
                self.ended = true;
            }
            _ => {}
        }
    }

    fn openai(&mut self, event: &Event) {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.ended = true;
            return;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            return;
        };
        if let Some(error) = chunk.get("error") {
            self.seen.error =
                Some(string_at(error, "/message").unwrap_or_else(|| error.to_string()));
            self.ended = true;
            return;
        }
        if self.seen.response_id.is_none() {
            self.seen.response_id = string_at(&chunk, "/id");
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.seen.usage = openai_usage(usage);
        }
        let choices = chunk.get("choices").and_then(Value::as_array);
        for choice in choices.into_iter().flatten() {
            if choice.get("index").and_then(Value::as_u64).unwrap_or(0) != 0 {
                continue;
            }
            if let Some(reason) = string_at(choice, "/finish_reason") {
                self.seen.stop_reason = Some(reason);
            }
            let calls = at(choice, "/delta/tool_calls").and_then(Value::as_array);
            for call in calls.into_iter().flatten() {
                let id = string_at(call, "/id").filter(|id| !id.is_empty());
                let key = match call.get("index").and_then(Value::as_u64) {
                    Some(index) => index,
                    None => self.implied_key(id.as_deref()),
                };
                let piece = at(call, "/function/arguments")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if self.pending.iter().any(|p| p.key == key) {
                    self.append(key, piece);
                } else {
                    let name = string_at(call, "/function/name");
                    self.begin(key, id, name, piece);
                }
            }
        }
    }

    /// A tool call index for servers that leave it out: a new id means a new call, no id the
    /// latest call.
    fn implied_key(&self, id: Option<&str>) -> u64 {
        let latest = self.pending.last();
        match (latest, id) {
            (Some(p), Some(id)) if p.id != id => p.key.saturating_add(1),
            (Some(p), _) => p.key,
            (None, _) => 0,
        }
    }

    /// Usage fields in a stream may come in pieces: keep the latest non-zero value of each.
    fn latest_usage(&mut self, new: Usage) {
        let u = &mut self.seen.usage;
        for (old, new) in [
            (&mut u.input_tokens, new.input_tokens),
            (&mut u.output_tokens, new.output_tokens),
            (&mut u.cache_read_tokens, new.cache_read_tokens),
            (&mut u.cache_write_tokens, new.cache_write_tokens),
        ] {
            if new > 0 {
                *old = new;
            }
        }
    }

    fn begin(&mut self, key: u64, id: Option<String>, name: Option<String>, input: &str) {
        if self.seen.tool_uses.len() + self.pending.len() >= MAX_TOOL_USES {
            return;
        }
        let mut p = Pending {
            key,
            id: id.unwrap_or_default(),
            name: name.unwrap_or_default(),
            input: String::new(),
            too_large: false,
        };
        push_capped(&mut p, input);
        self.pending.push(p);
    }

    fn append(&mut self, key: u64, piece: &str) {
        if let Some(p) = self.pending.iter_mut().find(|p| p.key == key) {
            push_capped(p, piece);
        }
    }

    fn complete(&mut self, p: Pending) {
        if p.too_large {
            tracing::debug!(tool = %p.name, "a tool call's input was too large to observe");
            return;
        }
        self.seen.tool_uses.push(ToolUse {
            id: p.id,
            name: p.name,
            input: parse_input(&p.input),
        });
    }
}

/// An Anthropic event that holds nothing observed (a ping, or a text delta: most of a stream),
/// told by its name and a glance at its data, so that it is not parsed.
fn carries_nothing_observed(event: &Event) -> bool {
    match event.event.as_str() {
        "ping" => true,
        "content_block_delta" => {
            // A searcher is costly to build: built once.
            static PARTIAL_JSON: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
                std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"partial_json"));
            PARTIAL_JSON.find(event.data.as_bytes()).is_none()
        }
        _ => false,
    }
}

fn push_capped(p: &mut Pending, piece: &str) {
    if p.too_large {
        return;
    }
    if p.input.len() + piece.len() > MAX_TOOL_INPUT {
        p.too_large = true;
        p.input = String::new();
        return;
    }
    p.input.push_str(piece);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const A: Format = Format::Anthropic;
    const O: Format = Format::OpenAi;

    /// Feeds `input` in pieces of `size` bytes.
    fn stream(format: Format, input: &str, size: usize) -> Observed {
        let mut o = StreamObserver::new(format);
        for piece in input.as_bytes().chunks(size.max(1)) {
            o.push(piece);
        }
        o.finish()
    }

    fn sse(events: &[serde_json::Value]) -> String {
        events
            .iter()
            .map(|v| match v["type"].as_str() {
                Some(t) => format!("event: {t}\ndata: {v}\n\n"),
                None => format!("data: {v}\n\n"),
            })
            .collect()
    }

    #[test]
    fn anthropic_body() {
        let body = json!({
            "id": "msg_1", "type": "message", "role": "assistant",
            "content": [
                {"type": "text", "text": "ok"},
                {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "a"}}
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 7}
        });
        let seen = observe_body(A, body.to_string().as_bytes());
        assert_eq!(
            seen,
            Observed {
                usage: Usage {
                    input_tokens: 10,
                    output_tokens: 5,
                    cache_read_tokens: 100,
                    cache_write_tokens: 7
                },
                tool_uses: vec![ToolUse {
                    id: "toolu_1".into(),
                    name: "Read".into(),
                    input: json!({"file_path": "a"})
                }],
                stop_reason: Some("tool_use".into()),
                response_id: Some("msg_1".into()),
                error: None,
            }
        );
        assert_eq!(seen.usage.total(), 122);
    }

    /// A body without tool calls reads the same with its content skipped as read whole.
    #[test]
    fn plain_bodies_read_as_whole_ones() {
        let bodies = [
            json!({"id": "msg_1", "type": "message", "content": [{"type": "text", "text": "hi"}],
                "stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 2, "cache_read_input_tokens": 4}}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": "hi"}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 4}}}),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}),
            json!({"content": "not blocks", "usage": {"input_tokens": "many"}}),
            json!([1, 2]),
        ];
        for body in bodies {
            let text = body.to_string();
            for format in [A, O] {
                assert!(holds_no_tool_call(text.as_bytes()));
                let plain = observe_plain_body(format, text.as_bytes());
                assert_eq!(plain, observe_body(format, text.as_bytes()), "{text}");
                assert_eq!(plain, observe_value(format, text.as_bytes()), "{text}");
            }
        }
        assert!(observe_plain_body(A, b"{\"usage\":").error.is_some());
    }

    #[test]
    fn openai_body() {
        let body = json!({
            "id": "chatcmpl-1", "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "oops"}}
                ]}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 9, "total_tokens": 109, "prompt_tokens_details": {"cached_tokens": 60}}
        });
        let seen = observe_body(O, body.to_string().as_bytes());
        assert_eq!(
            seen.usage,
            Usage {
                input_tokens: 40,
                output_tokens: 9,
                cache_read_tokens: 60,
                cache_write_tokens: 0
            }
        );
        assert_eq!(seen.tool_uses[0].input, json!({"a": 1}));
        assert_eq!(seen.tool_uses[1].input, json!("oops"));
        assert_eq!(seen.stop_reason.as_deref(), Some("tool_calls"));
        assert_eq!(seen.response_id.as_deref(), Some("chatcmpl-1"));
    }

    #[test]
    fn error_and_garbage_bodies() {
        let seen = observe_body(
            A,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!(seen.error.as_deref(), Some("Overloaded"));
        let seen = observe_body(
            O,
            br#"{"error":{"message":"bad key","type":"invalid_request_error"}}"#,
        );
        assert_eq!(seen.error.as_deref(), Some("bad key"));
        let seen = observe_body(O, b"\xff<html>");
        assert!(seen.error.is_some());
        assert_eq!(seen.usage, Usage::default());
        let seen = observe_body(A, b"[1,2]");
        assert_eq!(seen.usage, Usage::default());
    }

    #[test]
    fn the_field_reader_agrees_with_the_whole_reader() {
        let bodies = [
            r#"{"id": "msg_\u00e9", "content": [{"type": "text", "text": "a \"quoted\" \n text"},
                {"type": "tool_use", "id": "t1", "name": "n", "input": {"deep": [1, {"x": null}]}},
                {"type": "tool\u005fuse", "id": "t2", "name": "escaped type", "input": {}}],
                "stop_reason": "tool_use", "usage": {"input_tokens": 3, "output_tokens": 1.5}}"#
                .to_string(),
            json!({"id": 7, "error": null, "usage": null, "content": "not blocks"}).to_string(),
            json!({"error": {"type": "x"}}).to_string(),
            json!({"choices": [{"finish_reason": "stop", "message": {"content": "hi"}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
            .to_string(),
            json!({"choices": [{"message": {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]}}]})
                .to_string(),
            json!({"usage": {"prompt_tokens": 9, "prompt_tokens_details": null, "completion_tokens": "2"}})
                .to_string(),
            json!({"usage": {"prompt_tokens": 9, "prompt_tokens_details": {"cached_tokens": 4}, "cache_creation_input_tokens": -1}})
                .to_string(),
            json!({"usage": [1]}).to_string(),
            json!({"content": [{"type": "tool_use", "id": 5, "name": null}, "odd", {"type": 1}],
                "stop_reason": 5, "usage": "none"})
            .to_string(),
            json!({"content": [{"type": "tool_use", "id": "t", "name": "n", "input": null, "x": [1]}],
                "id": null, "stop_reason": null, "usage": {"input_tokens": 2, "cache_read_input_tokens": 7}})
            .to_string(),
            json!({"choices": [{"finish_reason": null, "message": null}, {"finish_reason": 3}]})
                .to_string(),
            json!({"choices": [{"finish_reason": "tool_calls", "message": {"tool_calls": "bad"}}, 7]})
                .to_string(),
            json!({"choices": "none", "error": {"message": "overloaded"}}).to_string(),
            r#"{"id": "a", "id": "b"}"#.to_string(),
            r#"  {"usage": {"input_tokens": 1}}  "#.to_string(),
            "[1,2]".to_string(),
        ];
        for body in &bodies {
            for format in [A, O] {
                assert_eq!(
                    observe_body(format, body.as_bytes()),
                    observe_value(format, body.as_bytes()),
                    "{format:?} {body}"
                );
            }
        }
    }

    #[test]
    fn typical_answers_read_in_one_pass() {
        let anthropic = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
            "content": [{"type": "text", "text": "hi"}, {"type": "tool_use", "id": "t", "name": "n", "input": {"a": 1}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 3, "output_tokens": 1, "cache_read_input_tokens": 0}});
        let openai = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                "finish_reason": "tool_calls", "logprobs": null}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7,
                "prompt_tokens_details": {"cached_tokens": 0}}});
        for body in [anthropic, openai] {
            let body = body.to_string();
            assert!(serde_json::from_str::<Fields>(&body).is_ok(), "{body}");
        }
    }

    fn anthropic_stream() -> String {
        sse(&[
            json!({"type": "message_start", "message": {"id": "msg_9", "usage": {"input_tokens": 30, "cache_read_input_tokens": 200, "cache_creation_input_tokens": 0, "output_tokens": 1}}}),
            json!({"type": "ping"}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            // Not parsed (text deltas and pings carry nothing observed).
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_a", "name": "Bash", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"command\": \"l"}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "s\"}"}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_b", "name": "Now", "input": {}}}),
            json!({"type": "content_block_stop", "index": 2}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 42, "input_tokens": 0}}),
            json!({"type": "message_stop"}),
        ])
    }

    #[test]
    fn anthropic_stream_usage_and_tools() {
        let expected = Observed {
            usage: Usage {
                input_tokens: 30,
                output_tokens: 42,
                cache_read_tokens: 200,
                cache_write_tokens: 0,
            },
            tool_uses: vec![
                ToolUse {
                    id: "toolu_a".into(),
                    name: "Bash".into(),
                    input: json!({"command": "ls"}),
                },
                ToolUse {
                    id: "toolu_b".into(),
                    name: "Now".into(),
                    input: json!({}),
                },
            ],
            stop_reason: Some("tool_use".into()),
            response_id: Some("msg_9".into()),
            error: None,
        };
        for size in [1, 2, 7, 64, 100_000] {
            assert_eq!(
                stream(A, &anthropic_stream(), size),
                expected,
                "pieces of {size}"
            );
        }
    }

    fn openai_stream() -> String {
        let chunk = |choices: serde_json::Value| json!({"id": "chatcmpl-7", "object": "chat.completion.chunk", "choices": choices});
        let mut usage = chunk(json!([]));
        usage["usage"] = json!({"prompt_tokens": 50, "completion_tokens": 8, "prompt_tokens_details": {"cached_tokens": 20}});
        let mut s = sse(&[
            chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": "x"}}])),
            chunk(
                json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]),
            ),
            chunk(
                json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"q\":"}}]}}]),
            ),
            chunk(
                json!([{"index": 0, "delta": {"tool_calls": [{"index": 1, "id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}}]),
            ),
            chunk(
                json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"z\"}"}}]}}]),
            ),
            chunk(json!([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])),
            usage,
        ]);
        s.push_str("data: [DONE]\n\n");
        s
    }

    #[test]
    fn openai_stream_usage_and_tools() {
        let expected = Observed {
            usage: Usage {
                input_tokens: 30,
                output_tokens: 8,
                cache_read_tokens: 20,
                cache_write_tokens: 0,
            },
            tool_uses: vec![
                ToolUse {
                    id: "call_1".into(),
                    name: "f".into(),
                    input: json!({"q": "z"}),
                },
                ToolUse {
                    id: "call_2".into(),
                    name: "g".into(),
                    input: json!({}),
                },
            ],
            stop_reason: Some("tool_calls".into()),
            response_id: Some("chatcmpl-7".into()),
            error: None,
        };
        for size in [1, 3, 50, 100_000] {
            assert_eq!(
                stream(O, &openai_stream(), size),
                expected,
                "pieces of {size}"
            );
        }
    }

    #[test]
    fn openai_stream_without_tool_indexes() {
        let chunk = |calls: serde_json::Value| json!({"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": calls}}]});
        let mut s = sse(&[
            chunk(json!([{"id": "call_1", "function": {"name": "f", "arguments": "{\"a\":"}}])),
            chunk(json!([{"function": {"arguments": "1}"}}])),
            chunk(json!([{"id": "call_2", "function": {"name": "g", "arguments": "{}"}}])),
        ]);
        s.push_str("data: [DONE]\n\n");
        let seen = stream(O, &s, 5);
        assert_eq!(
            seen.tool_uses,
            vec![
                ToolUse {
                    id: "call_1".into(),
                    name: "f".into(),
                    input: json!({"a": 1})
                },
                ToolUse {
                    id: "call_2".into(),
                    name: "g".into(),
                    input: json!({})
                },
            ]
        );
    }

    #[test]
    fn stream_errors_and_cut_offs() {
        let s = anthropic_stream();
        let cut = &s[..s.find("event: message_delta").unwrap()];
        let seen = stream(A, cut, 5);
        assert_eq!(
            seen.error.as_deref(),
            Some("the stream ended before its end event")
        );
        assert_eq!(seen.tool_uses.len(), 2);
        let s = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
        assert_eq!(stream(A, s, 4).error.as_deref(), Some("Overloaded"));
        let s = "data: {\"error\":{\"message\":\"boom\"}}\n\ndata: [DONE]\n\n";
        assert_eq!(stream(O, s, 4).error.as_deref(), Some("boom"));
        let s = format!("data: {{bad\n\n{}", openai_stream());
        assert_eq!(stream(O, &s, 9).tool_uses.len(), 2);
    }

    #[test]
    fn oversized_tool_input_is_dropped() {
        let mut o = StreamObserver::new(A);
        o.push(sse(&[json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "big", "input": {}}})]).as_bytes());
        let piece = "x".repeat(64 * 1024);
        let delta = sse(&[
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": piece}}),
        ]);
        for _ in 0..20 {
            o.push(delta.as_bytes());
        }
        assert!(o.pending.iter().all(|p| p.input.is_empty() && p.too_large));
        o.push(
            sse(&[
                json!({"type": "content_block_stop", "index": 0}),
                json!({"type": "message_stop"}),
            ])
            .as_bytes(),
        );
        let seen = o.finish();
        assert!(seen.tool_uses.is_empty());
        assert!(seen.error.is_none());
    }
}
