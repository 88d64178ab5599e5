//! Translations checked end to end: realistic bodies both ways, round trips, whole streams.

use serde_json::{Value, json};

use super::sse::SseParser;
use super::*;

const A: Format = Format::Anthropic;
const O: Format = Format::OpenAi;

/// A Claude Code-like request: system blocks with cache_control, tools, a tool_use/tool_result
/// round, an image, thinking.
fn claude_code_request() -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "stream": true,
        "temperature": 1,
        "top_k": 40,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "metadata": {"user_id": "user_abc"},
        "stop_sequences": ["</done>"],
        "system": [
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
            {"type": "text", "text": "Use the tools.", "cache_control": {"type": "ephemeral"}}
        ],
        "tools": [
            {"name": "Read", "description": "Read a file",
             "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}},
                              "required": ["file_path"]},
             "cache_control": {"type": "ephemeral"}},
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
        ],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                {"type": "text", "text": "What is in main.rs? See the screenshot.",
                 "cache_control": {"type": "ephemeral"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Let me read it.", "signature": "sig"},
                {"type": "text", "text": "I'll read the file."},
                {"type": "tool_use", "id": "toolu_01A", "name": "Read", "input": {"file_path": "src/main.rs"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A",
                 "content": [{"type": "text", "text": "fn main() {}"}]},
                {"type": "text", "text": "Explain it."}
            ]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_01B", "name": "Read", "input": {"file_path": "nope"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01B", "is_error": true, "content": "No such file"}
            ]}
        ]
    })
}

#[test]
fn anthropic_request_to_openai() {
    let got = request(&claude_code_request(), A, O, "gpt-4o").unwrap();
    let expected = json!({
        "model": "gpt-4o",
        "max_tokens": 32000,
        "stream": true,
        "stream_options": {"include_usage": true},
        "temperature": 1,
        "user": "user_abc",
        "stop": ["</done>"],
        "tools": [{"type": "function", "function": {
            "name": "Read", "description": "Read a file",
            "parameters": {"type": "object", "properties": {"file_path": {"type": "string"}},
                           "required": ["file_path"]}}}],
        "tool_choice": "auto",
        "parallel_tool_calls": false,
        "messages": [
            {"role": "system", "content": "You are Claude Code, Anthropic's official CLI for Claude.\n\nUse the tools."},
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                {"type": "text", "text": "What is in main.rs? See the screenshot."},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]},
            {"role": "assistant", "content": "I'll read the file.", "tool_calls": [
                {"id": "toolu_01A", "type": "function",
                 "function": {"name": "Read", "arguments": "{\"file_path\":\"src/main.rs\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "toolu_01A", "content": "fn main() {}"},
            {"role": "user", "content": "Explain it."},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "toolu_01B", "type": "function",
                 "function": {"name": "Read", "arguments": "{\"file_path\":\"nope\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "toolu_01B", "content": "Error: No such file"}
        ]
    });
    assert_eq!(got, expected);
}

fn openai_request() -> Value {
    json!({
        "model": "gpt-4o",
        "n": 1,
        "temperature": 1.5,
        "max_completion_tokens": 1000,
        "stop": "END",
        "user": "u1",
        "stream": true,
        "parallel_tool_calls": false,
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "required",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather in Paris and Oslo?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/map.png", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "functions.get_weather:1", "type": "function", "function": {"name": "get_weather", "arguments": "not json"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "functions.get_weather:1", "content": [{"type": "text", "text": "9C"}]},
            {"role": "user", "content": "Thanks"},
            {"role": "user", "content": "And tomorrow?"}
        ]
    })
}

#[test]
fn openai_request_to_anthropic() {
    let got = request(&openai_request(), O, A, "claude-sonnet-4-5").unwrap();
    let expected = json!({
        "model": "claude-sonnet-4-5",
        "system": "Be brief.\n\nUse metric.",
        "max_tokens": 1000,
        "temperature": 1.0,
        "stop_sequences": ["END"],
        "stream": true,
        "metadata": {"user_id": "u1"},
        "tools": [{"name": "get_weather", "description": "Weather for a city",
                   "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Weather in Paris and Oslo?"},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/map.png"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}}
            ]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "functions_get_weather_1", "name": "get_weather", "input": {}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "functions_get_weather_1", "content": "9C"},
                {"type": "text", "text": "Thanks"},
                {"type": "text", "text": "And tomorrow?"}
            ]}
        ]
    });
    assert_eq!(got, expected);
}

