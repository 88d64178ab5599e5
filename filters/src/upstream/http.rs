//! A Streamable HTTP upstream. Messages go out on pooled keep-alive connections ([`super::post`]
//! says which client carries them); Sluice holds the upstream's `Mcp-Session-Id` and
//! initializes again when the upstream answers 404 (its session is gone, e.g. after a restart).
//! Answers may be JSON or an SSE stream; from a stream, the event carrying the response to our
//! request id is taken, and a large JSON answer is passed on as it arrives.
//!
//! Why Sluice calls the upstream itself instead of letting Pingora proxy the request
//! (design.md §2, "the hot path"): calls from many downstream sessions share one upstream
//! session, so Sluice must give each call its own request id and map the answer back, and it
//! must pick the one answer out of an SSE stream; both need the answer in hand. Where it
//! can, the hop still runs on Pingora's connector and pool, as the floor's does.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use reqwest::header::{ACCEPT, HeaderMap, HeaderName, HeaderValue};
use serde_json::value::RawValue;
use sluice_conf::{HttpTransport, UpstreamEra};
use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::answer::{MemberScanner, StreamedAnswer};
use super::post::{Poster, Reply};
use super::stateless;
use super::{
    Announcements, CallOptions, Event, MAX_MESSAGE_BYTES, Outcome, ServerRequest, UpstreamError,
    UpstreamMessage, cancelled_bytes, client_error, initialize_params, notification_bytes,
    request_bytes, response_bytes,
};
use crate::jsonrpc::code;
use crate::protocol::{PROTOCOL_HEADER, SESSION_HEADER};
use crate::sse::SseReader;

/// What a POST accepts: a JSON answer or an event stream.
pub(crate) const ACCEPT_BOTH: &str = "application/json, text/event-stream";
/// JSON answers larger than this (or of unknown length) are passed on as they arrive, for the
/// calls that allow it.
const STREAM_FROM: usize = 32 * 1024;
/// Rounds of questions one call to a stateless upstream may ask before Sluice gives up.
const MAX_INPUT_ROUNDS: usize = 16;
/// How long to wait before opening the upstream's GET stream again after it ended.
const LISTEN_RETRY: Duration = Duration::from_secs(2);

/// One Streamable HTTP upstream.
pub struct HttpConnection {
    wire: Arc<Wire>,
    timeout: Duration,
    /// The era to speak (see [`HttpConnection::new`]).
    era: UpstreamEra,
    /// Held while the session is established again, so that it happens once.
    reinitializing: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    /// Stops the GET stream listener when the connection goes.
    _listening: DropGuard,
    listen: CancellationToken,
}

/// What sending to the upstream needs; shared with the tasks that answer its requests and
/// listen on its GET stream.
struct Wire {
    server: Arc<str>,
    /// Carries POSTs: messages to the upstream.
    poster: Poster,
    /// Carries the GET stream and the session's DELETE.
    url: reqwest::Url,
    client: reqwest::Client,
    /// The upstream's session id and negotiated protocol version, once initialized.
    session: RwLock<Option<UpstreamSession>>,
    announcements: Arc<Announcements>,
    /// Calls in flight that can carry events: a request the upstream sends on its GET stream
    /// (not tied to a call) goes to the only one, if there is only one.
    in_flight: std::sync::Mutex<std::collections::HashMap<u64, CallOptions>>,
}

/// Keeps a call in [`Wire::in_flight`] while it runs.
struct InFlight<'a> {
    wire: &'a Wire,
    id: Option<u64>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.wire
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
    }
}

/// What an answer says about our upstream session.
enum SessionCheck {
    Gone(String),
    Alive(Box<Reply>),
    Failed(UpstreamError),
}

#[derive(Clone)]
struct UpstreamSession {
    id: Option<HeaderValue>,
    protocol_version: HeaderValue,
    /// The upstream speaks the stateless era: no session, `_meta` and headers per request.
    stateless: bool,
}

