//! Reading newline-delimited text from a process that may misbehave: a line too long or not
//! UTF-8 is skipped and reported, and reading goes on.
//!
//! `tokio_util`'s `FramedRead` ends the stream after its decoder's first error, so a plain
//! `LinesCodec` would stop reading a child's stdout at its first bad line, leaving the child
//! blocked on a full pipe (or killed by SIGPIPE) while it still looks connected.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, LinesCodec, LinesCodecError};

/// A line, or why one was skipped.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Text(String),
    /// Longer than the limit; its bytes were discarded up to the next newline.
    TooLong,
    /// Not valid UTF-8.
    NotUtf8,
}

/// A `LinesCodec` with a length limit whose bad lines are items, not errors.
pub struct ForgivingLines(LinesCodec);

impl ForgivingLines {
    pub fn new(max_length: usize) -> Self {
        ForgivingLines(LinesCodec::new_with_max_length(max_length))
    }
}

impl Decoder for ForgivingLines {
    type Item = Line;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, std::io::Error> {
        forgive(self.0.decode(buf))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, std::io::Error> {
        forgive(self.0.decode_eof(buf))
    }
}

fn forgive(
    decoded: Result<Option<String>, LinesCodecError>,
) -> Result<Option<Line>, std::io::Error> {
    match decoded {
        Ok(line) => Ok(line.map(Line::Text)),
        Err(LinesCodecError::MaxLineLengthExceeded) => Ok(Some(Line::TooLong)),
        Err(LinesCodecError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            Ok(Some(Line::NotUtf8))
        }
        Err(LinesCodecError::Io(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio_util::codec::FramedRead;

    #[tokio::test]
    async fn bad_lines_are_skipped_and_reading_goes_on() {
        let input: &[u8] = b"one\n\xff\xfe\nxxxxxxxxxxxxxxxxxxxx\ntwo\n";
        let lines: Vec<Line> = FramedRead::new(input, ForgivingLines::new(8))
            .filter_map(|l| async move { l.ok() })
            .collect()
            .await;
        assert_eq!(
            lines,
            vec![
                Line::Text("one".into()),
                Line::NotUtf8,
                Line::TooLong,
                Line::Text("two".into())
            ]
        );
    }

    #[tokio::test]
    async fn a_long_line_in_many_reads_is_skipped_once() {
        let mut chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..200)
            .map(|_| Ok(bytes::Bytes::from(vec![b'x'; 65536])))
            .collect();
        chunks.push(Ok(bytes::Bytes::from_static(b"\ntwo\n")));
        let reader = tokio_util::io::StreamReader::new(futures::stream::iter(chunks));
        let lines: Vec<Line> = FramedRead::new(reader, ForgivingLines::new(1024))
            .filter_map(|l| async move { l.ok() })
            .collect()
            .await;
        assert_eq!(lines, vec![Line::TooLong, Line::Text("two".into())]);
    }
}
