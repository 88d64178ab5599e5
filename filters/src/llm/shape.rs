//! A provider's response on its way to the client: decoded (Bedrock's event stream),
//! translated into the client's format when the provider speaks another, and observed (usage,
//! `tool_use` blocks) as it passes. Streams pass piece by piece; whole bodies that must change
//! are held until they end.

use bytes::Bytes;

use crate::llm::bedrock::{self, EventStreamDecoder};
use crate::llm::observe::{self, Observation, Observed, StreamObserver};
use crate::llm::provider::Wire;
use crate::llm::translate::{self, Format, StreamTranslator};

/// Largest body held whole (a non-streamed answer being translated, or an error).
const MAX_HELD_BYTES: usize = 64 * 1024 * 1024;

/// How the response's head must change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The body will differ from the provider's: drop its `content-length`.
    pub drop_length: bool,
    /// The content type to announce instead of the provider's.
    pub content_type: Option<&'static str>,
}

/// What to do with the body.
enum Mode {
    /// Passed as it comes; observed.
    Stream {
        decoder: Option<EventStreamDecoder>,
        translator: Option<Box<StreamTranslator>>,
        observer: Box<StreamObserver>,
    },
    /// Held whole, then passed (maybe translated) at the end.
    Whole { held: Vec<u8>, success: bool },
    /// A successful whole body in the client's format: passed as it comes, a copy kept to
    /// read its usage at the end.
    Pass { seen: Vec<u8> },
}

/// One response's shaping.
pub struct Shaper {
    client: Format,
    wire: Wire,
    /// The model the client asked for, shown in translated answers.
    model: String,
    mode: Option<Mode>,
    status: u16,
    observed: Observed,
    /// The provider's body was larger than can be held.
    overflow: bool,
    /// Bedrock's errors are JSON `{"message": ...}`, not Anthropic's shape.
    bedrock: bool,
    /// Tool uses already handed out by [`Shaper::new_tool_uses`].
    announced: usize,
    /// A passed body that cannot hold a tool call, left to be read after the client has it.
    unread: Option<Vec<u8>>,
}

impl Shaper {
    pub fn new(client: Format, wire: Wire, model: &str, bedrock: bool) -> Self {
        Shaper {
            bedrock,
            announced: 0,
            client,
            wire,
            model: model.to_string(),
            mode: None,
            status: 0,
            observed: Observed::default(),
            overflow: false,
            unread: None,
        }
    }

    fn provider_format(&self) -> Format {
        match self.wire {
            Wire::Sse(f) | Wire::Json(f) => f,
            Wire::EventStream => Format::Anthropic,
        }
    }

    /// The provider answered `status`: decide how the body goes.
    pub fn head(&mut self, status: u16) -> Head {
        self.status = status;
        let success = (200..300).contains(&status);
        let from = self.provider_format();
        let same = from == self.client;
        let (mode, head) = match self.wire {
            Wire::Sse(_) | Wire::EventStream if success => {
                let decoder = (self.wire == Wire::EventStream).then(EventStreamDecoder::new);
                let translator = (!same)
                    .then(|| Box::new(StreamTranslator::new(from, self.client, &self.model)));
                let changes = decoder.is_some() || translator.is_some();
                (
                    Mode::Stream {
                        decoder,
                        translator,
                        observer: Box::new(StreamObserver::new(self.client)),
                    },
                    Head {
                        drop_length: changes,
                        content_type: changes.then_some("text/event-stream"),
                    },
                )
            }
            _ if success && same => (
                Mode::Pass { seen: Vec::new() },
                Head {
                    drop_length: false,
                    content_type: None,
                },
            ),
            _ => {
                // Errors always may change (Bedrock's, or another format's, become the
                // client's); successful whole bodies only when translated.
                let changes = !success || !same;
                (
                    Mode::Whole {
                        held: Vec::new(),
                        success,
                    },
                    Head {
                        drop_length: changes,
                        content_type: changes.then_some("application/json"),
                    },
                )
            }
        };
        self.mode = Some(mode);
        head
    }

