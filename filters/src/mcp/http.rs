//! The HTTP side of `/mcp`, free of Pingora types: a request head and body in, a response out.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::jsonrpc;

/// What the endpoint needs of an HTTP request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// A response body: whole, or a stream of server-sent events written as they come. The
/// stream ends when its sender is dropped; a writer that stops reading (client gone) makes the
/// producer stop and cancel its upstream work.
pub enum Body {
    Full(Bytes),
    Events(mpsc::Receiver<Bytes>),
    /// A body written as it comes (a large answer passed on from an upstream); an `Err` means
    /// it broke off, and the connection is closed rather than ending a truncated body cleanly.
    Stream(BodyStream),
}

/// The pieces of a [`Body::Stream`].
pub type BodyStream = futures::stream::BoxStream<'static, Result<Bytes, String>>;

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Full(bytes) => f.debug_tuple("Full").field(bytes).finish(),
            Body::Events(_) => f.write_str("Events"),
            Body::Stream(_) => f.write_str("Stream"),
        }
    }
}

impl Body {
    /// The whole body, if it is not a stream.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Body::Full(bytes) => Some(bytes),
            Body::Events(_) | Body::Stream(_) => None,
        }
    }
}

/// The answer to write back.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Body,
    /// Time spent waiting for an upstream, for the gateway-overhead metric.
    pub upstream_time: Option<std::time::Duration>,
}

impl Response {
    /// A JSON body with `status`.
    pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Response {
            status,
            headers: vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body: Body::Full(body.into()),
            upstream_time: None,
        }
    }

    /// A JSON body written as it comes.
    pub fn json_stream(body: BodyStream) -> Self {
        Response {
            status: StatusCode::OK,
            headers: vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body: Body::Stream(body),
            upstream_time: None,
        }
    }

    /// An event stream (`text/event-stream`), fed by the sender of `events`.
    pub fn events(events: mpsc::Receiver<Bytes>) -> Self {
        Response {
            status: StatusCode::OK,
            headers: vec![
                (CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
                (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            body: Body::Events(events),
            upstream_time: None,
        }
    }

    /// An HTTP-level refusal, with a JSON-RPC error body that SDK clients show to the user.
    pub fn refuse(status: StatusCode, id: Option<&RawValue>, code: i32, message: &str) -> Self {
        Response::json(status, jsonrpc::error_bytes(id, code, message, None))
    }

    /// An empty answer (202 for notifications, 200 for DELETE).
    pub fn empty(status: StatusCode) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Body::Full(Bytes::new()),
            upstream_time: None,
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}
