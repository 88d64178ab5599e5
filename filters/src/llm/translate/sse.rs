//! A synchronous, incremental server-sent-events parser, and the framing of events written out.
//!
//! Bytes are pushed as they arrive from the provider, split anywhere (inside a line, a CRLF or a
//! UTF-8 character); the events that came out do not depend on where the splits fell. Each
//! event's size is capped so that a provider that never ends an event costs an error, not
//! Sluice's memory.

/// The default cap on one event's size.
pub const MAX_EVENT: usize = 8 << 20;

/// One event: its `event:` name (empty when absent) and its `data:` lines joined by newlines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    pub event: String,
    pub data: String,
}

/// An event that was dropped, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("an event is larger than {limit} bytes; it was dropped")]
    TooLarge { limit: usize },
    #[error("an event is not valid UTF-8; it was dropped")]
    NotUtf8,
}

/// Turns pushed bytes into events. Lines end with LF or CRLF.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes of the line being received (no newline in it yet).
    buf: Vec<u8>,
    max_event: usize,
    current: Event,
    has_data: bool,
    /// Bytes of the current event's complete lines, for the cap.
    size: usize,
    /// The current event was dropped: skip its lines up to the blank line that ends it.
    skipping: bool,
    /// The line being received was too long: discard bytes up to its newline.
    discarding_line: bool,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    pub fn new() -> Self {
        Self::with_limit(MAX_EVENT)
    }

    pub fn with_limit(max_event: usize) -> Self {
        SseParser {
            buf: Vec::new(),
            max_event,
            current: Event::default(),
            has_data: false,
            size: 0,
            skipping: false,
            discarding_line: false,
        }
    }

    /// Takes the next bytes; returns the events they completed, in order.
    pub fn push(&mut self, mut chunk: &[u8]) -> Vec<Result<Event, SseError>> {
        let mut out = Vec::new();
        if self.discarding_line {
            match memchr::memchr(b'\n', chunk) {
                None => return out,
                Some(at) => {
                    chunk = &chunk[at + 1..];
                    self.discarding_line = false;
                }
            }
        }
        let mut start = 0;
        while let Some(at) = memchr::memchr(b'\n', &chunk[start..]) {
            let end = start + at;
            if self.buf.is_empty() {
                self.line(&chunk[start..end], &mut out);
            } else {
                let mut line = std::mem::take(&mut self.buf);
                line.extend_from_slice(&chunk[start..end]);
                self.line(&line, &mut out);
            }
            start = end + 1;
        }
        self.buf.extend_from_slice(&chunk[start..]);
        if self.size + self.buf.len() > self.max_event {
            if !self.skipping {
                out.push(Err(SseError::TooLarge {
                    limit: self.max_event,
                }));
            }
            self.drop_event();
            self.buf = Vec::new();
            self.discarding_line = true;
        }
        out
    }

    /// The stream ended: a last line without its newline, and a last event without its blank
    /// line, still count (a truncated JSON payload in it will not parse, so this is safe).
    pub fn finish(&mut self) -> Vec<Result<Event, SseError>> {
        let mut out = Vec::new();
        if !self.discarding_line && !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            self.line(&line, &mut out);
        }
        self.line(b"", &mut out);
        self.buf = Vec::new();
        self.discarding_line = false;
        out
    }

    /// Applies one line (without its newline); a blank line ends the event.
    fn line(&mut self, line: &[u8], out: &mut Vec<Result<Event, SseError>>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            let event = std::mem::take(&mut self.current);
            if self.has_data && !self.skipping {
                out.push(Ok(event));
            }
            self.reset();
            return;
        }
        if self.skipping {
            return;
        }
        self.size += line.len();
        if self.size > self.max_event {
            out.push(Err(SseError::TooLarge {
                limit: self.max_event,
            }));
            self.drop_event();
            return;
        }
        let Ok(line) = std::str::from_utf8(line) else {
            out.push(Err(SseError::NotUtf8));
            self.drop_event();
            return;
        };
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => value.clone_into(&mut self.current.event),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
    }

    fn drop_event(&mut self) {
        self.reset();
        self.skipping = true;
    }

    fn reset(&mut self) {
        self.current = Event::default();
        self.has_data = false;
        self.size = 0;
        self.skipping = false;
    }
}

/// Appends one event: `event: <name>` (when given), its data line and the blank line.
/// `data` must hold no newline (compact JSON never does).
pub fn write_event(out: &mut Vec<u8>, event: Option<&str>, data: &str) {
    if let Some(event) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(p: &mut SseParser, input: &[u8]) -> Vec<Result<Event, SseError>> {
        let mut out = p.push(input);
        out.extend(p.finish());
        out
    }

    fn ev(event: &str, data: &str) -> Result<Event, SseError> {
        Ok(Event {
            event: event.into(),
            data: data.into(),
        })
    }

    #[test]
    fn events_lf_and_crlf_and_comments() {
        let input = b": hello\r\nevent: a\r\ndata: 1\r\ndata:2\r\n\r\ndata: x\nid: 3\nretry: 5\n\nevent: nodata\n\n";
        let got = all(&mut SseParser::new(), input);
        assert_eq!(got, vec![ev("a", "1\n2"), ev("", "x")]);
    }

    #[test]
    fn any_split_gives_the_same_events() {
        let input = "event: é\r\ndata: {\"t\":\"日本語\"}\r\n\r\ndata: two\n\n".as_bytes();
        let whole = all(&mut SseParser::new(), input);
        assert_eq!(whole.len(), 2);
        for cut in 0..=input.len() {
            let mut p = SseParser::new();
            let mut got = p.push(&input[..cut]);
            got.extend(p.push(&input[cut..]));
            got.extend(p.finish());
            assert_eq!(got, whole, "cut at {cut}");
        }
        let mut p = SseParser::new();
        let mut got = Vec::new();
        for b in input {
            got.extend(p.push(std::slice::from_ref(b)));
        }
        got.extend(p.finish());
        assert_eq!(got, whole);
    }

    #[test]
    fn last_event_without_blank_line_counts() {
        assert_eq!(
            all(&mut SseParser::new(), b"data: [DONE]"),
            vec![ev("", "[DONE]")]
        );
        assert_eq!(
            all(&mut SseParser::new(), b"data: [DONE]\n"),
            vec![ev("", "[DONE]")]
        );
    }

    #[test]
    fn oversized_event_is_dropped_and_reading_goes_on() {
        let mut p = SseParser::with_limit(16);
        let mut got = p.push(b"data: 0123456789");
        got.extend(p.push(b"0123456789"));
        got.extend(p.push(b"more\ndata: x\n\ndata: ok\n\n"));
        got.extend(p.finish());
        assert_eq!(
            got,
            vec![Err(SseError::TooLarge { limit: 16 }), ev("", "ok")]
        );
        // Many short lines adding up.
        let mut p = SseParser::with_limit(16);
        let got = all(
            &mut p,
            b"data: 12345\ndata: 12345\ndata: 12345\n\ndata: ok\n\n",
        );
        assert_eq!(
            got,
            vec![Err(SseError::TooLarge { limit: 16 }), ev("", "ok")]
        );
    }

    #[test]
    fn not_utf8_is_dropped() {
        let got = all(&mut SseParser::new(), b"data: \xff\xfe\n\ndata: ok\n\n");
        assert_eq!(got, vec![Err(SseError::NotUtf8), ev("", "ok")]);
    }
}