impl HttpConnection {
    /// Build the client; nothing is sent until [`HttpConnection::initialize`].
    /// `era`: which protocol era to speak (`per_client` servers are always spoken to in
    /// sessions).
    pub fn new(
        server: Arc<str>,
        config: &HttpTransport,
        timeout: Duration,
        announcements: Arc<Announcements>,
        era: UpstreamEra,
    ) -> Result<Self, UpstreamError> {
        let (client, url, headers) = build_client(&server, config)?;
        let poster = Poster::new(client.clone(), url.clone(), &headers, config.pool_size);
        let listen = CancellationToken::new();
        Ok(HttpConnection {
            wire: Arc::new(Wire {
                server,
                poster,
                url,
                client,
                session: RwLock::new(None),
                announcements,
                in_flight: Default::default(),
            }),
            timeout,
            era,
            reinitializing: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(1),
            _listening: listen.clone().drop_guard(),
            listen,
        })
    }

    /// Run the MCP handshake and keep the upstream's session id; then listen on the
    /// upstream's GET stream for what it announces outside calls (list changes, updates).
    /// Returns the upstream's `initialize` result.
    pub async fn initialize(&self) -> Result<Box<RawValue>, UpstreamError> {
        match self.era {
            UpstreamEra::Session => self.initialize_session().await,
            UpstreamEra::Stateless => self.discover().await,
            // Sessions first: a server of both eras keeps what only sessions offer (asking
            // its client mid-call); a server of the new era alone refuses `initialize`.
            UpstreamEra::Auto => match self.initialize_session().await {
                Ok(result) => Ok(result),
                Err(refused) => self.discover().await.map_err(|_| refused),
            },
        }
    }

