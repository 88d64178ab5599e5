//! Request bodies: Anthropic Messages ⇄ OpenAI Chat Completions.
//!
//! Parameters one side has and the other lacks (Anthropic's `top_k`, `thinking`,
//! `cache_control`; OpenAI's `response_format`, `logprobs`...) are dropped rather than refused,
//! so that clients like Claude Code work against either kind of provider.

use serde_json::{Map, Value, json};

use super::{Format, TranslateError, anthropic_text, anthropic_tool_id, invalid, openai_text};

/// Anthropic requires `max_tokens`; OpenAI clients often leave it out.
const DEFAULT_MAX_TOKENS: u64 = 4096;

/// A request body in `from`'s format turned into `to`'s, asking for `model`. When from == to,
/// only "model" is replaced. When `to` is OpenAI and "stream" is true, sets
/// "stream_options": {"include_usage": true} so usage arrives in the stream (for metering).
pub fn request(
    body: &Value,
    from: Format,
    to: Format,
    model: &str,
) -> Result<Value, TranslateError> {
    let src = body.as_object().ok_or(TranslateError::NotAnObject)?;
    let mut out = match (from, to) {
        (Format::Anthropic, Format::OpenAi) => anthropic_to_openai(src)?,
        (Format::OpenAi, Format::Anthropic) => openai_to_anthropic(src)?,
        _ => src.clone(),
    };
    out.insert("model".into(), Value::String(model.to_owned()));
    if to == Format::OpenAi && out.get("stream") == Some(&Value::Bool(true)) {
        let options = out.entry("stream_options").or_insert_with(|| json!({}));
        match options.as_object_mut() {
            Some(o) => {
                o.insert("include_usage".into(), Value::Bool(true));
            }
            None => *options = json!({"include_usage": true}),
        }
    }
    Ok(Value::Object(out))
}

// ---- Anthropic → OpenAI ----

fn anthropic_to_openai(src: &Map<String, Value>) -> Result<Map<String, Value>, TranslateError> {
    let mut messages = Vec::new();
    if let Some(system) = src.get("system") {
        if !(system.is_string() || system.is_array()) {
            return Err(invalid(
                "system",
                "must be a string or an array of text blocks",
            ));
        }
        let text = anthropic_text(system, "\n\n");
        if !text.is_empty() {
            messages.push(json!({"role": "system", "content": text}));
        }
    }
    let turns = src
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("messages", "must be an array of messages"))?;
    for (i, turn) in turns.iter().enumerate() {
        anthropic_turn_to_openai(turn, &format!("messages[{i}]"), &mut messages)?;
    }

    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(messages));
    for key in ["max_tokens", "temperature", "top_p", "stream"] {
        if let Some(v) = src.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(stops) = src.get("stop_sequences").and_then(Value::as_array)
        && !stops.is_empty()
    {
        out.insert("stop".into(), Value::Array(stops.clone()));
    }
    if let Some(user) = src
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        out.insert("user".into(), Value::String(user.to_owned()));
    }
    if let Some(tools) = src.get("tools") {
        let tools = anthropic_tools_to_openai(tools)?;
        if !tools.is_empty() {
            out.insert("tools".into(), Value::Array(tools));
            if let Some(choice) = src.get("tool_choice") {
                let (choice, parallel) = anthropic_tool_choice_to_openai(choice)?;
                out.insert("tool_choice".into(), choice);
                if !parallel {
                    out.insert("parallel_tool_calls".into(), Value::Bool(false));
                }
            }
        }
    }
    Ok(out)
}

/// One Anthropic message as one or more OpenAI messages (a user message's tool results become
/// `tool` messages, placed before the rest of it).
fn anthropic_turn_to_openai(
    turn: &Value,
    field: &str,
    out: &mut Vec<Value>,
) -> Result<(), TranslateError> {
    let role = turn.get("role").and_then(Value::as_str).unwrap_or_default();
    if role != "user" && role != "assistant" {
        return Err(invalid(
            format!("{field}.role"),
            "must be \"user\" or \"assistant\"",
        ));
    }
    let content = turn.get("content").unwrap_or(&Value::Null);
    match content {
        Value::String(text) => {
            out.push(json!({"role": role, "content": text}));
            Ok(())
        }
        Value::Array(blocks) if role == "user" => user_blocks_to_openai(blocks, field, out),
        Value::Array(blocks) => {
            assistant_blocks_to_openai(blocks, field, out);
            Ok(())
        }
        _ => Err(invalid(
            format!("{field}.content"),
            "must be a string or an array of content blocks",
        )),
    }
}

