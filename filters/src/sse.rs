//! Server-sent events, both ways: a reader that turns a byte stream into events with a cap on
//! each event's size (an upstream that never ends an event gets an error, not Sluice's
//! memory), and the framing of the events Sluice writes downstream.

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};

/// One event: its `event:` name (empty for the default `message`) and its `data:` lines
/// joined with newlines.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

/// Why an event stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SseError {
    #[error("an event is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the stream broke: {0}")]
    Transport(String),
    #[error("an event is not valid UTF-8")]
    NotUtf8,
}

/// Reads events from a byte stream (an HTTP response body).
pub struct SseReader<S> {
    inner: S,
    buffer: BytesMut,
    max_event: usize,
    current: SseEvent,
    /// Bytes of `current` so far, for the cap.
    current_size: usize,
    /// Bytes at the start of `buffer` known to hold no newline: a long line arriving in many
    /// chunks is scanned once, not once per chunk.
    scanned: usize,
    done: bool,
}

impl<S, E> SseReader<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    pub fn new(inner: S, max_event: usize) -> Self {
        SseReader {
            inner,
            buffer: BytesMut::new(),
            max_event,
            current: SseEvent::default(),
            current_size: 0,
            scanned: 0,
            done: false,
        }
    }

    /// The byte stream, for reading what is left of it after the events wanted.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The next complete event; `None` when the stream ended.
    pub async fn next_event(&mut self) -> Option<Result<SseEvent, SseError>> {
        loop {
            while let Some(end) =
                memchr::memchr(b'\n', &self.buffer[self.scanned..]).map(|i| i + self.scanned)
            {
                self.scanned = 0;
                let line = self.buffer.split_to(end + 1);
                let line = strip_eol(&line);
                match self.take_line(line) {
                    Ok(Some(event)) => return Some(Ok(event)),
                    Ok(None) => {}
                    Err(e) => return Some(Err(e)),
                }
            }
            self.scanned = self.buffer.len();
            if self.buffer.len() + self.current_size > self.max_event {
                return Some(Err(SseError::TooLarge(self.max_event)));
            }
            if self.done {
                return None;
            }
            match self.inner.next().await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                Some(Err(e)) => return Some(Err(SseError::Transport(e.to_string()))),
                None => {
                    self.done = true;
                    // A last line without its newline still counts.
                    if !self.buffer.is_empty() {
                        self.buffer.extend_from_slice(b"\n");
                    }
                    self.buffer.extend_from_slice(b"\n");
                }
            }
        }
    }

    /// Apply one line; a blank line ends the event.
    fn take_line(&mut self, line: &[u8]) -> Result<Option<SseEvent>, SseError> {
        if line.is_empty() {
            self.current_size = 0;
            let event = std::mem::take(&mut self.current);
            if event.data.is_empty() && event.event.is_empty() {
                return Ok(None);
            }
            return Ok(Some(event));
        }
        self.current_size += line.len();
        if self.current_size > self.max_event {
            return Err(SseError::TooLarge(self.max_event));
        }
        let line = std::str::from_utf8(line).map_err(|_| SseError::NotUtf8)?;
        if line.starts_with(':') {
            return Ok(None);
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if !self.current.data.is_empty() {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
            }
            "event" => self.current.event = value.to_string(),
            "id" => self.current.id = Some(value.to_string()),
            _ => {}
        }
        Ok(None)
    }
}

fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// One `message` event carrying a JSON-RPC message, as Sluice writes it downstream.
pub fn message_event(json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + 24);
    out.extend_from_slice(b"event: message\ndata: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// A comment line that keeps an idle stream's connection alive through proxies.
pub fn keep_alive() -> Bytes {
    Bytes::from_static(b": keep-alive\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(
        chunks: &[&'static str],
        max: usize,
    ) -> SseReader<impl Stream<Item = Result<Bytes, String>> + Unpin> {
        let items: Vec<Result<Bytes, String>> = chunks
            .iter()
            .map(|c| Ok(Bytes::from_static(c.as_bytes())))
            .collect();
        SseReader::new(futures::stream::iter(items), max)
    }

    #[tokio::test]
    async fn reads_events_split_across_chunks() {
        let mut r = reader(
            &[
                "event: message\nda",
                "ta: {\"a\":1}\n\n: ping\n\ndata: x\r\ndata: y\r\n\r\n",
            ],
            1024,
        );
        let e = r.next_event().await.unwrap().unwrap();
        assert_eq!(e.event, "message");
        assert_eq!(e.data, "{\"a\":1}");
        let e = r.next_event().await.unwrap().unwrap();
        assert_eq!(e.data, "x\ny");
        assert!(r.next_event().await.is_none());
    }

    #[tokio::test]
    async fn an_endless_event_is_an_error() {
        let mut r = reader(
            &["data: aaaaaaaaaa", "aaaaaaaaaaaaaaaaaaaaa", "aaaaaaaaaa"],
            16,
        );
        assert!(matches!(
            r.next_event().await,
            Some(Err(SseError::TooLarge(16)))
        ));
        let mut r = reader(&["data: aaaaaaaaaa\n", "data: aaaaaaaaaaaa\n"], 16);
        assert!(matches!(
            r.next_event().await,
            Some(Err(SseError::TooLarge(16)))
        ));
    }

    #[tokio::test]
    async fn last_event_without_blank_line() {
        let mut r = reader(&["data: end"], 64);
        assert_eq!(r.next_event().await.unwrap().unwrap().data, "end");
    }

    #[test]
    fn frames_messages() {
        assert_eq!(&message_event(b"{}")[..], b"event: message\ndata: {}\n\n");
    }
}
