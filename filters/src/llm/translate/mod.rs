//! Anthropic Messages ⇄ OpenAI Chat Completions, so that a client speaking one format can use a
//! provider speaking the other: request bodies ([`request`]), response bodies ([`response`]),
//! error bodies ([`error_body`], [`error_message`]) and event streams ([`StreamTranslator`]).
//!
//! Everything here is pure: JSON in, JSON (or bytes) out. Hostile or malformed input gives a
//! [`TranslateError`] naming the field, or for streams an error event, never a panic.

mod error;
mod request;
mod response;
pub mod sse;
mod stop;
mod stream;

pub use error::{client_status, error_body, error_message};
pub use request::request;
pub use response::response;
pub use stream::StreamTranslator;

/// A wire format of model traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Anthropic Messages (`/v1/messages`).
    Anthropic,
    /// OpenAI Chat Completions (`/v1/chat/completions`).
    OpenAi,
}

/// Why a body could not be translated.
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error("the body is not a JSON object")]
    NotAnObject,
    #[error("`{field}`: {reason}")]
    Invalid { field: String, reason: String },
}

/// A [`TranslateError::Invalid`] for `field`.
fn invalid(field: impl Into<String>, reason: impl Into<String>) -> TranslateError {
    TranslateError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A tool call id Anthropic accepts (`^[a-zA-Z0-9_-]+$`): other characters become `_`.
/// Applied the same way to `tool_use` ids and the `tool_result`s that refer to them, so the
/// pairs still match.
fn anthropic_tool_id(id: &str) -> String {
    if id.is_empty() {
        return "toolu_empty".to_owned();
    }
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Seconds since the epoch, for OpenAI's `created`.
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A short random token for ids a provider did not give.
fn nonce() -> String {
    use rand::Rng;
    let n: u64 = rand::rng().random();
    format!("{n:016x}")
}

/// The text of an Anthropic content value: a string, or the `text` of its text blocks joined by
/// `separator` (other blocks are skipped).
fn anthropic_text(content: &serde_json::Value, separator: &str) -> String {
    match content {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(|t| t.as_str()) == Some("text"))
            .filter_map(|b| b.get("text").and_then(|t| t.as_str()))
            .collect::<Vec<_>>()
            .join(separator),
        _ => String::new(),
    }
}

/// The text of an OpenAI content value: a string, or its `text` (and `refusal`) parts joined.
fn openai_text(content: &serde_json::Value, separator: &str) -> String {
    match content {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(parts) => parts
            .iter()
            .filter_map(|p| {
                p.get("text")
                    .or_else(|| p.get("refusal"))
                    .and_then(|t| t.as_str())
            })
            .collect::<Vec<_>>()
            .join(separator),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests;
