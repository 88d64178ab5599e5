//! A deterministic tool catalog shaped like real MCP servers' catalogs.
//!
//! Gateways spend their `tools/list` time copying and filtering schemas, so the schemas here are
//! as large and as nested as typical ones (5–6 typed properties, enums, defaults, descriptions):
//! a 500-tool catalog serializes to about 470 KB. The first two tools are the ones the load
//! scenarios call: `small` (echoes its `text` argument) and `large` (returns ~100 KB of text).

use serde_json::{Value, json};

/// Name of the tool that answers a tiny echo.
pub const SMALL: &str = "small";
/// Name of the tool that answers [`LARGE_RESULT_BYTES`] of text.
pub const LARGE: &str = "large";
/// Size of the text returned by the `large` tool.
pub const LARGE_RESULT_BYTES: usize = 100 * 1024;

const SERVICES: [&str; 10] = [
    "github", "jira", "slack", "postgres", "s3", "calendar", "crm", "billing", "search", "docs",
];
const OBJECTS: [&str; 10] = [
    "issues",
    "pull_requests",
    "messages",
    "tables",
    "objects",
    "events",
    "contacts",
    "invoices",
    "documents",
    "pages",
];
const VERBS: [&str; 8] = [
    "search", "get", "list", "export", "create", "update", "delete", "archive",
];

/// The catalog's tools as JSON values: `small`, `large`, then generated tools up to `count`
/// (never fewer than the two the scenarios need).
pub fn tools(count: usize) -> Vec<Value> {
    let mut tools = vec![small_tool(), large_tool()];
    tools.extend((tools.len()..count).map(generated_tool));
    tools
}

fn small_tool() -> Value {
    json!({
        "name": SMALL,
        "title": "Echo",
        "description": "Echoes `text` back. Used to measure the per-call overhead of a gateway.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "text": { "type": "string", "description": "Text to echo back." }
            },
            "required": ["text"]
        },
        "annotations": { "readOnlyHint": true, "idempotentHint": true }
    })
}

fn large_tool() -> Value {
    json!({
        "name": LARGE,
        "title": "Large report",
        "description": "Returns a 100 KB plain-text log excerpt. Used to measure how a gateway \
                        moves large results.",
        "inputSchema": { "type": "object", "properties": {} },
        "annotations": { "readOnlyHint": true, "idempotentHint": true }
    })
}

/// Tool number `i`: a name like `github_search_issues_17` and a schema whose shape depends on
/// whether the verb reads or writes.
fn generated_tool(i: usize) -> Value {
    let service = SERVICES[i % SERVICES.len()];
    let object = OBJECTS[(i / SERVICES.len()) % OBJECTS.len()];
    let verb = VERBS[(i / 7) % VERBS.len()];
    let read_only = matches!(verb, "search" | "get" | "list" | "export");
    let input_schema = if read_only {
        json!({
            "type": "object",
            "properties": {
                "query": {
                    "type": "string",
                    "description": format!("Free-text query over {object}; supports field:value \
                                            filters such as status:open or owner:me.")
                },
                "limit": {
                    "type": "integer", "minimum": 1, "maximum": 100, "default": 20,
                    "description": "Largest number of results to return."
                },
                "cursor": {
                    "type": "string",
                    "description": "Opaque cursor taken from a previous answer's nextCursor."
                },
                "sort": {
                    "type": "string", "enum": ["relevance", "created", "updated"],
                    "default": "relevance", "description": "Order of the results."
                },
                "include_archived": {
                    "type": "boolean", "default": false,
                    "description": "Also return archived items."
                }
            },
            "required": ["query"],
            "additionalProperties": false
        })
    } else {
        json!({
            "type": "object",
            "properties": {
                "id": {
                    "type": "string",
                    "description": format!("Identifier of the item in {object}; omit to create one.")
                },
                "title": { "type": "string", "maxLength": 256, "description": "Short title." },
                "body": { "type": "string", "description": "Markdown body." },
                "labels": {
                    "type": "array", "items": { "type": "string" }, "maxItems": 20,
                    "description": "Labels to set; replaces existing labels."
                },
                "assignee": {
                    "type": "string",
                    "description": "User name or email of the person responsible."
                },
                "notify": {
                    "type": "boolean", "default": true,
                    "description": "Send notifications to watchers."
                }
            },
            "required": ["title"],
            "additionalProperties": false
        })
    };
    json!({
        "name": format!("{service}_{verb}_{object}_{i}"),
        "title": format!("{verb} {object} ({service})"),
        "description": format!(
            "{verb} {object} in {service}. Answers are paginated: pass `cursor` from the previous \
             answer to continue. Requires a token with {} access to the workspace.",
            if read_only { "read" } else { "write" }
        ),
        "inputSchema": input_schema,
        "annotations": { "readOnlyHint": read_only, "destructiveHint": verb == "delete" }
    })
}

/// Exactly [`LARGE_RESULT_BYTES`] of log-like text, with newlines (escaped in JSON) like real
/// tool output.
pub fn large_text() -> String {
    let mut text = String::with_capacity(LARGE_RESULT_BYTES + 128);
    let mut line = 0usize;
    while text.len() < LARGE_RESULT_BYTES {
        text.push_str(&format!(
            "2026-01-01T00:{:02}:{:02}Z INFO request id={line:06} path=/api/v1/items/{} \
             status=200 duration_ms={}\n",
            (line / 60) % 60,
            line % 60,
            line % 977,
            line % 43
        ));
        line += 1;
    }
    text.truncate(LARGE_RESULT_BYTES);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn catalog_has_unique_valid_names_and_the_scenario_tools() {
        let tools = tools(500);
        assert_eq!(tools.len(), 500);
        assert_eq!(tools[0]["name"], SMALL);
        assert_eq!(tools[1]["name"], LARGE);
        let names: HashSet<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
        assert_eq!(names.len(), 500);
        // Still valid for model APIs once a gateway adds a `server__` prefix.
        assert!(names.iter().all(|n| n.len() + "fast__".len() <= 64));
    }

    #[test]
    fn catalog_is_realistically_sized() {
        let bytes = serde_json::to_vec(&tools(500)).unwrap().len();
        assert!((250_000..600_000).contains(&bytes), "{bytes} bytes");
    }

    #[test]
    fn never_fewer_than_the_scenario_tools() {
        assert_eq!(tools(0).len(), 2);
    }

    #[test]
    fn large_text_has_the_promised_size() {
        assert_eq!(large_text().len(), LARGE_RESULT_BYTES);
    }
}
