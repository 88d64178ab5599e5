//! A large JSON answer passed on as it arrives: the bytes of its `result` (or `error`) object
//! are cut out of the upstream's response body chunk by chunk, so that Sluice can wrap them in
//! a response with the client's id without ever holding the whole answer.
//!
//! [`MemberScanner`] walks the top-level JSON object byte by byte (strings and escapes
//! included) and says, for each chunk, which bytes belong to the wanted member's value.
//! Members may come in any order (the TypeScript SDK writes `result` before `id`).

use std::ops::Range;

use bytes::Bytes;

/// The top-level members whose value is the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    Result,
    Error,
}

/// An answer whose value arrives in pieces. `chunks` ends after the value's last byte; an
/// `Err` means the upstream's body broke off (the client's response is then cut short).
pub struct StreamedAnswer {
    pub member: Member,
    pub chunks: futures::stream::BoxStream<'static, Result<Bytes, String>>,
    /// Whether the value said `"isError": true` (known once `chunks` has ended).
    pub is_error: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for StreamedAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamedAnswer")
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

/// Finds the value of `result` or `error` in a JSON object given in chunks.
#[derive(Debug, Default)]
pub struct MemberScanner {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// Reading a top-level key.
    in_key: bool,
    key: Vec<u8>,
    /// After `"result":` / `"error":`, before the value's `{`.
    awaiting_value: Option<Member>,
    /// Inside the wanted value.
    in_value: Option<Member>,
    /// The wanted value has ended.
    done: bool,
    /// The last bytes seen inside the value, to find `"isError":true` across chunks.
    tail: Vec<u8>,
    is_error: bool,
}

/// What one chunk holds of the wanted value.
#[derive(Debug, PartialEq, Eq)]
pub struct Found {
    /// The member whose value starts in this chunk, if it does.
    pub starts: Option<Member>,
    /// The bytes of the chunk inside the value.
    pub range: Option<Range<usize>>,
    /// The value ends in this chunk.
    pub ends: bool,
}

const KEY_LIMIT: usize = 16;

impl MemberScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the value seen so far holds `"isError":true`.
    pub fn is_error(&self) -> bool {
        self.is_error
    }

    /// Whether the wanted value has ended.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Scan the next chunk. Inside strings (most of a tool's text) it jumps from quote to
    /// backslash with `memchr` rather than looking at every byte.
    pub fn scan(&mut self, chunk: &[u8]) -> Found {
        let mut found = Found {
            starts: None,
            range: None,
            ends: false,
        };
        let mut start = self.in_value.map(|_| 0);
        let mut i = 0;
        while i < chunk.len() && !self.done {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                    i += 1;
                    continue;
                }
                if !self.in_key {
                    match memchr::memchr2(b'"', b'\\', &chunk[i..]) {
                        Some(offset) => i += offset,
                        None => break,
                    }
                }
                match chunk[i] {
                    b'\\' => self.escaped = true,
                    b'"' => {
                        self.in_string = false;
                        self.in_key = false;
                    }
                    b if self.in_key && self.key.len() < KEY_LIMIT => self.key.push(b),
                    _ => {}
                }
                i += 1;
                continue;
            }
            match chunk[i] {
                b'"' => {
                    self.in_string = true;
                    if self.depth == 1 && self.awaiting_value.is_none() && self.in_value.is_none() {
                        self.in_key = true;
                        self.key.clear();
                    }
                }
                b':' if self.depth == 1 && self.in_value.is_none() => {
                    self.awaiting_value = match self.key.as_slice() {
                        b"result" => Some(Member::Result),
                        b"error" => Some(Member::Error),
                        _ => None,
                    };
                }
                b'{' | b'[' => {
                    if self.depth == 1
                        && let Some(member) = self.awaiting_value.take()
                    {
                        self.in_value = Some(member);
                        found.starts = Some(member);
                        start = Some(i);
                    }
                    self.depth += 1;
                }
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 1 && self.in_value.is_some() {
                        let from = start.unwrap_or(i);
                        found.range = Some(from..i + 1);
                        found.ends = true;
                        self.in_value = None;
                        self.done = true;
                        self.note(&chunk[from..i + 1]);
                        return found;
                    }
                }
                b',' if self.depth == 1 => self.awaiting_value = None,
                _ => {}
            }
            i += 1;
        }
        if let Some(from) = start
            && self.in_value.is_some()
        {
            found.range = Some(from..chunk.len());
            self.note(&chunk[from..]);
        }
        found
    }

    /// Look for an `"isError": true` member in the value's bytes (inside a JSON string a quote
    /// is escaped, so these bytes can only be a real member), across piece boundaries too.
    fn note(&mut self, bytes: &[u8]) {
        if self.is_error {
            return;
        }
        let mut joint = std::mem::take(&mut self.tail);
        joint.extend_from_slice(&bytes[..bytes.len().min(TAIL)]);
        if says_is_error(&joint) || says_is_error(bytes) {
            self.is_error = true;
        }
        self.tail = bytes[bytes.len().saturating_sub(TAIL)..].to_vec();
    }
}