#[test]
fn openai_request_details() {
    // No max tokens: Anthropic's required field gets a default.
    let body = json!({"messages": [{"role": "user", "content": "hi"}]});
    let got = request(&body, O, A, "m").unwrap();
    assert_eq!(got["max_tokens"], 4096);
    assert!(got.get("stream").is_none());
    // Tool results after user text are moved first.
    let body = json!({"messages": [
        {"role": "assistant", "content": "x", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"role": "user", "content": "before"},
        {"role": "tool", "tool_call_id": "c", "content": ""}
    ]});
    let got = request(&body, O, A, "m").unwrap();
    assert_eq!(
        got["messages"][1]["content"],
        json!([{"type": "tool_result", "tool_use_id": "c"}, {"type": "text", "text": "before"}])
    );
    assert_eq!(got["messages"][0]["content"][1]["input"], json!({}));
    // n > 1 cannot be served.
    let body = json!({"n": 2, "messages": []});
    let err = request(&body, O, A, "m").unwrap_err().to_string();
    assert!(err.contains("`n`"), "{err}");
    // tool_choice forms.
    for (choice, expected) in [
        (json!("auto"), json!({"type": "auto"})),
        (json!("none"), json!({"type": "none"})),
        (
            json!({"type": "function", "function": {"name": "f"}}),
            json!({"type": "tool", "name": "f"}),
        ),
    ] {
        let body = json!({"messages": [], "tool_choice": choice,
                          "tools": [{"type": "function", "function": {"name": "f"}}]});
        let got = request(&body, O, A, "m").unwrap();
        assert_eq!(got["tool_choice"], expected);
        assert_eq!(
            got["tools"][0]["input_schema"],
            json!({"type": "object", "properties": {}})
        );
    }
}

#[test]
fn anthropic_request_details() {
    for (choice, expected) in [
        (json!({"type": "any"}), json!("required")),
        (json!({"type": "none"}), json!("none")),
        (
            json!({"type": "tool", "name": "f"}),
            json!({"type": "function", "function": {"name": "f"}}),
        ),
    ] {
        let body = json!({"max_tokens": 5, "messages": [], "tool_choice": choice,
                          "tools": [{"name": "f", "input_schema": {"type": "object"}}]});
        let got = request(&body, A, O, "m").unwrap();
        assert_eq!(got["tool_choice"], expected);
        assert!(got.get("parallel_tool_calls").is_none());
    }
    // Only server tools: no tools at all, and no tool_choice.
    let body = json!({"messages": [], "tool_choice": {"type": "auto"},
                      "tools": [{"type": "bash_20250124", "name": "bash"}]});
    let got = request(&body, A, O, "m").unwrap();
    assert!(got.get("tools").is_none() && got.get("tool_choice").is_none());
    // Image by URL, a PDF, tool results carrying an image, and a thinking-only turn.
    let body = json!({"messages": [
        {"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"}}
        ]},
        {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "xx"}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": [
                {"type": "text", "text": "shot:"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}
            ]}
        ]}
    ]});
    let got = request(&body, A, O, "m").unwrap();
    assert_eq!(
        got["messages"],
        json!([
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                {"type": "file", "file": {"filename": "document.pdf", "file_data": "data:application/pdf;base64,JVBER"}}
            ]},
            {"role": "tool", "tool_call_id": "t", "content": "shot:"},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}
            ]}
        ])
    );
}

