//! What the gateway and a Code Mode worker say to each other: one JSON object per line on the
//! worker's stdin (gateway to worker) and stdout (worker to gateway).
//!
//! A worker is started, says [`FromWorker::Ready`], receives one [`ToWorker::Run`], asks for tool
//! calls ([`FromWorker::Call`], answered by [`ToWorker::Answer`]) and ends with
//! [`FromWorker::Done`]. The gateway treats everything a worker says as untrusted: lines are
//! bounded, and every tool call goes through the key's grants like any other call.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Gateway to worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// Run `script`. `namespaces` is the JSON of `{namespace: {function: [exposed tool name,
    /// [parameter names in positional order]]}}`: the tools the script may call.
    Run {
        script: String,
        namespaces: String,
        output_limit: usize,
    },
    /// The answer to call `id`: `{"result": <tools/call result>}` or `{"error": "<message>"}`.
    /// (Values, not raw JSON: a tagged enum cannot hold raw JSON.)
    Answer { id: u64, answer: Value },
}

/// Worker to gateway.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromWorker {
    /// Started and confined; `confinement` says which layers are on.
    Ready { confinement: String },
    /// The worker could not start or confine itself.
    Failed { error: String },
    /// Call the tool clients know as `tool` with `arguments` (a JSON object).
    Call {
        id: u64,
        tool: String,
        arguments: Value,
    },
    /// The script ended.
    Done { report: Report },
}

/// How a script ended, as the worker tells it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// What it printed, up to the output limit.
    #[serde(default)]
    pub output: String,
    /// The JSON of its `result` (or last expression), if any.
    #[serde(default)]
    pub result: Option<String>,
    /// The exception it ended with, and the script lines it went through.
    #[serde(default)]
    pub error: Option<String>,
    /// The output was cut at the limit.
    #[serde(default)]
    pub cut: bool,
}