    /// The session era's handshake.
    async fn initialize_session(&self) -> Result<Box<RawValue>, UpstreamError> {
        let wire = &self.wire;
        wire.set_session(None);
        let params =
            RawValue::from_string(initialize_params()).map_err(|e| wire.protocol(e.to_string()))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let response = wire
            .post(request_bytes(id, "initialize", Some(&params)), None)
            .await?;
        let session_id = response.session_id.clone();
        let outcome = wire
            .read_answer(response, id, &CallOptions::default())
            .await?;
        let result = match outcome {
            Outcome::Result(result) => result,
            Outcome::Error(error) => {
                return Err(wire.protocol(format!("initialize was refused: {}", error.get())));
            }
            Outcome::Streamed(_) => {
                return Err(wire.protocol("initialize came back in pieces".into()));
            }
        };
        let protocol_version = match Some(&result) {
            Some(result) => serde_json::from_str::<serde_json::Value>(result.get())
                .ok()
                .and_then(|v| {
                    v.get("protocolVersion")
                        .and_then(|p| p.as_str())
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| crate::protocol::LATEST.to_string()),
            None => crate::protocol::LATEST.to_string(),
        };
        let session = UpstreamSession {
            id: session_id,
            protocol_version: HeaderValue::try_from(protocol_version)
                .map_err(|e| wire.protocol(e.to_string()))?,
            stateless: false,
        };
        wire.set_session(Some(session.clone()));
        let response = wire
            .post(
                notification_bytes("notifications/initialized"),
                Some(&session),
            )
            .await?;
        if !response.is_success() {
            return Err(wire.http_error(response).await);
        }
        let wire = self.wire.clone();
        let stop = self.listen.child_token();
        // List changes come on the session's GET stream (a stateless upstream is re-synced on
        // its `sync_interval`).
        tokio::spawn(async move {
            tokio::select! {
                () = wire.listen() => {}
                () = stop.cancelled() => {}
            }
        });
        Ok(result)
    }

    /// `server/discover`: the stateless era's handshake, kept for the catalog and the era.
    async fn discover(&self) -> Result<Box<RawValue>, UpstreamError> {
        let wire = &self.wire;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let params = stateless::params(None);
        let body = request_bytes(id, "server/discover", Some(&params));
        let response = wire
            .post_stateless(body, "server/discover", None, &[])
            .await?;
        match wire
            .read_answer(response, id, &CallOptions::default())
            .await?
        {
            Outcome::Result(result) if stateless::speaks(&result) => {
                tracing::info!(server = %wire.server, "upstream speaks MCP {}", stateless::VERSION);
                wire.set_session(Some(UpstreamSession {
                    id: None,
                    protocol_version: HeaderValue::from_static(stateless::VERSION),
                    stateless: true,
                }));
                Ok(result)
            }
            _ => Err(wire.protocol(format!(
                "server/discover did not offer MCP {}",
                stateless::VERSION
            ))),
        }
    }

    /// A request to a stateless upstream. When it answers `input_required`, its questions go
    /// to the calling client (as requests from a server, which the relay passes on in the
    /// client's era) and the request is made again with the answers.
    async fn request_stateless(
        &self,
        method: &str,
        params: Option<&RawValue>,
        options: &CallOptions,
    ) -> Result<Outcome, UpstreamError> {
        let wire = &self.wire;
        let mut params = stateless::params(params);
        for _ in 0..MAX_INPUT_ROUNDS {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let name = stateless::name_header(method, Some(&params));
            let response = wire
                .post_stateless(
                    request_bytes(id, method, Some(&params)),
                    method,
                    name.as_deref(),
                    &options.param_headers,
                )
                .await?;
            let outcome = wire.read_answer(response, id, options).await?;
            let Some(asked) = (match &outcome {
                Outcome::Result(result) => stateless::input_required(result),
                _ => None,
            }) else {
                return Ok(outcome);
            };
            let mut waiting = Vec::new();
            for (key, asked_method, asked_params) in asked.requests {
                let (reply, answer) = oneshot::channel();
                options.deliver(
                    &wire.server,
                    Event::Request(ServerRequest {
                        method: asked_method,
                        params: asked_params,
                        reply,
                    }),
                );
                waiting.push((key, answer));
            }
            let mut answers = serde_json::Map::new();
            for (key, answer) in waiting {
                match answer.await {
                    Ok(Outcome::Result(result)) => {
                        answers.insert(key, serde_json::from_str(result.get()).unwrap_or_default());
                    }
                    Ok(refused @ Outcome::Error(_)) => return Ok(refused),
                    _ => {
                        return Err(wire
                            .protocol("the client did not answer the upstream's question".into()));
                    }
                }
            }
            params = stateless::retry(&params, answers, asked.state.as_deref());
        }
        Err(wire.protocol(format!(
            "the upstream asked for input more than {MAX_INPUT_ROUNDS} times"
        )))
    }

    /// End the upstream session (`DELETE` with its id), as a client leaving should.
    pub async fn close(&self) {
        let Some(session) = self.wire.current_session() else {
            return;
        };
        if session.id.is_none() {
            return;
        }
        let request = session.apply(self.wire.client.delete(self.wire.url.clone()));
        match request.send().await {
            Ok(r) => {
                tracing::debug!(server = %self.wire.server, status = r.status().as_u16(), "upstream session ended")
            }
            Err(e) => {
                tracing::debug!(server = %self.wire.server, "ending the upstream session failed: {}", error_chain(e))
            }
        }
        self.wire.set_session(None);
    }

    /// Initialize again after the session `stale` was lost, once for every call that found
    /// it lost: the first one in line runs the handshake, the others find its new session.
    async fn initialize_once(&self, stale: Option<&HeaderValue>) -> Result<(), UpstreamError> {
        let _one_at_a_time = self.reinitializing.lock().await;
        let current = self.wire.current_session();
        let replaced = match &current {
            Some(session) => session.id.as_ref() != stale,
            None => false,
        };
        if !replaced {
            self.initialize().await?;
        }
        Ok(())
    }

    /// Send a request and read its answer; initializes again once if the session is gone.
    /// Dropping the future cancels the request at the upstream.
    pub async fn request(
        &self,
        method: &str,
        params: Option<&RawValue>,
        options: &CallOptions,
    ) -> Result<Outcome, UpstreamError> {
        let wire = &self.wire;
        // The rare steps (a handshake, the stateless era) are boxed: inline, they would make
        // every call's future larger, and it is copied whole into its box.
        let work = async {
            for attempt in 0..2 {
                let Some(session) = wire.current_session() else {
                    Box::pin(self.initialize_once(None)).await?;
                    continue;
                };
                if session.stateless {
                    return Box::pin(self.request_stateless(method, params, options)).await;
                }
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let _in_flight = wire.track(id, options);
                let mut guard = CancelOnDrop {
                    wire,
                    id,
                    session: &session,
                    armed: true,
                };
                let stripped = super::stateless::without_envelope(params);
                let params = stripped.as_deref().or(params);
                let response = wire
                    .post(request_bytes(id, method, params), Some(&session))
                    .await?;
                if session.id.is_some() && attempt == 0 {
                    match wire.session_gone(response).await {
                        SessionCheck::Gone(reason) => {
                            guard.armed = false;
                            tracing::info!(server = %wire.server, "upstream session is gone ({reason}); initializing again");
                            Box::pin(self.initialize_once(session.id.as_ref())).await?;
                            continue;
                        }
                        SessionCheck::Alive(response) => {
                            let answer = wire.read_answer(*response, id, options).await;
                            guard.armed = answer.is_err();
                            return answer;
                        }
                        SessionCheck::Failed(error) => {
                            guard.armed = false;
                            return Err(error);
                        }
                    }
                }
                let answer = wire.read_answer(response, id, options).await;
                guard.armed = answer.is_err();
                return answer;
            }
            Err(wire.protocol("the upstream refused a fresh session".into()))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| UpstreamError::Timeout {
                server: wire.server.clone(),
                timeout: self.timeout,
            })?
    }
}

/// Tells the upstream to stop working on request `id` when its caller stops waiting (client
/// gone, cancelled, timeout). Closing the HTTP stream is not enough: the specification says a
/// disconnect is not a cancellation.
struct CancelOnDrop<'a> {
    wire: &'a Arc<Wire>,
    id: u64,
    session: &'a UpstreamSession,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let wire = self.wire.clone();
        let session = self.session.clone();
        let message = cancelled_bytes(self.id, "the client is gone");
        runtime.spawn(async move {
            if let Err(e) = wire.post(message, Some(&session)).await {
                tracing::debug!(server = %wire.server, "could not send notifications/cancelled: {e}");
            }
        });
    }
}