    /// Shape a piece of the provider's body (`None` at the end) in place. What goes to the
    /// client unchanged (a stream or a whole body in the client's own format) is observed and
    /// left as it is, without a copy; a decoded or translated piece is replaced; a body held
    /// whole is sent at its end.
    pub fn shape(&mut self, piece: &mut Option<Bytes>, end: bool) {
        let chunk = piece.as_deref().unwrap_or_default();
        let Some(mode) = self.mode.as_mut() else {
            *piece = None;
            return;
        };
        let replaced = match mode {
            Mode::Stream {
                decoder: None,
                translator: None,
                observer,
            } => {
                observer.push(chunk);
                None
            }
            Mode::Stream {
                decoder,
                translator,
                observer,
            } => {
                let mut out = Vec::new();
                let mut decoded = Vec::new();
                let mut input = chunk;
                if let Some(decoder) = decoder.as_mut() {
                    let mut result = decoder.push(chunk, &mut decoded);
                    if end && result.is_ok() {
                        result = decoder.finish();
                    }
                    if let Err(e) = result {
                        tracing::warn!("Bedrock event stream: {e}");
                        decoded.extend_from_slice(&stream_error(Format::Anthropic, &e.to_string()));
                    }
                    input = &decoded;
                }
                match translator.as_mut() {
                    Some(t) => {
                        t.push(input, &mut out);
                        if end {
                            t.finish(&mut out);
                        }
                    }
                    None => out.extend_from_slice(input),
                }
                observer.push(&out);
                Some(out)
            }
            Mode::Pass { seen } => {
                if seen.len() + chunk.len() > MAX_HELD_BYTES {
                    self.overflow = true;
                } else {
                    seen.extend_from_slice(chunk);
                }
                None
            }
            Mode::Whole { held, success } => {
                if held.len() + chunk.len() > MAX_HELD_BYTES {
                    self.overflow = true;
                } else {
                    held.extend_from_slice(chunk);
                }
                if !end {
                    *piece = Some(Bytes::new());
                    return;
                }
                let held = std::mem::take(held);
                Some(if *success {
                    self.whole_success(held)
                } else {
                    self.whole_error(&held)
                })
            }
        };
        if end {
            self.finish_observing(replaced.as_deref().unwrap_or_default());
        }
        if let Some(out) = replaced {
            *piece = Some(Bytes::from(out));
        }
    }

    fn whole_success(&mut self, held: Vec<u8>) -> Vec<u8> {
        let from = self.provider_format();
        if self.overflow {
            return translate::error_message(
                self.client,
                502,
                "the provider's answer is too large",
            );
        }
        // A body of the client's own format passes as it comes (`Mode::Pass`).
        let translated = serde_json::from_slice(&held)
            .ok()
            .and_then(|v| translate::response(&v, from, self.client, &self.model).ok());
        match translated {
            Some(v) => serde_json::to_vec(&v).unwrap_or_default(),
            None => translate::error_message(
                self.client,
                502,
                "the provider's answer could not be translated",
            ),
        }
    }

    fn whole_error(&mut self, held: &[u8]) -> Vec<u8> {
        let message = if self.bedrock {
            bedrock::error_message(held)
        } else {
            None
        };
        let body = match message {
            Some(message) => translate::error_message(self.client, self.status, &message),
            None => translate::error_body(self.status, held, self.provider_format(), self.client),
        };
        self.observed.error = Some(String::from_utf8_lossy(&body).chars().take(300).collect());
        body
    }

    fn finish_observing(&mut self, out: &[u8]) {
        match self.mode.take() {
            Some(Mode::Stream { observer, .. }) => {
                let error = self.observed.error.take();
                self.observed = (*observer).finish();
                self.observed.error = self.observed.error.take().or(error);
            }
            Some(Mode::Whole { success: true, .. }) => {
                self.observed = observe::observe_body(self.client, out);
            }
            Some(Mode::Pass { seen }) if !self.overflow => {
                if observe::holds_no_tool_call(&seen) {
                    self.unread = Some(seen);
                } else {
                    self.observed = observe::observe_body(self.client, &seen);
                }
            }
            _ => {}
        }
    }