#[test]
fn bad_requests_are_errors_naming_the_field() {
    assert!(matches!(
        request(&json!([1]), A, O, "m"),
        Err(TranslateError::NotAnObject)
    ));
    let cases = [
        (json!({}), A, "messages"),
        (
            json!({"messages": [{"role": "system", "content": "x"}]}),
            A,
            "messages[0].role",
        ),
        (
            json!({"messages": [{"role": "user", "content": 5}]}),
            A,
            "messages[0].content",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}),
            A,
            "messages[0].content[0].source.type",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}),
            A,
            "messages[0].content[0].tool_use_id",
        ),
        (
            json!({"messages": [], "tools": [{"input_schema": {}}]}),
            A,
            "tools[0].name",
        ),
        (
            json!({"messages": [{"role": "function", "content": "x"}]}),
            O,
            "messages[0].role",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
            O,
            "messages[0].content[0].type",
        ),
        (
            json!({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]}),
            O,
            "messages[0].tool_calls[0].id",
        ),
        (
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            O,
            "messages[0].tool_call_id",
        ),
    ];
    for (body, from, field) in cases {
        let to = if from == A { O } else { A };
        match request(&body, from, to, "m") {
            Err(TranslateError::Invalid { field: f, .. }) => assert_eq!(f, field, "{body}"),
            other => panic!("{body}: {other:?}"),
        }
    }
}

#[test]
fn same_format_replaces_only_the_model() {
    let body = claude_code_request();
    let got = request(&body, A, A, "claude-opus-4-1").unwrap();
    let mut expected = body.clone();
    expected["model"] = json!("claude-opus-4-1");
    assert_eq!(got, expected);

    let body = json!({"model": "a", "stream": true, "stream_options": {"x": 1}, "messages": []});
    let got = request(&body, O, O, "b").unwrap();
    assert_eq!(
        got,
        json!({"model": "b", "stream": true, "stream_options": {"x": 1, "include_usage": true}, "messages": []})
    );
}

#[test]
fn request_round_trips() {
    // Anthropic → OpenAI → Anthropic keeps the conversation (thinking and server tools go).
    let original = claude_code_request();
    let back = request(&request(&original, A, O, "gpt").unwrap(), O, A, "claude").unwrap();
    assert_eq!(
        back["system"],
        original["system"][0]["text"].as_str().unwrap().to_owned() + "\n\nUse the tools."
    );
    assert_eq!(back["messages"].as_array().unwrap().len(), 5);
    assert_eq!(
        back["messages"][1]["content"][1],
        json!({"type": "tool_use", "id": "toolu_01A", "name": "Read", "input": {"file_path": "src/main.rs"}})
    );
    assert_eq!(
        back["messages"][2]["content"][0],
        json!({"type": "tool_result", "tool_use_id": "toolu_01A", "content": "fn main() {}"})
    );
    assert_eq!(
        back["tools"][0]["input_schema"],
        original["tools"][0]["input_schema"]
    );
    assert_eq!(
        back["tool_choice"],
        json!({"type": "auto", "disable_parallel_tool_use": true})
    );
    assert_eq!(back["max_tokens"], 32000);

    // OpenAI → Anthropic → OpenAI.
    let original = openai_request();
    let back = request(&request(&original, O, A, "c").unwrap(), A, O, "gpt").unwrap();
    assert_eq!(
        back["messages"][0],
        json!({"role": "system", "content": "Be brief.\n\nUse metric."})
    );
    assert_eq!(
        back["messages"][1]["content"],
        json!([
            {"type": "text", "text": "Weather in Paris and Oslo?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/map.png"}},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}
        ])
    );
    assert_eq!(
        back["messages"][3],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "18C"})
    );
    assert_eq!(back["tools"], original["tools"]);
    assert_eq!(back["tool_choice"], "required");
    assert_eq!(back["parallel_tool_calls"], false);
}

fn anthropic_response() -> Value {
    json!({
        "id": "msg_01XFD", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Checking the weather."},
            {"type": "tool_use", "id": "toolu_01T", "name": "get_weather", "input": {"city": "Paris"}}
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 100, "output_tokens": 20, "cache_read_input_tokens": 50, "cache_creation_input_tokens": 10}
    })
}

fn openai_response() -> Value {
    json!({
        "id": "chatcmpl-123", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Checking.", "refusal": null,
            "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
            "logprobs": null, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 160, "completion_tokens": 20, "total_tokens": 180,
                  "prompt_tokens_details": {"cached_tokens": 50}}
    })
}

