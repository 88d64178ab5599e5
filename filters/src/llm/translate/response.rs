//! Non-streamed success response bodies: Anthropic message ⇄ OpenAI chat completion.

use serde_json::{Map, Value, json};

use super::request::parse_arguments;
use super::{Format, TranslateError, anthropic_tool_id, invalid, now, openai_text, stop};

/// A non-streamed success response body in `from`'s format turned into `to`'s. `model` is the
/// model name the client asked for (shown in the translated response).
pub fn response(
    body: &Value,
    from: Format,
    to: Format,
    model: &str,
) -> Result<Value, TranslateError> {
    let src = body.as_object().ok_or(TranslateError::NotAnObject)?;
    let mut out = match (from, to) {
        (Format::Anthropic, Format::OpenAi) => anthropic_to_openai(src),
        (Format::OpenAi, Format::Anthropic) => openai_to_anthropic(src)?,
        _ => src.clone(),
    };
    out.insert("model".into(), Value::String(model.to_owned()));
    Ok(Value::Object(out))
}

fn u64_at(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

/// OpenAI's `usage` from Anthropic's: cached and cache-written tokens are part of the prompt.
/// OpenAI has no word for cache writes (priced higher); like other gateways, they are also
/// given as `cache_creation_input_tokens`, which [`anthropic_usage`] and the observer read.
pub(crate) fn openai_usage(usage: &Value) -> Value {
    let cache_read = u64_at(usage, "/cache_read_input_tokens");
    let cache_write = u64_at(usage, "/cache_creation_input_tokens");
    let prompt = u64_at(usage, "/input_tokens")
        .saturating_add(cache_read)
        .saturating_add(cache_write);
    let completion = u64_at(usage, "/output_tokens");
    let mut openai = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt.saturating_add(completion),
        "prompt_tokens_details": {"cached_tokens": cache_read},
    });
    if cache_write > 0 {
        openai["cache_creation_input_tokens"] = json!(cache_write);
    }
    openai
}

/// Anthropic's `usage` from OpenAI's: OpenAI's prompt tokens include the cached ones.
pub(crate) fn anthropic_usage(usage: &Value) -> Value {
    let cached = u64_at(usage, "/prompt_tokens_details/cached_tokens");
    let written = u64_at(usage, "/cache_creation_input_tokens");
    json!({
        "input_tokens": u64_at(usage, "/prompt_tokens").saturating_sub(cached).saturating_sub(written),
        "output_tokens": u64_at(usage, "/completion_tokens"),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": written,
    })
}

fn anthropic_to_openai(src: &Map<String, Value>) -> Map<String, Value> {
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in src
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => calls.push(json!({
                "id": block.get("id").and_then(Value::as_str).unwrap_or_default(),
                "type": "function",
                "function": {
                    "name": block.get("name").and_then(Value::as_str).unwrap_or_default(),
                    "arguments": block.get("input").cloned().unwrap_or_else(|| json!({})).to_string(),
                },
            })),
            // thinking, redacted_thinking, server tool blocks.
            _ => {}
        }
    }
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) },
    });
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let finish = src
        .get("stop_reason")
        .and_then(Value::as_str)
        .map(stop::to_openai);
    let mut out = Map::new();
    out.insert("id".into(), src.get("id").cloned().unwrap_or(json!("")));
    out.insert("object".into(), json!("chat.completion"));
    out.insert("created".into(), json!(now()));
    out.insert(
        "choices".into(),
        json!([{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}]),
    );
    out.insert(
        "usage".into(),
        openai_usage(src.get("usage").unwrap_or(&Value::Null)),
    );
    out
}

fn openai_to_anthropic(src: &Map<String, Value>) -> Result<Map<String, Value>, TranslateError> {
    let choice = src
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| invalid("choices", "the response has no choice"))?;
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    let text = openai_text(message.get("content").unwrap_or(&Value::Null), "");
    let refusal = message.get("refusal").and_then(Value::as_str);
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    } else if let Some(refusal) = refusal {
        content.push(json!({"type": "text", "text": refusal}));
    }
    let calls = message.get("tool_calls").and_then(Value::as_array);
    for call in calls.into_iter().flatten() {
        let id = call.get("id").and_then(Value::as_str).unwrap_or_default();
        let arguments = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or_default();
        content.push(json!({
            "type": "tool_use",
            "id": anthropic_tool_id(id),
            "name": call.pointer("/function/name").and_then(Value::as_str).unwrap_or_default(),
            "input": parse_arguments(arguments),
        }));
    }
    let has_calls = calls.is_some_and(|c| !c.is_empty());
    let stop_reason = match choice.get("finish_reason").and_then(Value::as_str) {
        // Some servers say "stop" while calling tools.
        _ if has_calls => "tool_use",
        Some(f) => stop::to_anthropic(f),
        None if refusal.is_some() => "refusal",
        None => "end_turn",
    };
    let mut out = Map::new();
    out.insert("id".into(), src.get("id").cloned().unwrap_or(json!("")));
    out.insert("type".into(), json!("message"));
    out.insert("role".into(), json!("assistant"));
    out.insert("content".into(), Value::Array(content));
    out.insert("stop_reason".into(), json!(stop_reason));
    out.insert("stop_sequence".into(), Value::Null);
    out.insert(
        "usage".into(),
        anthropic_usage(src.get("usage").unwrap_or(&Value::Null)),
    );
    Ok(out)
}