    /// The provider's stream broke off after it had started towards the client: what ends the
    /// client's stream with an error event in its format (nothing for a whole body, whose
    /// connection is closed instead).
    pub fn broken(&mut self, reason: &str) -> Option<Bytes> {
        let Some(Mode::Stream {
            translator,
            observer,
            ..
        }) = self.mode.as_mut()
        else {
            return None;
        };
        let mut out = Vec::new();
        match translator.as_mut() {
            // The translator knows whether its stream ended; if not, it closes it with an error.
            Some(translator) => translator.finish(&mut out),
            None => out = stream_error(self.client, reason),
        }
        observer.push(&out);
        self.finish_observing(&out);
        self.observed
            .error
            .get_or_insert_with(|| reason.to_string());
        Some(Bytes::from(out))
    }

    /// Tool uses completed since the last call: a client may call a tool as soon as its block
    /// closes, before the response ends.
    pub fn new_tool_uses(&mut self) -> Vec<observe::ToolUse> {
        let all = match &self.mode {
            Some(Mode::Stream { observer, .. }) => observer.tool_uses(),
            _ => &self.observed.tool_uses,
        };
        let new = all.get(self.announced..).unwrap_or_default().to_vec();
        self.announced = all.len().max(self.announced);
        new
    }

    /// The format the client reads.
    pub fn client_format(&self) -> Format {
        self.client
    }

    /// What was seen of the response: usage, tool uses, the error if any. A body left
    /// unread is handed over as it is, to be read when it is wanted ([`Observation::read`]).
    pub fn take_observation(&mut self) -> Observation {
        match self.unread.take() {
            Some(body) => Observation::Unread {
                format: self.client,
                body,
            },
            None => Observation::Read(self.observed.clone()),
        }
    }

    /// What was seen of the response so far, without a body left unread.
    #[cfg(test)]
    pub fn observed(&self) -> &Observed {
        &self.observed
    }
}

