//! JSON-RPC framing: any bytes a client can POST, through `jsonrpc::parse`, and the answers
//! Sluice writes for what it accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_filters::jsonrpc::{self, code};

fuzz_target!(|data: &[u8]| {
    let message = match jsonrpc::parse(data) {
        Ok(message) => message,
        Err(e) => {
            // Every refusal maps to one of the two codes and can be shown.
            assert!(matches!(
                e.code(),
                code::PARSE_ERROR | code::INVALID_REQUEST
            ));
            let _ = e.to_string();
            return;
        }
    };
    // What the rest of the pipeline relies on.
    assert!(
        message.method.is_some() || message.result.is_some() || message.error.is_some(),
        "accepted a message with neither a method nor a result or error"
    );
    if let Some(id) = message.id {
        let first = id.get().as_bytes().first().copied();
        assert!(
            matches!(first, Some(b'"' | b'-' | b'0'..=b'9')),
            "accepted an id that is not a string or a number: {}",
            id.get()
        );
        // Answers to an accepted id are themselves JSON-RPC messages with the same id.
        let answer = jsonrpc::result_bytes(id, "{}");
        let parsed = jsonrpc::parse(&answer).expect("Sluice's own result parses");
        assert_eq!(parsed.id.map(|i| i.get()), Some(id.get()));
        let text = message.method.unwrap_or("no method");
        let error = jsonrpc::error_bytes(Some(id), code::METHOD_NOT_FOUND, text, None);
        let parsed = jsonrpc::parse(&error).expect("Sluice's own error parses");
        assert_eq!(parsed.id.map(|i| i.get()), Some(id.get()));
        assert!(parsed.error.is_some());
    }
});