fn block_type(block: &Value) -> &str {
    block
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn user_blocks_to_openai(
    blocks: &[Value],
    field: &str,
    out: &mut Vec<Value>,
) -> Result<(), TranslateError> {
    let mut parts = Vec::new();
    // Images returned by tools: OpenAI's tool messages carry text only, so they go first in
    // the user message that follows the tool messages.
    let mut tool_images = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let field = format!("{field}.content[{j}]");
        match block_type(block) {
            "text" => {
                let text = block
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                parts.push(json!({"type": "text", "text": text}));
            }
            "image" => parts.push(image_to_openai(block, &field)?),
            "document" => parts.push(document_to_openai(block, &field)?),
            "tool_result" => {
                let id = block
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(format!("{field}.tool_use_id"), "must be a string"))?;
                let content = block.get("content").unwrap_or(&Value::Null);
                let mut text = anthropic_text(content, "\n");
                if block.get("is_error") == Some(&Value::Bool(true)) {
                    text = format!("Error: {text}");
                }
                if let Value::Array(inner) = content {
                    for (k, b) in inner.iter().enumerate() {
                        if block_type(b) == "image" {
                            tool_images.push(image_to_openai(b, &format!("{field}.content[{k}]"))?);
                        }
                    }
                }
                out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            // thinking, redacted_thinking, and server-side blocks OpenAI has no words for.
            other => tracing::debug!(block = other, "dropped an Anthropic block OpenAI lacks"),
        }
    }
    tool_images.append(&mut parts);
    let parts = tool_images;
    match parts.as_slice() {
        [] => {}
        [only] if block_type(only) == "text" => {
            out.push(json!({"role": "user", "content": only["text"]}));
        }
        _ => out.push(json!({"role": "user", "content": parts})),
    }
    Ok(())
}

fn assistant_blocks_to_openai(blocks: &[Value], field: &str, out: &mut Vec<Value>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in blocks {
        match block_type(block) {
            "text" => text.push_str(
                block
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            ),
            "tool_use" => {
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": block.get("id").and_then(Value::as_str).unwrap_or_default(),
                    "type": "function",
                    "function": {
                        "name": block.get("name").and_then(Value::as_str).unwrap_or_default(),
                        "arguments": input.to_string(),
                    },
                }));
            }
            other => tracing::debug!(block = other, %field, "dropped an Anthropic block"),
        }
    }
    if text.is_empty() && calls.is_empty() {
        return;
    }
    let mut message = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { Value::String(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    out.push(message);
}

fn image_to_openai(block: &Value, field: &str) -> Result<Value, TranslateError> {
    let source = block.get("source").unwrap_or(&Value::Null);
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media = source.get("media_type").and_then(Value::as_str);
            let data = source.get("data").and_then(Value::as_str);
            match (media, data) {
                (Some(media), Some(data)) => format!("data:{media};base64,{data}"),
                _ => {
                    return Err(invalid(
                        format!("{field}.source"),
                        "a base64 image needs `media_type` and `data`",
                    ));
                }
            }
        }
        Some("url") => source
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("{field}.source.url"), "must be a string"))?
            .to_owned(),
        _ => {
            return Err(invalid(
                format!("{field}.source.type"),
                "only base64 and url images can be sent to an OpenAI-format provider",
            ));
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn document_to_openai(block: &Value, field: &str) -> Result<Value, TranslateError> {
    let source = block.get("source").unwrap_or(&Value::Null);
    let data = source.get("data").and_then(Value::as_str);
    match (source.get("type").and_then(Value::as_str), data) {
        (Some("text"), Some(text)) => Ok(json!({"type": "text", "text": text})),
        (Some("base64"), Some(data)) => {
            let media = source
                .get("media_type")
                .and_then(Value::as_str)
                .unwrap_or("application/pdf");
            let name = block
                .get("title")
                .and_then(Value::as_str)
                .unwrap_or("document.pdf");
            Ok(json!({"type": "file", "file": {
                "filename": name,
                "file_data": format!("data:{media};base64,{data}"),
            }}))
        }
        _ => Err(invalid(
            format!("{field}.source"),
            "only base64 and text documents can be sent to an OpenAI-format provider",
        )),
    }
}

fn anthropic_tools_to_openai(tools: &Value) -> Result<Vec<Value>, TranslateError> {
    let tools = tools
        .as_array()
        .ok_or_else(|| invalid("tools", "must be an array"))?;
    let mut out = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        // Server tools (web_search_20250305, bash_20250124...) run at Anthropic only.
        if let Some(kind) = tool.get("type").and_then(Value::as_str)
            && kind != "custom"
        {
            tracing::debug!(tool = kind, "dropped an Anthropic server tool");
            continue;
        }
        let name = tool
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("tools[{i}].name"), "must be a string"))?;
        let mut function = json!({
            "name": name,
            "parameters": tool.get("input_schema").cloned().unwrap_or_else(empty_schema),
        });
        if let Some(d) = tool.get("description").and_then(Value::as_str) {
            function["description"] = Value::String(d.to_owned());
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(out)
}