/// An error event in `format`'s stream framing, to end a stream that broke.
fn stream_error(format: Format, message: &str) -> Vec<u8> {
    let body = translate::error_message(format, 502, message);
    let body = String::from_utf8_lossy(&body);
    match format {
        Format::Anthropic => format!("event: error\ndata: {body}\n\n").into_bytes(),
        Format::OpenAi => format!("data: {body}\n\n").into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANTHROPIC_STREAM: &str = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"mcp__s__echo\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\": 1}\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":7}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    /// What the client gets for one piece (`None`: the end).
    fn piece(shaper: &mut Shaper, piece: Option<&[u8]>, end: bool) -> Bytes {
        let mut piece = piece.map(Bytes::copy_from_slice);
        shaper.shape(&mut piece, end);
        piece.unwrap_or_default()
    }

    fn run(shaper: &mut Shaper, status: u16, body: &[u8]) -> (Head, Vec<u8>) {
        let head = shaper.head(status);
        let mut out = Vec::new();
        // Split the body in small pieces, as a network would.
        for chunk in body.chunks(7) {
            out.extend_from_slice(&piece(shaper, Some(chunk), false));
        }
        out.extend_from_slice(&piece(shaper, None, true));
        (head, out)
    }

    #[test]
    fn a_stream_of_the_clients_format_passes_unchanged_and_is_observed() {
        let mut shaper = Shaper::new(Format::Anthropic, Wire::Sse(Format::Anthropic), "m", false);
        let (head, out) = run(&mut shaper, 200, ANTHROPIC_STREAM.as_bytes());
        assert!(!head.drop_length);
        assert_eq!(out, ANTHROPIC_STREAM.as_bytes());
        let observed = shaper.observed();
        assert_eq!(observed.usage.input_tokens, 11);
        assert_eq!(observed.usage.output_tokens, 7);
        assert_eq!(observed.tool_uses[0].id, "toolu_1");
        assert_eq!(observed.tool_uses[0].input, serde_json::json!({"a": 1}));
    }

    #[test]
    fn a_stream_of_the_other_format_is_translated_and_observed_as_the_client_sees_it() {
        let mut shaper = Shaper::new(Format::OpenAi, Wire::Sse(Format::Anthropic), "m", false);
        let (head, out) = run(&mut shaper, 200, ANTHROPIC_STREAM.as_bytes());
        assert!(head.drop_length);
        assert_eq!(head.content_type, Some("text/event-stream"));
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("chat.completion.chunk"), "{text}");
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
        let observed = shaper.observed();
        assert_eq!(observed.usage.output_tokens, 7);
        assert_eq!(observed.tool_uses[0].name, "mcp__s__echo");
    }

    #[test]
    fn a_whole_body_of_the_clients_format_passes_as_it_comes_and_is_observed() {
        let mut shaper = Shaper::new(Format::Anthropic, Wire::Json(Format::Anthropic), "m", false);
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":2}}"#;
        let head = shaper.head(200);
        assert!(!head.drop_length);
        let first = piece(&mut shaper, Some(&body[..10]), false);
        assert_eq!(&first[..], &body[..10], "passed at once, not held");
        let rest = piece(&mut shaper, Some(&body[10..]), true);
        assert_eq!([&first[..], &rest[..]].concat(), body.to_vec());
        // No tool call in it: read when wanted, after the client has it.
        let observation = shaper.take_observation();
        assert!(matches!(observation, Observation::Unread { .. }));
        assert_eq!(observation.read().usage.output_tokens, 2);
    }

    #[test]
    fn a_whole_body_that_may_call_tools_is_read_before_it_reaches_the_client() {
        let calls = br#"{"content":[{"type":"tool_use","id":"t1","name":"mcp__s__echo","input":{}}],"usage":{"output_tokens":4}}"#;
        let escaped = br#"{"content":[{"type":"\u0074ool_use","id":"t2","name":"n","input":{}}]}"#;
        for (body, id) in [(&calls[..], "t1"), (&escaped[..], "t2")] {
            let mut shaper =
                Shaper::new(Format::Anthropic, Wire::Json(Format::Anthropic), "m", false);
            run(&mut shaper, 200, body);
            let announced = shaper.new_tool_uses();
            assert_eq!(announced.len(), 1, "{}", String::from_utf8_lossy(body));
            assert_eq!(announced[0].id, id);
            assert!(matches!(shaper.take_observation(), Observation::Read(_)));
        }
        let openai = br#"{"choices":[{"message":{"tool_calls":[{"id":"c","function":{"name":"f","arguments":"{}"}}]}}]}"#;
        let mut shaper = Shaper::new(Format::OpenAi, Wire::Json(Format::OpenAi), "m", false);
        run(&mut shaper, 200, openai);
        assert_eq!(shaper.new_tool_uses()[0].id, "c");
    }

    #[test]
    fn an_error_of_the_other_format_is_rewritten_in_the_clients() {
        let mut shaper = Shaper::new(Format::Anthropic, Wire::Json(Format::OpenAi), "m", false);
        let body = br#"{"error":{"message":"slow down","type":"rate_limit_exceeded"}}"#;
        let (head, out) = run(&mut shaper, 429, body);
        assert!(head.drop_length);
        let error: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(error["type"], "error");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("slow down")
        );
        assert!(shaper.observed().error.is_some());
    }

    #[test]
    fn a_broken_translated_stream_ends_with_an_error_event() {
        let mut shaper = Shaper::new(Format::Anthropic, Wire::Sse(Format::OpenAi), "m", false);
        shaper.head(200);
        let first = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"g\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";
        let started = piece(&mut shaper, Some(first.as_bytes()), false);
        assert!(String::from_utf8_lossy(&started).contains("message_start"));
        let ending = shaper
            .broken("provider `p`: the provider's answer broke off")
            .unwrap();
        let ending = String::from_utf8_lossy(&ending);
        assert!(ending.contains("event: error"), "{ending}");
        assert!(shaper.observed().error.is_some());
    }
}
