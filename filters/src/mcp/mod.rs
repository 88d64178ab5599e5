//! The `/mcp` endpoint: one MCP server (Streamable HTTP) in front of every upstream.
//!
//! [`McpEndpoint::handle`] runs a request through its stages in order; each stage either
//! passes or answers. The order is here and nowhere else:
//!
//! 1. transport: Origin, HTTP method, Accept/Content-Type, body size ([`transport`])
//! 2. JSON-RPC framing ([`crate::jsonrpc`])
//! 3. session: `initialize` opens one; every other request must carry a valid one
//! 4. dispatch by method ([`methods`])

pub mod http;
mod methods;
pub mod transport;

use std::sync::Arc;
use std::time::Duration;

use ::http::header::HeaderValue;
use ::http::{Method, StatusCode};
use arc_swap::ArcSwap;
use sluice_conf::Config;

pub use self::http::{Request, Response};
use crate::jsonrpc::{self, code};
use crate::session::{SessionError, Sessions};
use crate::upstream::Upstreams;

/// The parts of the configuration `/mcp` reads on every request; swapped whole on reload.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_body_bytes: usize,
    pub page_size: usize,
    pub allowed_origins: Vec<String>,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        Settings {
            max_body_bytes: config.mcp.max_body_bytes,
            page_size: config.mcp.page_size,
            allowed_origins: config.mcp.allowed_origins.clone(),
        }
    }
}

/// Who is calling. Until virtual keys land every caller is anonymous; sessions are already
/// bound to the caller's key id so that a key cannot use another key's session.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: String,
}

impl Caller {
    fn anonymous() -> Self {
        Caller {
            key_id: String::new(),
        }
    }
}

/// Serves `/mcp`.
pub struct McpEndpoint {
    settings: ArcSwap<Settings>,
    sessions: Sessions,
    upstreams: Arc<Upstreams>,
}

impl McpEndpoint {
    pub fn new(
        settings: Settings,
        upstreams: Arc<Upstreams>,
        session_secret: &[u8],
        session_ttl: Duration,
    ) -> Self {
        McpEndpoint {
            settings: ArcSwap::from_pointee(settings),
            sessions: Sessions::new(session_secret, session_ttl),
            upstreams,
        }
    }

    /// Swap in new settings (configuration reload).
    pub fn set_settings(&self, settings: Settings) {
        self.settings.store(Arc::new(settings));
    }

    /// The largest body the proxy should read.
    pub fn max_body_bytes(&self) -> usize {
        self.settings.load().max_body_bytes
    }

    pub fn upstreams(&self) -> &Arc<Upstreams> {
        &self.upstreams
    }

    /// Checks that need only the request head, run before the body is read.
    pub fn check_head(&self, method: &Method, headers: &::http::HeaderMap) -> Result<(), Response> {
        let settings = self.settings.load();
        transport::check_origin(headers, &settings.allowed_origins)?;
        if method == Method::POST {
            transport::check_declared_length(headers, settings.max_body_bytes)?;
        }
        Ok(())
    }

    /// Answer one request to `/mcp`.
    pub async fn handle(&self, request: Request<'_>) -> Response {
        match self.run(request).await {
            Ok(response) | Err(response) => response,
        }
    }

    async fn run(&self, request: Request<'_>) -> Result<Response, Response> {
        let settings = self.settings.load();
        // 1. transport
        transport::check_origin(request.headers, &settings.allowed_origins)?;
        match *request.method {
            Method::POST => {}
            Method::DELETE => return Ok(self.delete_session(request.headers)),
            Method::GET => {
                return Err(Response::refuse(
                    StatusCode::METHOD_NOT_ALLOWED,
                    None,
                    code::INVALID_REQUEST,
                    "Sluice does not offer a server-to-client stream on GET yet; use POST",
                )
                .with_header(
                    ::http::header::ALLOW,
                    HeaderValue::from_static("POST, DELETE"),
                ));
            }
            _ => {
                return Err(Response::refuse(
                    StatusCode::METHOD_NOT_ALLOWED,
                    None,
                    code::INVALID_REQUEST,
                    "`/mcp` takes POST (and DELETE to end a session)",
                )
                .with_header(
                    ::http::header::ALLOW,
                    HeaderValue::from_static("POST, DELETE"),
                ));
            }
        }
        transport::check_post_headers(request.headers)?;
        if request.body.len() > settings.max_body_bytes {
            return Err(transport::too_large(settings.max_body_bytes));
        }
        transport::check_protocol_version(request.headers)?;

        // 2. JSON-RPC
        let message = jsonrpc::parse(request.body).map_err(|e| {
            Response::refuse(StatusCode::BAD_REQUEST, None, e.code(), &e.to_string())
        })?;

        // 3. session
        let caller = Caller::anonymous();
        let session_id = request.headers.get(transport::SESSION_HEADER);
        if message.method == Some("initialize") {
            return Ok(methods::initialize(self, &caller, &message));
        }
        let Some(session_id) = session_id else {
            return Err(Response::refuse(
                StatusCode::BAD_REQUEST,
                message.id,
                code::INVALID_REQUEST,
                "missing Mcp-Session-Id header; send `initialize` first and repeat the session id it returns",
            ));
        };
        self.open_session(session_id, &caller).map_err(|e| {
            Response::refuse(
                StatusCode::NOT_FOUND,
                message.id,
                code::INVALID_REQUEST,
                &format!("unknown session: {e}; send `initialize` to start a new one"),
            )
        })?;

        // 4. dispatch
        if !message.is_request() {
            // Notifications and responses to server requests need no answer.
            return Ok(Response::empty(StatusCode::ACCEPTED));
        }
        Ok(methods::dispatch(self, &settings, &caller, &message).await)
    }

    fn open_session(&self, header: &HeaderValue, caller: &Caller) -> Result<(), SessionError> {
        let token = header.to_str().map_err(|_| SessionError::Malformed)?;
        let session = self.sessions.open(token)?;
        if !session.belongs_to(&caller.key_id) {
            return Err(SessionError::BadSeal);
        }
        Ok(())
    }

    fn delete_session(&self, headers: &::http::HeaderMap) -> Response {
        let Some(token) = headers
            .get(transport::SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
        else {
            return Response::refuse(
                StatusCode::BAD_REQUEST,
                None,
                code::INVALID_REQUEST,
                "DELETE needs the Mcp-Session-Id header of the session to end",
            );
        };
        match self.sessions.delete(token) {
            Ok(()) => Response::empty(StatusCode::OK),
            Err(e) => Response::refuse(
                StatusCode::NOT_FOUND,
                None,
                code::INVALID_REQUEST,
                &format!("unknown session: {e}"),
            ),
        }
    }
}