#[test]
fn anthropic_response_to_openai() {
    let mut got = response(&anthropic_response(), A, O, "my-model").unwrap();
    assert!(got["created"].as_u64().unwrap() > 1_600_000_000);
    got["created"] = json!(0);
    assert_eq!(
        got,
        json!({
            "id": "msg_01XFD", "object": "chat.completion", "created": 0, "model": "my-model",
            "choices": [{"index": 0, "logprobs": null, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Checking the weather.",
                "tool_calls": [{"id": "toolu_01T", "type": "function",
                                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
            "usage": {"prompt_tokens": 160, "completion_tokens": 20, "total_tokens": 180,
                      "prompt_tokens_details": {"cached_tokens": 50}, "cache_creation_input_tokens": 10}
        })
    );
}

#[test]
fn openai_response_to_anthropic() {
    let got = response(&openai_response(), O, A, "my-model").unwrap();
    assert_eq!(
        got,
        json!({
            "id": "chatcmpl-123", "type": "message", "role": "assistant", "model": "my-model",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_9", "name": "get_weather", "input": {"city": "Oslo"}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 110, "output_tokens": 20, "cache_read_input_tokens": 50, "cache_creation_input_tokens": 0}
        })
    );
    // Stop reasons, refusals, null content.
    for (finish, stop) in [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("content_filter", "refusal"),
    ] {
        let body = json!({"id": "x", "choices": [{"message": {"content": null}, "finish_reason": finish}]});
        let got = response(&body, O, A, "m").unwrap();
        assert_eq!(got["stop_reason"], stop);
        assert_eq!(got["content"], json!([]));
    }
    let body = json!({"choices": [{"message": {"content": null, "refusal": "I can't."}, "finish_reason": null}]});
    let got = response(&body, O, A, "m").unwrap();
    assert_eq!(
        got["content"],
        json!([{"type": "text", "text": "I can't."}])
    );
    assert_eq!(got["stop_reason"], "refusal");
    assert!(matches!(
        response(&json!({"choices": []}), O, A, "m"),
        Err(TranslateError::Invalid { .. })
    ));
}

#[test]
fn response_round_trips() {
    let back = response(
        &response(&anthropic_response(), A, O, "m").unwrap(),
        O,
        A,
        "m",
    )
    .unwrap();
    let original = anthropic_response();
    assert_eq!(
        back["content"],
        json!([original["content"][1], original["content"][2]])
    );
    assert_eq!(back["stop_reason"], "tool_use");
    assert_eq!(back["usage"], original["usage"]);
    let same = response(&anthropic_response(), A, A, "alias").unwrap();
    assert_eq!(same["model"], "alias");
    assert_eq!(same["content"], original["content"]);
}

// ---- streams ----

/// An OpenAI stream: text, two tool calls, finish, usage chunk, [DONE].
fn openai_stream() -> String {
    let chunk = |choices: Value| json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o", "choices": choices});
    let mut s = String::new();
    let mut push = |v: Value| s.push_str(&format!("data: {v}\n\n"));
    push(chunk(
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
    ));
    push(chunk(
        json!([{"index": 0, "delta": {"content": "Hello"}, "finish_reason": null}]),
    ));
    push(chunk(
        json!([{"index": 0, "delta": {"content": " wörld 日本"}, "finish_reason": null}]),
    ));
    push(chunk(
        json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}, "finish_reason": null}]),
    ));
    push(chunk(
        json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}, "finish_reason": null}]),
    ));
    push(chunk(
        json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}, "finish_reason": null}]),
    ));
    push(chunk(
        json!([{"index": 0, "delta": {"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}, "finish_reason": null}]),
    ));
    push(chunk(
        json!([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]),
    ));
    let mut usage = chunk(json!([]));
    usage["usage"] = json!({"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42, "prompt_tokens_details": {"cached_tokens": 10}});
    push(usage);
    s.push_str("data: [DONE]\n\n");
    s
}

/// An Anthropic stream: thinking, text, a tool_use, ping, message_delta with usage.
fn anthropic_stream() -> String {
    let mut s = String::new();
    let mut push = |v: Value| {
        s.push_str(&format!(
            "event: {}\r\ndata: {v}\r\n\r\n",
            v["type"].as_str().unwrap()
        ))
    };
    push(
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 0, "output_tokens": 1}}}),
    );
    push(
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
    );
    push(
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
    );
    push(
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig"}}),
    );
    push(json!({"type": "content_block_stop", "index": 0}));
    push(
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
    );
    push(json!({"type": "ping"}));
    push(
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Let me check é."}}),
    );
    push(json!({"type": "content_block_stop", "index": 1}));
    push(
        json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}}),
    );
    push(
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}}),
    );
    push(
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Par"}}),
    );
    push(
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "is\"}"}}),
    );
    push(json!({"type": "content_block_stop", "index": 2}));
    push(
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 89}}),
    );
    push(json!({"type": "message_stop"}));
    s
}

