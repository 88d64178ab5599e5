//! Upstream MCP servers: one client per configured server, kept alive by a supervisor.
//!
//! - [`stdio`]: a child process speaking newline-delimited JSON-RPC, restarted with back-off.
//! - [`http`]: a Streamable HTTP server over pooled keep-alive connections, re-initialized when
//!   it forgets Sluice's session.
//! - [`sse`]: a legacy HTTP+SSE server (2024-11-05): POSTs out, one event stream in.
//! - `mux`: the calls of stdio and legacy SSE, matched to answers by id on one stream.
//! - [`supervisor`]: connects, syncs the catalog, watches health, reconnects.
//!
//! Calls return the upstream's `result` or `error` as raw JSON so they can be passed back
//! byte for byte.
//!
//! The call contract: a request may carry an [`EventSink`] for what the upstream sends while
//! it works on it (progress, log messages, requests to the client), and it is cancelled by
//! dropping its future: the connection then tells the upstream with `notifications/cancelled`,
//! so no work is left running for a caller that is gone.

pub mod answer;
pub mod http;
mod mux;
mod post;
pub mod sse;
pub mod stateless;
pub mod stdio;
pub mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

pub use post::serve_request;
pub use supervisor::{Health, ServerChanges, Upstream, Upstreams};

/// How many events of one call may wait for the downstream writer; a caller that reads slower
/// than its upstream writes loses events beyond this (progress and log messages) or refuses
/// the upstream's requests, instead of growing Sluice's memory.
pub const EVENTS_PER_CALL: usize = 64;

/// The largest single message Sluice reads from an upstream (a line, an event or a body).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Where a call's events go.
pub type EventSink = tokio::sync::mpsc::Sender<Event>;

/// What an upstream sends while it handles a call, before the answer.
#[derive(Debug)]
pub enum Event {
    /// A notification (progress, a log message, ...): the whole JSON-RPC message.
    Notification(Box<RawValue>),
    /// A request to the client (sampling, elicitation, roots).
    Request(ServerRequest),
}

/// A request an upstream makes of its client during a call. Sending an [`Outcome`] on `reply`
/// answers it; dropping `reply` answers it with an error, so the upstream never hangs.
#[derive(Debug)]
pub struct ServerRequest {
    pub method: String,
    pub params: Option<Box<RawValue>>,
    pub reply: tokio::sync::oneshot::Sender<Outcome>,
}

/// A call's options besides its method and params.
#[derive(Debug, Default, Clone)]
pub struct CallOptions {
    pub events: Option<EventSink>,
    /// The `_meta.progressToken` the upstream will see, as JSON, so that transports without a
    /// stream per call (stdio, legacy SSE) can route progress to it.
    pub progress_token: Option<String>,
    /// Whether a large JSON answer may come back as [`Outcome::Streamed`] (passed on as it
    /// arrives) instead of being read whole.
    pub stream_answer: bool,
    /// The client's `Mcp-Param-*` headers, passed on to a stateless upstream (they mirror
    /// tool arguments that the tool's schema marks with `x-mcp-header`).
    pub param_headers: Vec<(::http::HeaderName, ::http::HeaderValue)>,
    /// The downstream session the call is made for (the random part of its sealed id), for
    /// servers that keep one upstream session per client.
    pub session: Option<[u8; 16]>,
    /// When that session expires (Unix seconds): its upstream session is closed then.
    pub session_expires_at: Option<u64>,
}

impl CallOptions {
    /// Hand `event` to the call's sink without waiting; a request that cannot be delivered is
    /// answered with an error at once.
    pub(crate) fn deliver(&self, server: &str, event: Event) {
        let Some(sink) = &self.events else {
            refuse_undeliverable(server, event);
            return;
        };
        if let Err(e) = sink.try_send(event) {
            let event = match e {
                tokio::sync::mpsc::error::TrySendError::Full(ev)
                | tokio::sync::mpsc::error::TrySendError::Closed(ev) => ev,
            };
            tracing::debug!(
                server,
                "a call's event was dropped: its client is not reading"
            );
            refuse_undeliverable(server, event);
        }
    }
}