fn empty_schema() -> Value {
    json!({"type": "object", "properties": {}})
}

/// OpenAI's `tool_choice`, and whether parallel tool calls stay allowed.
fn anthropic_tool_choice_to_openai(choice: &Value) -> Result<(Value, bool), TranslateError> {
    let parallel = choice.get("disable_parallel_tool_use") != Some(&Value::Bool(true));
    let openai = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => {
            let name = choice
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("tool_choice.name", "must be a string"))?;
            json!({"type": "function", "function": {"name": name}})
        }
        _ => {
            return Err(invalid(
                "tool_choice.type",
                "must be one of auto, any, tool, none",
            ));
        }
    };
    Ok((openai, parallel))
}

// ---- OpenAI → Anthropic ----

fn openai_to_anthropic(src: &Map<String, Value>) -> Result<Map<String, Value>, TranslateError> {
    if let Some(n) = src.get("n").and_then(Value::as_u64)
        && n > 1
    {
        return Err(invalid(
            "n",
            "only one choice (n = 1) can be asked of an Anthropic-format provider",
        ));
    }
    let messages = src
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("messages", "must be an array of messages"))?;
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let field = format!("messages[{i}]");
        let content = message.get("content").unwrap_or(&Value::Null);
        let (role, blocks) = match message.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => {
                let text = openai_text(content, "\n");
                if !text.is_empty() {
                    system.push(text);
                }
                continue;
            }
            Some("user") => ("user", user_content_to_anthropic(content, &field)?),
            Some("assistant") => ("assistant", assistant_to_anthropic(message, &field)?),
            Some("tool") => ("user", vec![tool_message_to_anthropic(message, &field)?]),
            _ => {
                return Err(invalid(
                    format!("{field}.role"),
                    "must be system, developer, user, assistant or tool",
                ));
            }
        };
        if blocks.is_empty() {
            continue;
        }
        // Anthropic wants the roles to alternate: merge neighbours of the same role.
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }

    let mut out = Map::new();
    if !system.is_empty() {
        out.insert("system".into(), Value::String(system.join("\n\n")));
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, mut blocks)| {
            // Tool results must come first in a user message.
            blocks.sort_by_key(|b| block_type(b) != "tool_result");
            json!({"role": role, "content": blocks})
        })
        .collect();
    out.insert("messages".into(), Value::Array(messages));
    let max_tokens = src
        .get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| src.get("max_tokens").and_then(Value::as_u64))
        .unwrap_or(DEFAULT_MAX_TOKENS);
    out.insert("max_tokens".into(), json!(max_tokens));
    if let Some(t) = src.get("temperature").and_then(Value::as_f64) {
        // OpenAI's range is 0..2, Anthropic's 0..1.
        out.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = src.get("top_p") {
        out.insert("top_p".into(), p.clone());
    }
    match src.get("stop") {
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(stops)) if !stops.is_empty() => {
            out.insert("stop_sequences".into(), Value::Array(stops.clone()));
        }
        _ => {}
    }
    if let Some(stream) = src.get("stream") {
        out.insert("stream".into(), stream.clone());
    }
    if let Some(user) = src.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    if let Some(tools) = src.get("tools") {
        let tools = openai_tools_to_anthropic(tools)?;
        if !tools.is_empty() {
            out.insert("tools".into(), Value::Array(tools));
            let serial = src.get("parallel_tool_calls") == Some(&Value::Bool(false));
            let mut choice = match src.get("tool_choice") {
                Some(choice) => openai_tool_choice_to_anthropic(choice)?,
                None if serial => json!({"type": "auto"}),
                None => Value::Null,
            };
            if serial && choice.get("type") != Some(&json!("none")) {
                choice["disable_parallel_tool_use"] = Value::Bool(true);
            }
            if !choice.is_null() {
                out.insert("tool_choice".into(), choice);
            }
        }
    }
    Ok(out)
}