fn translate_whole(from: Format, to: Format, input: &[u8]) -> Vec<u8> {
    let mut t = StreamTranslator::new(from, to, "client-model").deterministic();
    let mut out = Vec::new();
    t.push(input, &mut out);
    t.finish(&mut out);
    out
}

/// Events of an SSE byte stream: (event name, JSON data or the raw data string).
fn events(bytes: &[u8]) -> Vec<(String, Value)> {
    let mut p = SseParser::new();
    let mut all = p.push(bytes);
    all.extend(p.finish());
    all.into_iter()
        .map(|e| {
            let e = e.unwrap();
            let data = serde_json::from_str(&e.data).unwrap_or(Value::String(e.data));
            (e.event, data)
        })
        .collect()
}

/// Checks the Anthropic event grammar: message_start first, blocks opened and closed in index
/// order with deltas only inside, message_delta then message_stop last (or an error last).
fn assert_valid_anthropic(bytes: &[u8]) {
    let evs = events(bytes);
    assert!(!evs.is_empty());
    let mut open: Option<u64> = None;
    let mut next = 0;
    let mut started = false;
    let mut delta_seen = false;
    for (i, (name, data)) in evs.iter().enumerate() {
        assert_eq!(
            name,
            data["type"].as_str().unwrap(),
            "event name matches type"
        );
        let last = i == evs.len() - 1;
        match name.as_str() {
            "error" => assert!(last, "error is last"),
            "message_start" => {
                assert_eq!(i, 0);
                started = true;
            }
            "content_block_start" => {
                assert!(started && open.is_none() && !delta_seen);
                assert_eq!(data["index"], next);
                open = Some(next);
                next += 1;
            }
            "content_block_delta" => assert_eq!(Some(data["index"].as_u64().unwrap()), open),
            "content_block_stop" => {
                assert_eq!(Some(data["index"].as_u64().unwrap()), open);
                open = None;
            }
            "message_delta" => {
                assert!(open.is_none() && !delta_seen);
                assert!(data["delta"]["stop_reason"].is_string());
                delta_seen = true;
            }
            "message_stop" => assert!(last && delta_seen),
            "ping" => {}
            other => panic!("unexpected event {other}"),
        }
    }
}

#[test]
fn openai_stream_to_anthropic() {
    let out = translate_whole(O, A, openai_stream().as_bytes());
    assert_valid_anthropic(&out);
    let evs = events(&out);
    let data: Vec<Value> = evs.into_iter().map(|e| e.1).collect();
    assert_eq!(
        data,
        vec![
            json!({"type": "message_start", "message": {"id": "chatcmpl-1", "type": "message", "role": "assistant", "model": "client-model", "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " wörld 日本"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "call_b", "name": "get_time", "input": {}}}),
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
            json!({"type": "content_block_stop", "index": 2}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                   "usage": {"input_tokens": 20, "output_tokens": 12, "cache_read_input_tokens": 10, "cache_creation_input_tokens": 0}}),
            json!({"type": "message_stop"}),
        ]
    );
}

#[test]
fn anthropic_stream_to_openai() {
    let out = translate_whole(A, O, anthropic_stream().as_bytes());
    let evs = events(&out);
    assert!(evs.iter().all(|(name, _)| name.is_empty()));
    let data: Vec<Value> = evs.into_iter().map(|e| e.1).collect();
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "msg_1", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "client-model",
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    };
    assert_eq!(
        data,
        vec![
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(json!({"content": "Let me check é."}), Value::Null),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
                Value::Null
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": \"Par"}}]}),
                Value::Null
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "is\"}"}}]}),
                Value::Null
            ),
            chunk(json!({}), json!("tool_calls")),
            json!({"id": "msg_1", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "client-model", "choices": [],
                   "usage": {"prompt_tokens": 125, "completion_tokens": 89, "total_tokens": 214, "prompt_tokens_details": {"cached_tokens": 100}}}),
            json!("[DONE]"),
        ]
    );
}

