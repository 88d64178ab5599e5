//! The `/mcp` endpoint: one MCP server (Streamable HTTP) in front of every upstream.
//!
//! [`McpEndpoint::handle`] runs a request through its stages in order; each stage either
//! passes or answers. The order is here and nowhere else:
//!
//! 1. transport: Origin, HTTP method, Accept/Content-Type, body size ([`transport`])
//! 2. authentication: the virtual key ([`crate::auth`])
//! 3. rate limit of the key ([`crate::ratelimit`])
//! 4. JSON-RPC framing ([`crate::jsonrpc`])
//! 5. session: `initialize` opens one; every other request must carry a valid one; `GET`
//!    opens the session's notification stream ([`stream`])
//! 6. a client's answers and cancellations go to what waits for them ([`live`])
//! 7. dispatch by method, with the key's grants ([`methods`], [`calls`], [`crate::policy`]);
//!    forwarded requests are relayed as JSON or SSE ([`relay`]) and accounted for in the audit
//!    log and the metrics however they end

mod calls;
pub mod http;
mod list_cache;
pub mod live;
mod methods;
pub mod modern;
mod relay;
mod scripts;
mod stream;
pub mod transport;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::http::header::{HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use ::http::{HeaderMap, Method, StatusCode};
use arc_swap::ArcSwap;
use sluice_conf::{Config, ServerCodeMode};
use tokio::sync::watch;

pub use self::calls::forward_params;
pub use self::http::{Body, BodyStream, Request, Response};
use self::live::Live;
use crate::audit::AuditLog;
use crate::auth::{KeyEntry, KeyStore};
use crate::jsonrpc::{self, code};
use crate::metrics::Metrics;
use crate::policy::Narrowing;
use crate::ratelimit::RateLimiter;
use crate::session::{Session, SessionError, Sessions};
use crate::upstream::{Outcome, Upstreams};

/// The header that narrows (never widens) the caller's tools for one request: a
/// comma-separated list of names or globs.
pub const NARROW_HEADER: &str = "x-sluice-tools";

/// The parts of the configuration `/mcp` reads on every request: swapped whole on reload, so
/// a request sees one consistent version from start to end.
pub struct Policy {
    /// Increases with every reload; caches key on it.
    pub version: u64,
    pub max_body_bytes: usize,
    pub page_size: usize,
    pub allowed_origins: Vec<String>,
    pub keys: KeyStore,
    /// How each server shows in Code Mode (servers not named here: `scripts`).
    pub code_mode_servers: std::collections::HashMap<String, ServerCodeMode>,
}

impl Policy {
    fn from_config(config: &Config, version: u64) -> Self {
        Policy {
            version,
            max_body_bytes: config.mcp.max_body_bytes,
            page_size: config.mcp.page_size,
            allowed_origins: config.mcp.allowed_origins.clone(),
            keys: KeyStore::from_config(config),
            code_mode_servers: config
                .mcp
                .servers
                .iter()
                .map(|s| (s.name.clone(), s.code_mode))
                .collect(),
        }
    }
}

/// The most bytes of serialized list pages kept.
const LIST_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// A request whose head passed stages 1 to 3: the policy it is served under and its caller.
pub struct Admission {
    policy: Arc<Policy>,
    caller: Arc<KeyEntry>,
    narrowing: Option<Narrowing>,
    started: Instant,
}

impl Admission {
    /// The largest body to read for this request.
    pub fn max_body_bytes(&self) -> usize {
        self.policy.max_body_bytes
    }
}

/// The services `/mcp` uses besides its policy; they outlive reloads.
#[derive(Clone)]
pub struct Services {
    pub upstreams: Arc<Upstreams>,
    pub audit: Arc<AuditLog>,
    pub metrics: Arc<Metrics>,
    pub rate_limiter: Arc<dyn RateLimiter>,
    pub code_mode: Arc<crate::codemode::CodeMode>,
    /// Tool uses of model responses, to link the tool calls that follow to them.
    pub links: Arc<crate::llm::links::ToolUseBook>,
}

/// Serves `/mcp`.
pub struct McpEndpoint {
    policy: Arc<ArcSwap<Policy>>,
    /// The policy version, for streams that outlive a reload.
    policy_changes: watch::Sender<u64>,
    versions: AtomicU64,
    sessions: Arc<Sessions>,
    /// Calls paused for stateless clients' input (the MRTR bridge).
    parking: Arc<relay::Parking>,
    services: Services,
    list_cache: list_cache::ListCache,
    live: Arc<Live>,
}

impl McpEndpoint {
    /// A session another instance ended: end it here too, with what this instance holds for
    /// it (its notification streams, its `per_client` upstream sessions).
    pub fn session_ended_elsewhere(&self, nonce: [u8; crate::session::NONCE_LEN], expires_at: u64) {
        self.sessions.ended_elsewhere(nonce, expires_at);
        self.live.end_session(nonce);
        self.services.upstreams.end_client_session(nonce);
        self.count_sessions();
    }