/// Bytes kept from the end of one piece to find a member split across two.
const TAIL: usize = 32;

/// Finds the member name `"isError"` (a searcher is costly to build: built once).
pub(crate) static IS_ERROR: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"isError\""));

fn says_is_error(bytes: &[u8]) -> bool {
    IS_ERROR.find_iter(bytes).any(|at| {
        let rest = skip_space(&bytes[at + 9..]);
        rest.first() == Some(&b':') && skip_space(&rest[1..]).starts_with(b"true")
    })
}

fn skip_space(bytes: &[u8]) -> &[u8] {
    let n = bytes.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &bytes[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of(chunks: &[&str]) -> (Option<Member>, String, bool) {
        let mut scanner = MemberScanner::new();
        let mut member = None;
        let mut out = String::new();
        for chunk in chunks {
            let found = scanner.scan(chunk.as_bytes());
            member = member.or(found.starts);
            if let Some(range) = found.range {
                out.push_str(&chunk[range]);
            }
        }
        assert!(scanner.is_done());
        (member, out, scanner.is_error())
    }

    #[test]
    fn finds_the_result_in_any_member_order_and_chunking() {
        let body = r#"{"result":{"content":[{"type":"text","text":"a } \" { ]"}]},"jsonrpc":"2.0","id":7}"#;
        let (m, v, e) = value_of(&[body]);
        assert_eq!(m, Some(Member::Result));
        assert_eq!(v, r#"{"content":[{"type":"text","text":"a } \" { ]"}]}"#);
        assert!(!e);
        for split in 1..body.len() {
            let (m, v2, _) = value_of(&[&body[..split], &body[split..]]);
            assert_eq!(
                (m, v2.as_str()),
                (Some(Member::Result), v.as_str()),
                "split at {split}"
            );
        }
        let (_, v, _) =
            value_of(&[r#"{"jsonrpc":"2.0","id":"result","result" : {"x":[1,{"y":2}]}}"#]);
        assert_eq!(v, r#"{"x":[1,{"y":2}]}"#);
    }

    #[test]
    fn finds_errors_and_is_error() {
        let (m, v, _) =
            value_of(&[r#"{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"no"}}"#]);
        assert_eq!(m, Some(Member::Error));
        assert_eq!(v, r#"{"code":-1,"message":"no"}"#);
        let (_, _, e) = value_of(&[r#"{"id":1,"result":{"content":[],"isErr"#, r#"or": true}}"#]);
        assert!(e);
        let (_, _, e) = value_of(&[
            r#"{"id":1,"result":{"content":[{"type":"text","text":"\"isError\":true"}]}}"#,
        ]);
        assert!(!e, "inside a string it is escaped");
    }
}