/// The output is the same however the input is split: at every offset in two, and byte by byte.
fn assert_split_invariant(from: Format, to: Format, input: &[u8]) {
    let whole = translate_whole(from, to, input);
    for cut in 0..=input.len() {
        let mut t = StreamTranslator::new(from, to, "client-model").deterministic();
        let mut out = Vec::new();
        t.push(&input[..cut], &mut out);
        t.push(&input[cut..], &mut out);
        t.finish(&mut out);
        assert_eq!(out, whole, "split at {cut}");
    }
    let mut t = StreamTranslator::new(from, to, "client-model").deterministic();
    let mut out = Vec::new();
    for b in input {
        t.push(std::slice::from_ref(b), &mut out);
    }
    t.finish(&mut out);
    assert_eq!(out, whole, "byte by byte");
}

#[test]
fn streams_split_anywhere_give_the_same_output() {
    assert_split_invariant(O, A, openai_stream().as_bytes());
    assert_split_invariant(A, O, anthropic_stream().as_bytes());
    let crlf = openai_stream().replace("\n", "\r\n");
    assert_eq!(
        translate_whole(O, A, crlf.as_bytes()),
        translate_whole(O, A, openai_stream().as_bytes())
    );
}

#[test]
fn cut_off_streams_end_with_an_error() {
    // OpenAI → Anthropic, cut in the middle of the tool call arguments.
    let full = openai_stream();
    let cut = &full[..full.find("Paris").unwrap()];
    let out = translate_whole(O, A, cut.as_bytes());
    assert_valid_anthropic(&out);
    let evs = events(&out);
    let (name, data) = evs.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data["error"]["type"], "api_error");
    // Nothing at all.
    let evs = events(&translate_whole(O, A, b""));
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].0, "error");

    // Anthropic → OpenAI, cut before message_delta.
    let full = anthropic_stream();
    let cut = &full[..full.find("message_delta").unwrap()];
    let evs = events(&translate_whole(A, O, cut.as_bytes()));
    let n = evs.len();
    assert!(evs[n - 2].1["error"]["message"].is_string());
    assert_eq!(evs[n - 1].1, "[DONE]");

    // Ends after the finish reason but without [DONE] / message_stop: a clean end.
    let full = openai_stream();
    let cut = &full[..full.find("data: [DONE]").unwrap()];
    let evs = events(&translate_whole(O, A, cut.as_bytes()));
    assert_eq!(evs.last().unwrap().0, "message_stop");
    let full = anthropic_stream();
    let cut = &full[..full.find("event: message_stop").unwrap()];
    let evs = events(&translate_whole(A, O, cut.as_bytes()));
    assert_eq!(evs.last().unwrap().1, "[DONE]");
    assert!(evs.iter().all(|(_, d)| d.get("error").is_none()));
}

#[test]
fn errors_mid_stream_are_translated() {
    let mut input = openai_stream();
    // Before the fourth chunk (the first tool call piece).
    let at = input.match_indices("data: ").nth(3).unwrap().0;
    input.insert_str(
        at,
        "data: {\"error\":{\"message\":\"upstream exploded\",\"type\":\"server_error\"}}\n\n",
    );
    let out = translate_whole(O, A, input.as_bytes());
    assert_valid_anthropic(&out);
    let (name, data) = events(&out).pop().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data["error"]["message"], "upstream exploded");

    let mut input = anthropic_stream();
    let at = input.find("event: content_block_start").unwrap();
    input.insert_str(at, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
    let evs = events(&translate_whole(A, O, input.as_bytes()));
    assert_eq!(evs.len(), 3, "{evs:?}");
    assert_eq!(
        evs[1].1["error"],
        json!({"message": "Overloaded", "type": "overloaded_error", "param": null, "code": null})
    );
    assert_eq!(evs[2].1, "[DONE]");
}