/// Answer a request from an upstream that no client will see: no roots, and an error for the
/// rest, so the upstream never waits for an answer that cannot come.
pub(crate) fn refuse_undeliverable(server: &str, event: Event) {
    if let Event::Request(request) = event {
        let outcome = if request.method == "roots/list" {
            Outcome::Result(
                RawValue::from_string("{\"roots\":[]}".to_string())
                    .unwrap_or_else(|_| empty_object()),
            )
        } else {
            client_error(
                crate::jsonrpc::code::METHOD_NOT_FOUND,
                &format!(
                    "Sluice has no client to relay `{}` to for server `{server}`",
                    request.method
                ),
            )
        };
        let _ = request.reply.send(outcome);
    }
}

/// `params._meta.progressToken` of a message's params, as JSON text.
pub(crate) fn progress_token_of(params: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct Params<'a> {
        #[serde(borrow, rename = "progressToken")]
        progress_token: Option<&'a RawValue>,
        #[serde(borrow, rename = "_meta")]
        meta: Option<Meta<'a>>,
    }
    #[derive(Deserialize)]
    struct Meta<'a> {
        #[serde(borrow, rename = "progressToken")]
        progress_token: Option<&'a RawValue>,
    }
    let params: Params<'_> = serde_json::from_str(params.get()).ok()?;
    params
        .progress_token
        .or(params.meta.and_then(|m| m.progress_token))
        .map(|t| t.get().to_string())
}

/// A resource an upstream says has changed (`notifications/resources/updated`).
#[derive(Debug, Clone)]
pub struct ResourceUpdate {
    pub server: Arc<str>,
    /// The URI as the upstream knows it.
    pub uri: String,
}

/// What an upstream announces outside any call.
#[derive(Debug)]
pub struct Announcements {
    /// Its tools, resources or prompts changed: re-sync it.
    pub list_changed: tokio::sync::Notify,
    updates: tokio::sync::broadcast::Sender<ResourceUpdate>,
}

impl Announcements {
    pub fn new(updates: tokio::sync::broadcast::Sender<ResourceUpdate>) -> Self {
        Announcements {
            list_changed: tokio::sync::Notify::new(),
            updates,
        }
    }

    pub(crate) fn resource_updated(&self, server: &Arc<str>, message: &UpstreamMessage) {
        #[derive(Deserialize)]
        struct Params {
            uri: String,
        }
        let Some(params) = message
            .params
            .as_deref()
            .and_then(|p| serde_json::from_str::<Params>(p.get()).ok())
        else {
            return;
        };
        let _ = self.updates.send(ResourceUpdate {
            server: server.clone(),
            uri: params.uri,
        });
    }
}

/// An error [`Outcome`] made by Sluice.
pub(crate) fn client_error(code: i32, message: &str) -> Outcome {
    let error = serde_json::json!({ "code": code, "message": message }).to_string();
    Outcome::Error(RawValue::from_string(error).unwrap_or_else(|_| empty_object()))
}

fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".to_string()).unwrap_or_else(|_| unreachable!())
}

/// A response message Sluice sends upstream, answering the upstream's request `id` (raw JSON).
pub(crate) fn response_bytes(id: &str, outcome: &Outcome) -> Vec<u8> {
    let (member, value) = match outcome {
        Outcome::Result(r) => ("result", r.get()),
        Outcome::Error(e) => ("error", e.get()),
        Outcome::Streamed(_) => ("error", "{\"code\":-32603,\"message\":\"no answer\"}"),
    };
    format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"{member}\":{value}}}").into_bytes()
}

/// The `notifications/cancelled` Sluice sends for its own request `id`.
pub(crate) fn cancelled_bytes(id: u64, reason: &str) -> Vec<u8> {
    format!(
        "{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\",\"params\":{{\"requestId\":{id},\"reason\":{}}}}}",
        serde_json::Value::from(reason)
    )
    .into_bytes()
}

/// The client information Sluice presents to upstream servers. Sluice declares every
/// client capability (sampling, elicitation in form and URL modes, roots): it relays those
/// requests to the client that made the call, and answers for a client that did not declare
/// them itself (an error, or no roots), so servers that offer tools only to capable clients
/// offer them all.
pub(crate) fn initialize_params() -> String {
    let mut capabilities = rmcp::model::ClientCapabilities::default();
    capabilities.sampling = Some(Default::default());
    capabilities.roots = Some(rmcp::model::RootsCapabilities::default());
    let params = rmcp::model::InitializeRequestParams::new(
        capabilities,
        rmcp::model::Implementation::new("sluice", env!("CARGO_PKG_VERSION")),
    )
    .with_protocol_version(crate::protocol::to_rmcp(crate::protocol::LATEST));
    let mut value = serde_json::to_value(&params).unwrap_or_default();
    // Form and URL elicitation (2025-11-25), written as JSON: rmcp's type may lag the spec.
    value["capabilities"]["elicitation"] = serde_json::json!({ "form": {}, "url": {} });
    value.to_string()
}