    /// The sessions this endpoint issues and checks.
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    pub fn new(
        config: &Config,
        services: Services,
        session_secret: &[u8],
        session_ttl: Duration,
    ) -> Self {
        let previous = config
            .mcp
            .previous_session_secrets
            .iter()
            .map(|s| s.expose().as_bytes().to_vec());
        let sessions = Arc::new(
            Sessions::new(session_secret, session_ttl, session_limits(config)).accepting(previous),
        );
        McpEndpoint {
            policy: Arc::new(ArcSwap::from_pointee(Policy::from_config(config, 1))),
            policy_changes: watch::Sender::new(1),
            versions: AtomicU64::new(1),
            sessions: sessions.clone(),
            parking: Arc::new(relay::Parking::new(sessions)),
            services,
            list_cache: list_cache::ListCache::new(4096, LIST_CACHE_BYTES),
            live: Arc::default(),
        }
    }

    /// Apply a new (validated) configuration: keys, groups, limits and settings change for the
    /// next request; requests in flight finish under the policy they started with.
    pub fn reload(&self, config: &Config) {
        let version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
        self.policy
            .store(Arc::new(Policy::from_config(config, version)));
        self.policy_changes.send_replace(version);
        self.sessions.set_limits(session_limits(config));
        // Pages of the old policy are never read again.
        self.list_cache.clear();
        self.services.code_mode.pool().reload(&config.code_mode);
    }

    /// Refresh the gauge of sessions in use here.
    fn count_sessions(&self) {
        self.services
            .metrics
            .active_sessions
            .set(self.sessions.in_use() as i64);
    }

    pub fn upstreams(&self) -> &Arc<Upstreams> {
        &self.services.upstreams
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.services.metrics
    }

    /// Answer one request to `/mcp`: [`McpEndpoint::admit`] its head, then
    /// [`McpEndpoint::serve`] it.
    pub async fn handle(&self, request: Request<'_>) -> Response {
        match self.admit(request.method, request.headers) {
            Ok(admission) => self.serve(admission, request).await,
            Err(refusal) => refusal,
        }
    }

    /// Stages 1 to 3, on the request head alone, so that the proxy reads no body for a caller
    /// it refuses: transport, key, rate limit, and the declared body size.
    pub fn admit(&self, method: &Method, headers: &HeaderMap) -> Result<Admission, Response> {
        let started = Instant::now();
        let policy = self.policy.load_full();

        // 1. transport
        transport::check_origin(headers, &policy.allowed_origins)?;
        if ![Method::POST, Method::GET, Method::DELETE].contains(method) {
            return Err(method_not_allowed(
                "`/mcp` takes POST, GET (the notification stream) and DELETE (to end a session)",
            ));
        }
        let narrowing = narrowing(headers)?;

        // 2. authentication
        let caller = policy.keys.authenticate(headers).map_err(|e| {
            self.services.metrics.auth_failures.inc();
            Response::refuse(
                StatusCode::UNAUTHORIZED,
                None,
                code::INVALID_REQUEST,
                &e.to_string(),
            )
            .with_header(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sluice\""),
            )
        })?;