#[test]
fn malformed_events_are_skipped() {
    let input = format!(
        "data: {{not json\n\ndata: \u{1}\n\n: comment\n\n{}",
        openai_stream()
    );
    assert_eq!(
        translate_whole(O, A, input.as_bytes()),
        translate_whole(O, A, openai_stream().as_bytes())
    );
    let input = format!(
        "event: content_block_delta\ndata: {{\"index\":\n\n{}event: mystery\ndata: {{}}\n\n",
        anthropic_stream()
    );
    assert_eq!(
        translate_whole(A, O, input.as_bytes()),
        translate_whole(A, O, anthropic_stream().as_bytes())
    );
}

#[test]
fn hostile_bytes_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let pieces: [&[u8]; 12] = [
        b"data: ",
        b"event: content_block_start\n",
        b"{\"type\":\"content_block_delta\",\"index\":99,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":1}}",
        b"{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":-1,\"function\":null}]}}]}",
        b"{\"choices\":[{\"delta\":{\"tool_calls\":[{\"id\":\"x\"},{\"id\":\"y\"},{}]}}]}",
        b"{\"type\":\"message_delta\",\"usage\":{\"output_tokens\":18446744073709551615}}",
        b"[DONE]",
        b"\n",
        b"\r\n\n",
        b"\xff\xc3",
        b"{\"choices\":7,\"usage\":[]}",
        b"{\"type\":\"content_block_start\",\"content_block\":{\"type\":\"tool_use\",\"input\":[1]}}",
    ];
    for _ in 0..300 {
        let mut input = Vec::new();
        for _ in 0..rng.random_range(0..30) {
            input.extend_from_slice(pieces[rng.random_range(0..pieces.len())]);
        }
        for (from, to) in [(O, A), (A, O)] {
            let mut t = StreamTranslator::new(from, to, "m");
            let mut out = Vec::new();
            for part in input.chunks(rng.random_range(1..8)) {
                t.push(part, &mut out);
            }
            t.finish(&mut out);
            if to == A {
                assert_valid_anthropic(&out);
            }
        }
    }
}

/// What Sluice meters from the client's side of a translated stream is what the provider said.
#[test]
fn translated_streams_observe_the_same() {
    use crate::llm::observe::{StreamObserver, observe_body};
    let observe = |format, bytes: &[u8]| {
        let mut o = StreamObserver::new(format);
        o.push(bytes);
        o.finish()
    };
    for (from, to, input) in [(A, O, anthropic_stream()), (O, A, openai_stream())] {
        let provider = observe(from, input.as_bytes());
        let client = observe(to, &translate_whole(from, to, input.as_bytes()));
        assert_eq!(provider.usage, client.usage);
        assert!(provider.usage.total() > 0);
        let ids = |o: &crate::llm::observe::Observed| {
            o.tool_uses
                .iter()
                .map(|t| (t.name.clone(), t.input.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&provider), ids(&client));
        assert!(!client.tool_uses.is_empty());
        assert_eq!(client.error, None);
    }
    for (from, to, body) in [(A, O, anthropic_response()), (O, A, openai_response())] {
        let provider = observe_body(from, body.to_string().as_bytes());
        let translated = response(&body, from, to, "m").unwrap();
        let client = observe_body(to, translated.to_string().as_bytes());
        assert_eq!(provider.usage, client.usage);
        assert_eq!(provider.tool_uses.len(), client.tool_uses.len());
    }
}

#[test]
fn same_format_streams_pass_through() {
    let input = anthropic_stream();
    let mut t = StreamTranslator::new(A, A, "m");
    let mut out = Vec::new();
    t.push(&input.as_bytes()[..10], &mut out);
    t.push(&input.as_bytes()[10..], &mut out);
    t.finish(&mut out);
    assert_eq!(out, input.as_bytes());
}

#[test]
fn oversized_stream_event_is_an_error() {
    let mut t = StreamTranslator::new(O, A, "m");
    let mut out = Vec::new();
    t.push(b"data: {\"choices\":[{\"delta\":{\"content\":\"", &mut out);
    let big = vec![b'a'; 1 << 20];
    for _ in 0..9 {
        t.push(&big, &mut out);
    }
    assert!(t.is_done());
    t.push(b"\"}}]}\n\ndata: [DONE]\n\n", &mut out);
    t.finish(&mut out);
    let evs = events(&out);
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].0, "error");
}