impl Wire {
    /// Track a call that can carry events until the guard is dropped.
    fn track(&self, id: u64, options: &CallOptions) -> InFlight<'_> {
        if options.events.is_none() {
            return InFlight {
                wire: self,
                id: None,
            };
        }
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, options.clone());
        InFlight {
            wire: self,
            id: Some(id),
        }
    }

    /// The options of the only call in flight that can carry events (default otherwise: the
    /// upstream's request is then answered by Sluice).
    fn only_call(&self) -> CallOptions {
        let calls = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        match calls.len() {
            1 => calls.values().next().cloned().unwrap_or_default(),
            _ => CallOptions::default(),
        }
    }

    fn current_session(&self) -> Option<UpstreamSession> {
        self.session
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_session(&self, session: Option<UpstreamSession>) {
        *self.session.write().unwrap_or_else(|p| p.into_inner()) = session;
    }

    /// Whether the upstream forgot our session: 404 per the specification, or a 400 that says
    /// so (the reference TypeScript servers answer an unknown session id with 400 "No valid
    /// session ID provided").
    async fn session_gone(&self, response: Reply) -> SessionCheck {
        match response.status {
            404 => SessionCheck::Gone("HTTP 404".into()),
            400 => {
                let body = read_text(response).await;
                if body.to_ascii_lowercase().contains("session") {
                    SessionCheck::Gone("HTTP 400 about the session".into())
                } else {
                    tracing::warn!(server = %self.server, body_bytes = body.len(), "upstream refused a request with HTTP 400");
                    SessionCheck::Failed(UpstreamError::Http {
                        server: self.server.clone(),
                        status: 400,
                        detail: status_reason(400),
                    })
                }
            }
            _ => SessionCheck::Alive(Box::new(response)),
        }
    }

    /// POST a stateless-era request with the headers that era asks for.
    async fn post_stateless(
        &self,
        body: Vec<u8>,
        method: &str,
        name: Option<&str>,
        param_headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Reply, UpstreamError> {
        let mut headers = Vec::with_capacity(3 + param_headers.len());
        headers.push((
            PROTOCOL_HEADER,
            HeaderValue::from_static(stateless::VERSION),
        ));
        headers.push((
            HeaderName::from_static("mcp-method"),
            HeaderValue::try_from(method).map_err(|e| self.protocol(e.to_string()))?,
        ));
        if let Some(name) = name {
            headers.push((
                HeaderName::from_static("mcp-name"),
                HeaderValue::try_from(name).map_err(|e| self.protocol(e.to_string()))?,
            ));
        }
        headers.extend(param_headers.iter().cloned());
        self.send(&headers, body).await
    }

    /// POST a message, in the upstream's session if there is one.
    async fn post(
        &self,
        body: Vec<u8>,
        session: Option<&UpstreamSession>,
    ) -> Result<Reply, UpstreamError> {
        match session {
            Some(session) => self.send(&session.headers(), body).await,
            None => self.send(&[], body).await,
        }
    }

    async fn send(
        &self,
        headers: &[(HeaderName, HeaderValue)],
        body: Vec<u8>,
    ) -> Result<Reply, UpstreamError> {
        self.poster
            .post(headers, body)
            .await
            .map_err(|detail| UpstreamError::Connect {
                server: self.server.clone(),
                detail,
            })
    }

    /// Take the answer to request `id` from a JSON or SSE response; what comes before it in
    /// a stream goes to the call's events.
    async fn read_answer(
        self: &Arc<Self>,
        response: Reply,
        id: u64,
        options: &CallOptions,
    ) -> Result<Outcome, UpstreamError> {
        if !response.is_success() {
            return Err(self.http_error(response).await);
        }
        if !response.event_stream {
            if options.stream_answer
                && response
                    .content_length
                    .is_none_or(|n| n > STREAM_FROM as u64)
            {
                return self.stream_answer(response).await;
            }
            let body = read_bounded(response, MAX_MESSAGE_BYTES)
                .await
                .map_err(|detail| self.protocol(detail))?;
            let message: UpstreamMessage = serde_json::from_slice(&body)
                .map_err(|e| self.protocol(format!("the JSON answer is invalid: {e}")))?;
            if message.numeric_id() != Some(id) {
                return Err(self.protocol(format!(
                    "it answered request {id} with the id {}",
                    message
                        .id
                        .as_deref()
                        .map_or("(none)", |i| i.get())
                        .chars()
                        .take(40)
                        .collect::<String>()
                )));
            }
            return message
                .into_outcome()
                .ok_or_else(|| self.protocol("the answer has no `result` or `error`".into()));
        }
        let mut events = SseReader::new(response.body, MAX_MESSAGE_BYTES);
        while let Some(event) = events.next_event().await {
            let event = event.map_err(|e| self.protocol(format!("the event stream: {e}")))?;
            if event.data.is_empty() {
                continue;
            }
            let Ok(message) = serde_json::from_str::<UpstreamMessage>(&event.data) else {
                tracing::debug!(server = %self.server, "ignoring an event that is not JSON-RPC");
                continue;
            };
            if message.method.is_none() {
                if message.numeric_id() == Some(id) {
                    super::post::drain(events.into_inner());
                    return message.into_outcome().ok_or_else(|| {
                        self.protocol("the answer has no `result` or `error`".into())
                    });
                }
                continue;
            }
            self.route(message, event.data, options);
        }
        Err(UpstreamError::Disconnected {
            server: self.server.clone(),
            reason: "the event stream ended before the answer".into(),
        })
    }

    /// Pass a large JSON answer on as it arrives: wait for its `result` (or `error`) to begin,
    /// then hand the rest to a task that forwards the value's bytes.
    async fn stream_answer(&self, response: Reply) -> Result<Outcome, UpstreamError> {
        let mut body = response.body;
        let mut scanner = MemberScanner::new();
        let mut skipped = 0usize;
        let (member, first) = loop {
            let chunk = match body.next().await {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    return Err(self.protocol(format!("reading the answer failed: {e}")));
                }
                None => return Err(self.protocol("the answer has no `result` or `error`".into())),
            };
            let found = scanner.scan(&chunk);
            if let Some(member) = found.starts {
                break (member, found.range.map(|range| chunk.slice(range)));
            }
            skipped += chunk.len();
            if skipped > MAX_MESSAGE_BYTES {
                return Err(self.protocol(
                    "the answer's `result` does not begin within the size limit".into(),
                ));
            }
        };
        let is_error = Arc::new(AtomicBool::new(scanner.is_error()));
        // The rest is read as the client's side asks for it: no task, no queue between.
        let flag = is_error.clone();
        let rest = futures::stream::unfold(Some((body, scanner, 0usize)), move |state| {
            let flag = flag.clone();
            async move {
                let (mut body, mut scanner, mut total) = state?;
                loop {
                    if scanner.is_done() {
                        flag.store(scanner.is_error(), Ordering::Relaxed);
                        super::post::drain(body);
                        return None;
                    }
                    let chunk = match body.next().await {
                        Some(Ok(chunk)) => chunk,
                        Some(Err(e)) => {
                            let cut = format!("the upstream's answer broke off: {e}");
                            return Some((Err(cut), None));
                        }
                        None => {
                            let cut = "the upstream's answer ended early".to_string();
                            return Some((Err(cut), None));
                        }
                    };
                    total += chunk.len();
                    if total > MAX_MESSAGE_BYTES {
                        let cut = format!(
                            "the upstream's answer is larger than {MAX_MESSAGE_BYTES} bytes"
                        );
                        return Some((Err(cut), None));
                    }
                    if let Some(range) = scanner.scan(&chunk).range {
                        return Some((Ok(chunk.slice(range)), Some((body, scanner, total))));
                    }
                }
            }
        });
        let chunks = futures::stream::iter(first.map(Ok)).chain(rest).boxed();
        Ok(Outcome::Streamed(StreamedAnswer {
            member,
            chunks,
            is_error,
        }))
    }

    /// Route a request or notification from the upstream: announcements to the supervisor,
    /// the rest to the call it came with (if any).
    fn route(self: &Arc<Self>, message: UpstreamMessage, data: String, options: &CallOptions) {
        let Some(method) = message.method.clone() else {
            return;
        };
        match (&message.id, method.as_str()) {
            (None, "notifications/tools/list_changed")
            | (None, "notifications/resources/list_changed")
            | (None, "notifications/prompts/list_changed") => {
                self.announcements.list_changed.notify_one()
            }
            (None, "notifications/resources/updated") => {
                self.announcements.resource_updated(&self.server, &message)
            }
            (None, _) => {
                if let Ok(raw) = RawValue::from_string(data) {
                    options.deliver(&self.server, Event::Notification(raw));
                }
            }
            (Some(id), _) => {
                let id = id.get().to_string();
                let (reply, answer) = oneshot::channel();
                let request = ServerRequest {
                    method: method.clone(),
                    params: message.params,
                    reply,
                };
                if method == "ping" {
                    let _ = request.reply.send(Outcome::Result(
                        RawValue::from_string("{}".into()).unwrap_or_default(),
                    ));
                } else {
                    options.deliver(&self.server, Event::Request(request));
                }
                self.answer_later(id, method, answer);
            }
        }
    }

    /// Send the client's answer to the upstream's request `id` once it comes.
    fn answer_later(
        self: &Arc<Self>,
        id: String,
        method: String,
        answer: oneshot::Receiver<Outcome>,
    ) {
        let wire = self.clone();
        tokio::spawn(async move {
            let outcome = answer.await.unwrap_or_else(|_| {
                client_error(
                    code::INTERNAL_ERROR,
                    &format!("the client did not answer `{method}`"),
                )
            });
            let session = wire.current_session();
            if let Err(e) = wire
                .post(response_bytes(&id, &outcome), session.as_ref())
                .await
            {
                tracing::warn!(server = %wire.server, "could not answer the upstream's `{method}`: {e}");
            }
        });
    }

    /// Read the upstream's GET stream while it is offered: list changes and resource updates
    /// come this way outside calls. An upstream that offers none (405) is not asked again.
    async fn listen(self: Arc<Self>) {
        loop {
            let Some(session) = self.current_session() else {
                return;
            };
            let request = session.apply(
                self.client
                    .get(self.url.clone())
                    .header(ACCEPT, "text/event-stream"),
            );
            let response = match request.send().await.map(Reply::from_reqwest) {
                Ok(r) if r.is_success() && r.event_stream => r,
                Ok(r) => {
                    tracing::debug!(server = %self.server, status = r.status, "the upstream offers no GET stream");
                    return;
                }
                Err(e) => {
                    tracing::debug!(server = %self.server, "the upstream's GET stream failed: {}", error_chain(e));
                    tokio::time::sleep(LISTEN_RETRY).await;
                    continue;
                }
            };
            let mut events = SseReader::new(response.body, MAX_MESSAGE_BYTES);
            while let Some(Ok(event)) = events.next_event().await {
                if let Ok(message) = serde_json::from_str::<UpstreamMessage>(&event.data) {
                    let only = self.only_call();
                    self.route(message, event.data, &only);
                }
            }
            tokio::time::sleep(LISTEN_RETRY).await;
        }
    }

    async fn http_error(&self, response: Reply) -> UpstreamError {
        let status = response.status;
        let body = read_text(response).await;
        // Neither clients nor the log get the body: an upstream's error page may echo the
        // request, credentials included.
        tracing::warn!(server = %self.server, status, body_bytes = body.len(), "upstream answered an HTTP error");
        let detail = status_reason(status);
        UpstreamError::Http {
            server: self.server.clone(),
            status,
            detail,
        }
    }

    fn protocol(&self, detail: String) -> UpstreamError {
        UpstreamError::Protocol {
            server: self.server.clone(),
            detail,
        }
    }
}