        // 3. rate limit
        if let Some(rpm) = caller.requests_per_minute
            && let Err(wait) = self.services.rate_limiter.check(&caller.name, rpm)
        {
            self.services
                .metrics
                .rate_limited
                .with_label_values(&[&caller.name])
                .inc();
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            return Err(Response::refuse(
                StatusCode::TOO_MANY_REQUESTS,
                None,
                code::INVALID_REQUEST,
                &format!(
                    "key `{}` is over its limit of {rpm} requests per minute; retry in {seconds} s",
                    caller.name
                ),
            )
            .with_header(RETRY_AFTER, HeaderValue::from(seconds)));
        }
        if method == Method::POST {
            transport::check_declared_length(headers, policy.max_body_bytes)?;
        }
        Ok(Admission {
            policy,
            caller,
            narrowing,
            started,
        })
    }

    /// Stages 4 to 7 for an admitted request, body read.
    pub async fn serve(&self, admission: Admission, request: Request<'_>) -> Response {
        self.services.upstreams.started().await;
        match crate::upstream::serve_request(self.run(admission, request)).await {
            Ok(response) | Err(response) => response,
        }
    }

    async fn run(&self, admission: Admission, request: Request<'_>) -> Result<Response, Response> {
        let Admission {
            policy,
            caller,
            narrowing,
            started,
        } = admission;
        let method = request.method;
        if method != Method::POST && transport::speaks_stateless_era(request.headers) {
            return Err(Response::refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                None,
                code::INVALID_REQUEST,
                "MCP 2026-07-28 has no sessions: POST each request (and `subscriptions/listen` for notifications)",
            )
            .with_header(::http::header::ALLOW, HeaderValue::from_static("POST")));
        }
        if method == Method::DELETE {
            return Ok(self.delete_session(request.headers, &caller).await);
        }
        if method == Method::GET {
            transport::check_get_headers(request.headers)?;
            let session = self.require_session(request.headers, &caller, None)?;
            return Ok(stream::open(
                self,
                caller,
                stream::Subscriber::session(session.nonce),
                None,
            ));
        }
        transport::check_post_headers(request.headers)?;
        if request.body.len() > policy.max_body_bytes {
            return Err(transport::too_large(policy.max_body_bytes));
        }

        // 4. JSON-RPC
        let message = jsonrpc::parse(request.body).map_err(|e| {
            Response::refuse(StatusCode::BAD_REQUEST, None, e.code(), &e.to_string())
        })?;

        // The protocol era is decided here, once; below it, one set of methods.
        if modern::is_modern(request.headers, &message) {
            return self
                .serve_stateless(
                    request.headers,
                    &policy,
                    caller,
                    narrowing.as_ref(),
                    &message,
                    started,
                )
                .await;
        }
        transport::check_protocol_version(request.headers)?;

        // 5. session
        if message.method == Some("initialize") {
            return Ok(methods::initialize(self, &caller, &message));
        }
        let session = self.require_session(request.headers, &caller, message.id)?;
        self.services
            .metrics
            .mcp_requests
            .with_label_values(&[session.protocol_version])
            .inc();

        // 6. answers and notifications from the client
        if message.method.is_none() {
            return Ok(self.client_answered(&session, &message));
        }
        if !message.is_request() {
            if message.method == Some("notifications/cancelled") {
                self.client_cancelled(&session, &message);
            }
            return Ok(Response::empty(StatusCode::ACCEPTED));
        }

