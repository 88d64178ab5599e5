//! Upstream MCP servers: one client per configured server, kept alive by a supervisor.
//!
//! - [`stdio`]: a child process speaking newline-delimited JSON-RPC, restarted with back-off.
//! - [`http`]: a Streamable HTTP server over pooled keep-alive connections, re-initialized when
//!   it forgets Sluice's session.
//! - [`supervisor`]: connects, syncs the catalog, watches health, reconnects.
//!
//! Calls return the upstream's `result` or `error` as raw JSON so they can be passed back
//! byte for byte.

pub mod http;
pub mod stdio;
pub mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

pub use supervisor::{Health, ServerChanges, Upstream, Upstreams};

/// The client information Sluice presents to upstream servers.
pub(crate) fn initialize_params() -> String {
    let params = rmcp::model::InitializeRequestParams::new(
        rmcp::model::ClientCapabilities::default(),
        rmcp::model::Implementation::new("sluice", env!("CARGO_PKG_VERSION")),
    )
    .with_protocol_version(crate::protocol::to_rmcp(crate::protocol::LATEST));
    serde_json::to_string(&params).unwrap_or_default()
}

/// What an upstream answered to a request.
#[derive(Debug)]
pub enum Outcome {
    /// The `result` member, verbatim.
    Result(Box<RawValue>),
    /// The `error` member, verbatim.
    Error(Box<RawValue>),
}

/// Why a call to an upstream produced no answer. Every message names the server.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream server `{server}` is unavailable: {reason}; Sluice keeps retrying it")]
    Unavailable { server: Arc<str>, reason: String },
    #[error(
        "upstream server `{server}` went away while the call was in flight ({reason}); Sluice is restarting it, retry shortly"
    )]
    Disconnected { server: Arc<str>, reason: String },
    #[error("upstream server `{server}` did not answer within {timeout:?}")]
    Timeout { server: Arc<str>, timeout: Duration },
    #[error("cannot reach upstream server `{server}`: {detail}")]
    Connect { server: Arc<str>, detail: String },
    #[error("upstream server `{server}` answered HTTP {status}: {detail}")]
    Http {
        server: Arc<str>,
        status: u16,
        detail: String,
    },
    #[error("upstream server `{server}` sent a message Sluice cannot read: {detail}")]
    Protocol { server: Arc<str>, detail: String },
}

impl UpstreamError {
    pub fn server(&self) -> &str {
        match self {
            UpstreamError::Unavailable { server, .. }
            | UpstreamError::Disconnected { server, .. }
            | UpstreamError::Timeout { server, .. }
            | UpstreamError::Connect { server, .. }
            | UpstreamError::Http { server, .. }
            | UpstreamError::Protocol { server, .. } => server,
        }
    }
}

/// A JSON-RPC message from an upstream, as far as routing needs it.
#[derive(Debug, Deserialize)]
pub(crate) struct UpstreamMessage {
    #[serde(default)]
    pub id: Option<serde_json::Value>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub result: Option<Box<RawValue>>,
    #[serde(default)]
    pub error: Option<Box<RawValue>>,
}

impl UpstreamMessage {
    /// The outcome if this is a response.
    pub fn into_outcome(self) -> Option<Outcome> {
        match (self.result, self.error) {
            (_, Some(error)) => Some(Outcome::Error(error)),
            (Some(result), None) => Some(Outcome::Result(result)),
            (None, None) => None,
        }
    }
}

/// A request line Sluice sends upstream.
pub(crate) fn request_bytes(id: u64, method: &str, params: Option<&RawValue>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + params.map_or(0, |p| p.get().len()));
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.to_string().as_bytes());
    out.extend_from_slice(b",\"method\":");
    out.extend_from_slice(serde_json::Value::from(method).to_string().as_bytes());
    if let Some(params) = params {
        out.extend_from_slice(b",\"params\":");
        out.extend_from_slice(params.get().as_bytes());
    }
    out.push(b'}');
    out
}

/// A notification Sluice sends upstream.
pub(crate) fn notification_bytes(method: &str) -> Vec<u8> {
    format!(
        "{{\"jsonrpc\":\"2.0\",\"method\":{}}}",
        serde_json::Value::from(method)
    )
    .into_bytes()
}

/// A live connection to one upstream.
pub enum Connection {
    Stdio(stdio::StdioConnection),
    Http(http::HttpConnection),
}

impl Connection {
    /// Send a request and wait for its answer.
    pub async fn request(
        &self,
        method: &str,
        params: Option<&RawValue>,
    ) -> Result<Outcome, UpstreamError> {
        match self {
            Connection::Stdio(c) => c.request(method, params).await,
            Connection::Http(c) => c.request(method, params).await,
        }
    }
}