/// The pooled client, parsed URL and configured headers of an HTTP upstream (Streamable HTTP
/// or legacy SSE); the client sends the headers and trusts the configured CA file besides the
/// system roots.
pub(crate) fn build_client(
    server: &Arc<str>,
    config: &HttpTransport,
) -> Result<(reqwest::Client, reqwest::Url, HeaderMap), UpstreamError> {
    let headers = configured_headers(server, config)?;
    let url = reqwest::Url::parse(&config.url).map_err(|e| UpstreamError::Connect {
        server: server.clone(),
        detail: format!(
            "invalid url `{}`: {e}",
            sluice_conf::redact_url(&config.url)
        ),
    })?;
    let mut builder = reqwest::Client::builder();
    if let Some(ca_file) = &config.ca_file {
        let pem = std::fs::read(ca_file).map_err(|e| UpstreamError::Connect {
            server: server.clone(),
            detail: format!("cannot read `ca_file` {}: {e}", ca_file.display()),
        })?;
        let roots =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| UpstreamError::Connect {
                server: server.clone(),
                detail: format!(
                    "`ca_file` {} holds no valid PEM certificates: {e}",
                    ca_file.display()
                ),
            })?;
        for root in roots {
            builder = builder.add_root_certificate(root);
        }
    }
    let client = builder
        .default_headers(headers.clone())
        .pool_max_idle_per_host(config.pool_size)
        .pool_idle_timeout(super::post::IDLE_TIMEOUT)
        .tcp_nodelay(true)
        .connect_timeout(super::post::CONNECT_TIMEOUT)
        .build()
        .map_err(|e| UpstreamError::Connect {
            server: server.clone(),
            detail: format!("cannot build the HTTP client: {e}"),
        })?;
    Ok((client, url, headers))
}