fn text_block(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

fn user_content_to_anthropic(content: &Value, field: &str) -> Result<Vec<Value>, TranslateError> {
    let parts = match content {
        Value::String(s) if s.is_empty() => return Ok(Vec::new()),
        Value::String(s) => return Ok(vec![text_block(s)]),
        Value::Array(parts) => parts,
        _ => {
            return Err(invalid(
                format!("{field}.content"),
                "must be a string or an array of content parts",
            ));
        }
    };
    let mut blocks = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let field = format!("{field}.content[{j}]");
        match block_type(part) {
            "text" => {
                let text = part.get("text").and_then(Value::as_str).unwrap_or_default();
                // Anthropic refuses empty text blocks.
                if !text.is_empty() {
                    blocks.push(text_block(text));
                }
            }
            "image_url" => {
                let url = part
                    .get("image_url")
                    .and_then(|i| i.get("url").or(Some(i)))
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(format!("{field}.image_url.url"), "must be a string"))?;
                blocks.push(json!({"type": "image", "source": url_source(url)}));
            }
            "file" => {
                let data = part
                    .pointer("/file/file_data")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        invalid(
                            format!("{field}.file.file_data"),
                            "only inline files (file_data) can be sent to an Anthropic-format provider",
                        )
                    })?;
                blocks.push(json!({"type": "document", "source": url_source(data)}));
            }
            other => {
                return Err(invalid(
                    format!("{field}.type"),
                    format!(
                        "content parts of type {other:?} cannot be sent to an Anthropic-format provider"
                    ),
                ));
            }
        }
    }
    Ok(blocks)
}

/// An Anthropic `source` for a URL: `data:` URLs become base64 sources.
fn url_source(url: &str) -> Value {
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((media, data)) = rest.split_once(";base64,")
    {
        return json!({"type": "base64", "media_type": media, "data": data});
    }
    json!({"type": "url", "url": url})
}

fn assistant_to_anthropic(message: &Value, field: &str) -> Result<Vec<Value>, TranslateError> {
    let mut blocks = Vec::new();
    let text = openai_text(message.get("content").unwrap_or(&Value::Null), "");
    if !text.is_empty() {
        blocks.push(text_block(&text));
    }
    if let Some(calls) = message.get("tool_calls") {
        let calls = calls
            .as_array()
            .ok_or_else(|| invalid(format!("{field}.tool_calls"), "must be an array"))?;
        for (k, call) in calls.iter().enumerate() {
            let id = call.get("id").and_then(Value::as_str).ok_or_else(|| {
                invalid(format!("{field}.tool_calls[{k}].id"), "must be a string")
            })?;
            let name = call
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    invalid(
                        format!("{field}.tool_calls[{k}].function.name"),
                        "must be a string",
                    )
                })?;
            let arguments = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or_default();
            blocks.push(json!({
                "type": "tool_use",
                "id": anthropic_tool_id(id),
                "name": name,
                "input": parse_arguments(arguments),
            }));
        }
    }
    Ok(blocks)
}

/// A tool call's `arguments` string as an object. Models sometimes write invalid JSON here; the
/// conversation goes on with `{}` rather than failing.
pub(crate) fn parse_arguments(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            tracing::debug!("tool call arguments are not a JSON object; sent as {{}}");
            json!({})
        }
    }
}

fn tool_message_to_anthropic(message: &Value, field: &str) -> Result<Value, TranslateError> {
    let id = message
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{field}.tool_call_id"), "must be a string"))?;
    let text = openai_text(message.get("content").unwrap_or(&Value::Null), "\n");
    let mut block = json!({"type": "tool_result", "tool_use_id": anthropic_tool_id(id)});
    if !text.is_empty() {
        block["content"] = Value::String(text);
    }
    Ok(block)
}

fn openai_tools_to_anthropic(tools: &Value) -> Result<Vec<Value>, TranslateError> {
    let tools = tools
        .as_array()
        .ok_or_else(|| invalid("tools", "must be an array"))?;
    let mut out = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        if block_type(tool) != "function" {
            tracing::debug!("dropped an OpenAI tool that is not a function");
            continue;
        }
        let function = tool.get("function").unwrap_or(&Value::Null);
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("tools[{i}].function.name"), "must be a string"))?;
        let mut anthropic = json!({
            "name": name,
            "input_schema": function.get("parameters").cloned().unwrap_or_else(empty_schema),
        });
        if let Some(d) = function.get("description").and_then(Value::as_str) {
            anthropic["description"] = Value::String(d.to_owned());
        }
        out.push(anthropic);
    }
    Ok(out)
}

fn openai_tool_choice_to_anthropic(choice: &Value) -> Result<Value, TranslateError> {
    match choice {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(json!({"type": "auto"})),
            "required" => Ok(json!({"type": "any"})),
            "none" => Ok(json!({"type": "none"})),
            _ => Err(invalid(
                "tool_choice",
                "must be auto, required, none or a function",
            )),
        },
        Value::Object(_) => {
            let name = choice
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("tool_choice.function.name", "must be a string"))?;
            Ok(json!({"type": "tool", "name": name}))
        }
        _ => Err(invalid("tool_choice", "must be a string or an object")),
    }
}