        // 7. dispatch
        let context = methods::Context {
            endpoint: self,
            policy: &policy,
            caller: &caller,
            narrowing: narrowing.as_ref(),
            session: &session,
            started,
            stateless: None,
            param_headers: Vec::new(),
        };
        Ok(methods::dispatch(&context, &message).await)
    }

    /// A request of the stateless era (2026-07-28): checked by that era's rules, served by the
    /// same methods, with no session (the key is the caller's identity, as before).
    async fn serve_stateless(
        &self,
        headers: &HeaderMap,
        policy: &Arc<Policy>,
        caller: Arc<KeyEntry>,
        narrowing: Option<&Narrowing>,
        message: &jsonrpc::Message<'_>,
        started: Instant,
    ) -> Result<Response, Response> {
        let declared = modern::check(headers, message)?;
        self.services
            .metrics
            .mcp_requests
            .with_label_values(&[&declared.version])
            .inc();
        let (Some(id), true) = (message.id, message.is_request()) else {
            // The stateless era's client sends no notifications over HTTP (it cancels by
            // closing the stream); nothing to do.
            return Ok(Response::empty(StatusCode::ACCEPTED));
        };
        let session = Session::stateless(
            &caller.name,
            crate::session::ClientCapabilities::from_json(&declared.capabilities),
        );
        let context = methods::Context {
            endpoint: self,
            policy,
            caller: &caller,
            narrowing,
            session: &session,
            started,
            stateless: Some(&declared),
            param_headers: transport::param_headers(headers),
        };
        match message.method.unwrap_or_default() {
            "server/discover" => Ok(methods::discover(self, id)),
            "subscriptions/listen" => Ok(methods::listen(&context, id, message.params)),
            "tools/list"
            | "tools/call"
            | "resources/list"
            | "resources/templates/list"
            | "resources/read"
            | "prompts/list"
            | "prompts/get"
            | "completion/complete" => Ok(methods::dispatch(&context, message).await),
            "tasks/get" | "tasks/update" | "tasks/cancel" => Ok(Box::pin(calls::task(
                &context,
                id,
                message.method.unwrap_or_default(),
                message.params,
            ))
            .await),
            method => Err(modern::not_found(Some(id), method)),
        }
    }

    /// The caller's session from the `Mcp-Session-Id` header, or the refusal to answer.
    fn require_session(
        &self,
        headers: &HeaderMap,
        caller: &KeyEntry,
        id: Option<&serde_json::value::RawValue>,
    ) -> Result<Session, Response> {
        let Some(session_id) = headers.get(transport::SESSION_HEADER) else {
            return Err(Response::refuse(
                StatusCode::BAD_REQUEST,
                id,
                code::INVALID_REQUEST,
                "missing Mcp-Session-Id header; send `initialize` first and repeat the session id it returns",
            ));
        };
        let session = self.open_session(session_id, caller).map_err(|e| {
            Response::refuse(
                StatusCode::NOT_FOUND,
                id,
                code::INVALID_REQUEST,
                &format!("unknown session: {e}; send `initialize` to start a new one"),
            )
        })?;
        Ok(session)
    }

    /// A client's answer to a request Sluice relayed to it from an upstream.
    fn client_answered(&self, session: &Session, message: &jsonrpc::Message<'_>) -> Response {
        let outcome = match (message.result, message.error) {
            (_, Some(error)) => Outcome::Error(error.to_owned()),
            (Some(result), None) => Outcome::Result(result.to_owned()),
            (None, None) => unreachable_response(),
        };
        let id = message.id.map(|id| id.get()).unwrap_or("null");
        if self.live.client_answered(session.nonce, id, outcome) {
            return Response::empty(StatusCode::ACCEPTED);
        }
        Response::refuse(
            StatusCode::BAD_REQUEST,
            None,
            code::INVALID_REQUEST,
            &format!(
                "no request with id {id} is waiting for this session's answer on this gateway (it was answered, timed out, or was sent by another instance)"
            ),
        )
    }

    /// `notifications/cancelled`: stop the call it names, if it is in flight here.
    fn client_cancelled(&self, session: &Session, message: &jsonrpc::Message<'_>) {
        #[derive(serde::Deserialize)]
        struct Params<'a> {
            #[serde(borrow, rename = "requestId")]
            request_id: &'a serde_json::value::RawValue,
        }
        let Some(params) = message
            .params
            .and_then(|p| serde_json::from_str::<Params<'_>>(p.get()).ok())
        else {
            return;
        };
        if !self
            .live
            .cancel_call(session.nonce, params.request_id.get())
        {
            tracing::debug!(
                request = params.request_id.get(),
                "notifications/cancelled for a call not in flight here"
            );
        }
    }

    fn open_session(
        &self,
        header: &HeaderValue,
        caller: &KeyEntry,
    ) -> Result<Session, SessionError> {
        let token = header.to_str().map_err(|_| SessionError::Malformed)?;
        let opened = self.sessions.open(token);
        // Opening may end idle sessions or admit one issued elsewhere.
        self.count_sessions();
        let session = opened?;
        if !session.belongs_to(&caller.name) {
            // Another key's session: as good as unknown.
            return Err(SessionError::BadSeal);
        }
        Ok(session)
    }

    async fn delete_session(&self, headers: &HeaderMap, caller: &KeyEntry) -> Response {
        let Some(header) = headers.get(transport::SESSION_HEADER) else {
            return Response::refuse(
                StatusCode::BAD_REQUEST,
                None,
                code::INVALID_REQUEST,
                "DELETE needs the Mcp-Session-Id header of the session to end",
            );
        };
        // Only the key that owns a session may end it; another key's is as good as unknown.
        let owned = self
            .open_session(header, caller)
            .and_then(|_| header.to_str().map_err(|_| SessionError::Malformed));
        match owned.and_then(|token| self.sessions.end_shared(token)) {
            Ok((session, shared)) => {
                self.live.end_session(session.nonce);
                self.services.upstreams.end_client_session(session.nonce);
                self.count_sessions();
                // With instances sharing sessions, answer once they know the session ended
                // (a Redis round trip); never wait long: the end reaches them regardless.
                if let Some(shared) = shared {
                    let _ = tokio::time::timeout(SHARED_END_WAIT, shared).await;
                }
                Response::empty(StatusCode::OK)
            }
            Err(e) => Response::refuse(
                StatusCode::NOT_FOUND,
                None,
                code::INVALID_REQUEST,
                &format!("unknown session: {e}"),
            ),
        }
    }
}