/// The headers the configuration adds to every request, marked sensitive (they are often
/// credentials).
fn configured_headers(
    server: &Arc<str>,
    config: &HttpTransport,
) -> Result<HeaderMap, UpstreamError> {
    let mut headers = HeaderMap::new();
    for (name, value) in &config.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.expose()),
        ) else {
            return Err(UpstreamError::Connect {
                server: server.clone(),
                detail: format!("header `{name}` in the configuration is not a valid HTTP header"),
            });
        };
        let mut value = value;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok(headers)
}

impl UpstreamSession {
    /// The headers that put a POST in this session.
    fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = Vec::with_capacity(2);
        if let Some(id) = &self.id {
            headers.push((SESSION_HEADER, id.clone()));
        }
        headers.push((PROTOCOL_HEADER, self.protocol_version.clone()));
        headers
    }

    fn apply(&self, mut request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        for (name, value) in self.headers() {
            request = request.header(name, value);
        }
        request
    }
}

/// A reply's body, refused past `limit` bytes.
pub(crate) async fn read_bounded(response: Reply, limit: usize) -> Result<Vec<u8>, String> {
    if response.content_length.is_some_and(|n| n > limit as u64) {
        return Err(format!("the answer is larger than {limit} bytes"));
    }
    let mut body = Vec::with_capacity(response.content_length.unwrap_or(1024) as usize);
    let mut stream = response.body;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("reading the answer failed: {e}"))?;
        if body.len() + chunk.len() > limit {
            return Err(format!("the answer is larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The start of an error body, for messages; never the whole of a large one.
async fn read_text(response: Reply) -> String {
    read_bounded(response, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// reqwest's top-level message hides the cause ("error sending request"); show the chain.
/// What a client is told of an upstream's HTTP error status.
fn status_reason(status: u16) -> String {
    ::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("error")
        .to_string()
}

/// A transport error with its causes, without the upstream's URL (which may hold
/// credentials: userinfo, a query token).
pub(crate) fn error_chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