/// What an upstream answered to a request.
#[derive(Debug)]
pub enum Outcome {
    /// The `result` member, verbatim.
    Result(Box<RawValue>),
    /// The `error` member, verbatim.
    Error(Box<RawValue>),
    /// A large answer whose `result` or `error` arrives in pieces (only for calls that asked
    /// for it with [`CallOptions::stream_answer`]).
    Streamed(answer::StreamedAnswer),
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
    #[error("upstream server `{server}` answered with an error: {detail}")]
    Answered { server: Arc<str>, detail: String },
    #[error(
        "upstream server `{server}` is busy: {limit} calls are in flight and this one waited {waited:?} in line (`max_concurrent_calls`); retry shortly"
    )]
    Busy {
        server: Arc<str>,
        limit: usize,
        waited: Duration,
    },
}

impl UpstreamError {
    pub fn server(&self) -> &str {
        match self {
            UpstreamError::Unavailable { server, .. }
            | UpstreamError::Disconnected { server, .. }
            | UpstreamError::Timeout { server, .. }
            | UpstreamError::Connect { server, .. }
            | UpstreamError::Http { server, .. }
            | UpstreamError::Protocol { server, .. }
            | UpstreamError::Answered { server, .. }
            | UpstreamError::Busy { server, .. } => server,
        }
    }
}

/// A JSON-RPC message from an upstream, as far as routing needs it.
#[derive(Debug, Deserialize)]
pub(crate) struct UpstreamMessage {
    #[serde(default)]
    pub id: Option<Box<RawValue>>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub params: Option<Box<RawValue>>,
    #[serde(default)]
    pub result: Option<Box<RawValue>>,
    #[serde(default)]
    pub error: Option<Box<RawValue>>,
}

impl UpstreamMessage {
    /// The id as a number, if it is one of Sluice's own (Sluice numbers its requests).
    pub fn numeric_id(&self) -> Option<u64> {
        self.id.as_ref().and_then(|id| id.get().parse().ok())
    }

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

/// An MCP server inside Sluice's process, answering at once: what the benchmarks put behind
/// the real pipeline, and the shape for servers Sluice will host itself.
pub trait LocalServer: Send + Sync {
    fn handle(&self, method: &str, params: Option<&RawValue>) -> Outcome;
}

/// A live connection to one upstream.
pub enum Connection {
    Stdio(stdio::StdioConnection),
    Http(http::HttpConnection),
    Sse(sse::SseConnection),
    Local(Arc<dyn LocalServer>),
}

impl Connection {
    /// Send a notification on a connection that carries one stream of messages (stdio, SSE);
    /// Streamable HTTP sends its own.
    pub(crate) fn notify(&self, message: Vec<u8>) {
        match self {
            Connection::Stdio(c) => c.notify(message),
            Connection::Sse(c) => c.notify(message),
            Connection::Http(_) | Connection::Local(_) => {}
        }
    }

    /// End the upstream session, where the transport has one to end (HTTP `DELETE`).
    pub async fn close(&self) {
        if let Connection::Http(c) = self {
            c.close().await;
        }
    }

    /// Send a request and wait for its answer; events on the way go to `options.events`.
    pub async fn request(
        &self,
        method: &str,
        params: Option<&RawValue>,
        options: &CallOptions,
    ) -> Result<Outcome, UpstreamError> {
        // A session-era transport gets no stateless client's envelope (an HTTP connection
        // decides per request, by the era it found).
        let session_params = || stateless::without_envelope(params);
        match self {
            Connection::Stdio(c) => {
                let stripped = session_params();
                c.request(method, stripped.as_deref().or(params), options)
                    .await
            }
            Connection::Sse(c) => {
                let stripped = session_params();
                c.request(method, stripped.as_deref().or(params), options)
                    .await
            }
            Connection::Http(c) => c.request(method, params, options).await,
            Connection::Local(server) => Ok(server.handle(method, params)),
        }
    }
}