/// Longest wait for the other instances to learn of a `DELETE`.
const SHARED_END_WAIT: Duration = Duration::from_millis(250);

/// The caller's narrowing of its tools for this request (the `x-sluice-tools` header), bounded.
fn narrowing(headers: &HeaderMap) -> Result<Option<Narrowing>, Response> {
    let Some(value) = headers.get(NARROW_HEADER) else {
        return Ok(None);
    };
    let refuse = |why: &str| {
        Response::refuse(
            StatusCode::BAD_REQUEST,
            None,
            code::INVALID_REQUEST,
            &format!(
                "the `{NARROW_HEADER}` header {why}; send a shorter comma-separated list of tool names or globs"
            ),
        )
    };
    let text = value.to_str().map_err(|_| refuse("is not visible ASCII"))?;
    Narrowing::parse(text)
        .map(Some)
        .map_err(|e| refuse(&e.to_string()))
}

fn session_limits(config: &Config) -> crate::session_book::Limits {
    crate::session_book::Limits {
        max_sessions: config.mcp.max_sessions,
        idle_secs: config.mcp.session_idle_timeout.as_secs(),
    }
}

/// `jsonrpc::parse` refuses a message without `method`, `result` or `error`.
fn unreachable_response() -> Outcome {
    crate::upstream::client_error(code::INVALID_REQUEST, "a response without result or error")
}

fn method_not_allowed(message: &str) -> Response {
    Response::refuse(
        StatusCode::METHOD_NOT_ALLOWED,
        None,
        code::INVALID_REQUEST,
        message,
    )
    .with_header(
        ::http::header::ALLOW,
        HeaderValue::from_static("GET, POST, DELETE"),
    )
}

/// The session header name, for callers that set it on responses.
pub fn session_header() -> HeaderName {
    transport::SESSION_HEADER
}
