//! The client-facing LLM APIs Sluice serves, by path.

use crate::llm::translate::Format;

/// One of the LLM endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST /v1/messages` (Anthropic Messages).
    Messages,
    /// `POST /v1/messages/count_tokens`.
    CountTokens,
    /// `POST /v1/chat/completions` (OpenAI Chat Completions).
    ChatCompletions,
    /// `GET /v1/models`.
    Models,
}

impl Api {
    /// The endpoint served at `path` (query string already removed), if any.
    pub fn from_path(path: &str) -> Option<Api> {
        match path.trim_end_matches('/') {
            "/v1/messages" => Some(Api::Messages),
            "/v1/messages/count_tokens" => Some(Api::CountTokens),
            "/v1/chat/completions" | "/chat/completions" => Some(Api::ChatCompletions),
            "/v1/models" | "/models" => Some(Api::Models),
            _ => None,
        }
    }

    /// The format the client speaks, and expects errors in.
    pub fn format(self) -> Format {
        match self {
            Api::Messages | Api::CountTokens => Format::Anthropic,
            Api::ChatCompletions | Api::Models => Format::OpenAi,
        }
    }

    /// The `method` of its audit records, and the `route` label of metrics.
    pub fn label(self) -> &'static str {
        match self {
            Api::Messages => "llm/messages",
            Api::CountTokens => "llm/count_tokens",
            Api::ChatCompletions => "llm/chat_completions",
            Api::Models => "llm/models",
        }
    }
}
