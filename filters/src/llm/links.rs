//! Linking a tool call to the model response that asked for it.
//!
//! When a model response carries `tool_use` blocks (or `tool_calls`) for tools Sluice serves,
//! they are remembered for a while under the caller's key, the tool's name and its arguments.
//! Claude Code names an MCP tool `mcp__<its name for the server>__<tool>`, and the name it gave
//! Sluice is unknown here, so a remembered name matches a catalog tool when it is
//! `mcp__<anything>__<tool>`. The `tools/call` that then arrives from the same key for that tool
//! with equal arguments (compared as JSON values) takes the oldest such entry: the link is made
//! once, and a second identical call is linked to the second identical `tool_use`.
//!
//! A link cannot be made when the client changes the arguments before calling, when the call
//! comes from another key than the model request, when it comes later than the window, or
//! when the model traffic does not pass through Sluice.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// At most this many remembered tool uses; the oldest go first.
const MAX_ENTRIES: usize = 100_000;

/// The LLM call and the `tool_use` a tool call answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The `request_id` of the LLM call's audit record.
    pub llm_request_id: String,
    pub tool_use_id: String,
}

#[derive(Debug)]
struct Entry {
    /// The name as the model wrote it (`mcp__sluice__docs__search`).
    name: String,
    link: Link,
    expires: Instant,
}

/// Remembered tool uses, by key and canonical arguments.
#[derive(Debug)]
pub struct ToolUseBook {
    window: Duration,
    inner: Mutex<Inner>,
    /// `inner.len`, readable without the lock: most tool calls find the book empty.
    len: AtomicUsize,
}

#[derive(Debug, Default)]
struct Inner {
    by_call: HashMap<(String, String), VecDeque<Entry>>,
    /// Insertion order, to drop the oldest when full.
    order: VecDeque<(String, String)>,
    len: usize,
}

impl ToolUseBook {
    pub fn new(window: Duration) -> Self {
        ToolUseBook {
            window,
            inner: Mutex::new(Inner::default()),
            len: AtomicUsize::new(0),
        }
    }

    /// Remember that the LLM call `llm_request_id` of `key` asked for tool `name` with `input`.
    /// Only MCP tools (`mcp__...`) are kept.
    pub fn remember(
        &self,
        key: &str,
        llm_request_id: &str,
        tool_use_id: &str,
        name: &str,
        input: &Value,
    ) {
        if !name.starts_with("mcp__") {
            return;
        }
        let call = (key.to_string(), canonical(input));
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *guard;
        while inner.len >= MAX_ENTRIES {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(entries) = inner.by_call.get_mut(&oldest)
                && entries.pop_front().is_some()
            {
                inner.len -= 1;
                if entries.is_empty() {
                    inner.by_call.remove(&oldest);
                }
            }
        }
        inner.order.push_back(call.clone());
        inner.len += 1;
        inner.by_call.entry(call).or_default().push_back(Entry {
            name: name.to_string(),
            link: Link {
                llm_request_id: llm_request_id.to_string(),
                tool_use_id: tool_use_id.to_string(),
            },
            expires: Instant::now() + self.window,
        });
        self.len.store(inner.len, Ordering::Relaxed);
    }

    /// Whether nothing is remembered (then a tool call need not parse its arguments).
    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Relaxed) == 0
    }

    /// The link for a `tools/call` of `key` to catalog tool `tool` with `arguments`, taken
    /// (it is not given twice).
    pub fn take(&self, key: &str, tool: &str, arguments: &Value) -> Option<Link> {
        let call = (key.to_string(), canonical(arguments));
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *guard;
        let entries = inner.by_call.get_mut(&call)?;
        let now = Instant::now();
        let before = entries.len();
        entries.retain(|e| e.expires > now);
        let position = entries.iter().position(|e| names_tool(&e.name, tool));
        let found = position.and_then(|i| entries.remove(i));
        let removed = before - entries.len();
        if entries.is_empty() {
            inner.by_call.remove(&call);
        }
        inner.len -= removed;
        self.len.store(inner.len, Ordering::Relaxed);
        found.map(|e| e.link)
    }
}

/// Whether Claude Code's name `mcp__<server>__<rest>` names catalog tool `tool`.
fn names_tool(model_name: &str, tool: &str) -> bool {
    model_name
        .strip_prefix("mcp__")
        .and_then(|rest| rest.split_once("__"))
        .is_some_and(|(_, rest)| rest == tool)
}

/// Arguments in one spelling: serde_json's maps are sorted, so equal values print alike.
fn canonical(value: &Value) -> String {
    match value {
        Value::Null => "{}".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_call_takes_the_matching_tool_use_once() {
        let book = ToolUseBook::new(Duration::from_secs(60));
        book.remember(
            "alice",
            "llm-1",
            "toolu_1",
            "mcp__sluice__everything__echo",
            &json!({"message": "hi", "a": 1}),
        );
        book.remember(
            "alice",
            "llm-1",
            "toolu_2",
            "Bash",
            &json!({"message": "hi", "a": 1}),
        );
        assert_eq!(
            book.take("bob", "everything__echo", &json!({"a": 1, "message": "hi"})),
            None
        );
        assert_eq!(
            book.take(
                "alice",
                "everything__add",
                &json!({"a": 1, "message": "hi"})
            ),
            None
        );
        let link = book
            .take(
                "alice",
                "everything__echo",
                &json!({"a": 1, "message": "hi"}),
            )
            .unwrap();
        assert_eq!(link.tool_use_id, "toolu_1");
        assert_eq!(link.llm_request_id, "llm-1");
        assert_eq!(
            book.take(
                "alice",
                "everything__echo",
                &json!({"a": 1, "message": "hi"})
            ),
            None
        );
    }

    #[test]
    fn entries_expire() {
        let book = ToolUseBook::new(Duration::ZERO);
        book.remember("alice", "llm-1", "toolu_1", "mcp__s__t", &json!({}));
        assert_eq!(book.take("alice", "t", &json!({})), None);
    }

    #[test]
    fn tool_names_with_double_underscores() {
        assert!(names_tool(
            "mcp__sluice__docs__search_page",
            "docs__search_page"
        ));
        assert!(!names_tool("mcp__sluice__docs__search_page", "search_page"));
        assert!(!names_tool("docs__search_page", "docs__search_page"));
    }
}
