//! Event streams translated chunk by chunk: provider bytes in, client bytes out.

mod to_anthropic;
mod to_openai;

use super::Format;

/// An SSE stream of `from`'s streaming format translated into `to`'s, chunk by chunk. The
/// output does not depend on how the input was split. When from == to, bytes pass unchanged.
#[derive(Debug)]
pub struct StreamTranslator {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Pass,
    ToAnthropic(to_anthropic::ToAnthropic),
    ToOpenAi(to_openai::ToOpenAi),
}

impl StreamTranslator {
    pub fn new(from: Format, to: Format, model: &str) -> Self {
        let inner = match (from, to) {
            (Format::OpenAi, Format::Anthropic) => {
                Inner::ToAnthropic(to_anthropic::ToAnthropic::new(model))
            }
            (Format::Anthropic, Format::OpenAi) => Inner::ToOpenAi(to_openai::ToOpenAi::new(model)),
            _ => Inner::Pass,
        };
        StreamTranslator { inner }
    }

    /// Bytes from the provider (split anywhere); appends what the client should get now.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        match &mut self.inner {
            Inner::Pass => out.extend_from_slice(chunk),
            Inner::ToAnthropic(t) => t.push(chunk, out),
            Inner::ToOpenAi(t) => t.push(chunk, out),
        }
    }

    /// The provider's stream ended (cleanly or not): appends closing events so the client sees
    /// a valid end. A stream that broke before its proper end gets an error event rather than
    /// a silent truncation (and `[DONE]` for OpenAI). Calling it again appends nothing.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        match &mut self.inner {
            Inner::Pass => {}
            Inner::ToAnthropic(t) => t.finish(out),
            Inner::ToOpenAi(t) => t.finish(out),
        }
    }

    /// Whether the translated stream has ended (its last event written); later input is
    /// ignored. Always false when passing through.
    pub fn is_done(&self) -> bool {
        match &self.inner {
            Inner::Pass => false,
            Inner::ToAnthropic(t) => t.done,
            Inner::ToOpenAi(t) => t.done,
        }
    }

    /// Fixes the otherwise random and clock-dependent parts, so tests can compare outputs.
    #[cfg(test)]
    pub(crate) fn deterministic(mut self) -> Self {
        match &mut self.inner {
            Inner::Pass => {}
            Inner::ToAnthropic(t) => t.nonce = "n0".into(),
            Inner::ToOpenAi(t) => {
                t.nonce = "n0".into();
                t.created = 1_700_000_000;
            }
        }
        self
    }
}
