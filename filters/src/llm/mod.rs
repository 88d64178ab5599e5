//! Model traffic: `/v1/messages`, `/v1/messages/count_tokens`, `/v1/chat/completions` and
//! `/v1/models`, routed to LLM providers with fallback, translated between the Anthropic and
//! OpenAI formats, metered into budgets and the audit log.
//!
//! - [`translate`]: Anthropic Messages ⇄ OpenAI Chat Completions, bodies and event streams.
//! - [`observe`]: usage, `tool_use` blocks and stop reasons read from responses as they pass.
//! - [`bedrock`]: SigV4 signing and the event-stream framing of Amazon Bedrock.

pub mod bedrock;
pub mod observe;
pub mod translate;
