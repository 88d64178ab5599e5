//! A provider's response on its way to the client: decoded (Bedrock's event stream),
//! translated into the client's format when the provider speaks another, and observed (usage,
//! `tool_use` blocks) as it passes. Streams pass piece by piece; whole bodies that must change
//! are held until they end.

use bytes::Bytes;

use crate::llm::bedrock::{self, EventStreamDecoder};
use crate::llm::observe::{self, Observed, StreamObserver};
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
}

impl Shaper {
    pub fn new(client: Format, wire: Wire, model: &str, bedrock: bool) -> Self {
        Shaper {
            bedrock,
            client,
            wire,
            model: model.to_string(),
            mode: None,
            status: 0,
            observed: Observed::default(),
            overflow: false,
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

    /// A piece of the provider's body (`None` at the end): what to send the client now.
    pub fn body(&mut self, chunk: Option<&[u8]>, end: bool) -> Option<Bytes> {
        let chunk = chunk.unwrap_or_default();
        let mut out = Vec::new();
        match self.mode.as_mut()? {
            Mode::Stream {
                decoder,
                translator,
                observer,
            } => {
                let mut decoded;
                let mut input = chunk;
                if let Some(decoder) = decoder.as_mut() {
                    decoded = Vec::new();
                    let mut result = decoder.push(chunk, &mut decoded);
                    if end && result.is_ok() {
                        result = decoder.finish();
                    }
                    if let Err(e) = result {
                        tracing::warn!("Bedrock event stream: {e}");
                        decoded.extend_from_slice(&stream_error(Format::Anthropic, &e.to_string()));
                    }
                    input = &decoded;
                    match translator.as_mut() {
                        Some(t) => t.push(input, &mut out),
                        None => out.extend_from_slice(input),
                    }
                } else {
                    match translator.as_mut() {
                        Some(t) => t.push(input, &mut out),
                        None => out.extend_from_slice(input),
                    }
                }
                if end && let Some(t) = translator.as_mut() {
                    t.finish(&mut out);
                }
                observer.push(&out);
            }
            Mode::Whole { held, success } => {
                if held.len() + chunk.len() > MAX_HELD_BYTES {
                    self.overflow = true;
                } else {
                    held.extend_from_slice(chunk);
                }
                if !end {
                    return Some(Bytes::new());
                }
                let held = std::mem::take(held);
                out = if *success {
                    self.whole_success(held)
                } else {
                    self.whole_error(&held)
                };
            }
        }
        if end {
            self.finish_observing(&out);
        }
        Some(Bytes::from(out))
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
        if from == self.client {
            return held;
        }
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
            _ => {}
        }
    }

    /// The format the client reads.
    pub fn client_format(&self) -> Format {
        self.client
    }

    /// What was seen of the response: usage, tool uses, the error if any.
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
