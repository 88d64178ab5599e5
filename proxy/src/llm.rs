//! The LLM routes on Pingora's proxy path.
//!
//! The request body names the model, so it is read before a provider can be chosen; and a
//! fallback must send it again, whole, to another provider.
//!
//! - A body that fits Pingora's retry buffer (64 KiB) is proxied on the request's own session
//!   ([`FastPath`]): a failed attempt (connect error, timeout, 429, 529, 5xx) before anything
//!   reached the client becomes a retry, `upstream_peer` picks the next target, and Pingora
//!   replays the buffered body, which `request_body_filter` swaps for the target's own.
//! - A larger body (a Claude Code request usually is) cannot be replayed by Pingora: the main
//!   session keeps it, and each attempt is a Pingora *subrequest* given that body as a preset.
//!   The subrequest runs this same `ProxyHttp` (`upstream_peer`, the request and response
//!   filters, Pingora's connection pool), and its response is piped to the client as it
//!   arrives; a failed attempt whose response has not started is swallowed, and the next
//!   target is tried.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::HttpTask;
use pingora::proxy::Session;
use pingora::proxy::subrequest::pipe::{InputBody, InputBodyType, pipe_subrequest};
use pingora::proxy::subrequest::{BodyMode, Ctx as SubrequestCtx};
use sluice_filters::llm::api::Api;
use sluice_filters::llm::observe::{Observation, Observed};
use sluice_filters::llm::{self, Attempt, AttemptEnd, LlmEndpoint, Plan, Planned};

use crate::gateway::{NoBody, read_body};
use crate::respond;

/// How long the last pieces of a failed attempt are waited for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an idle connection to a provider is kept for the next request.
const PROVIDER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What an attempt reports back to the request it serves.
#[derive(Default)]
pub struct Report {
    /// The provider's status, once its head arrived.
    status: Option<u16>,
    /// Why there is no answer: connect error, timeout, broken connection.
    failure: Option<String>,
    /// What the response carried, once it ended (maybe still to read, once the client has it).
    observed: Option<Observation>,
}

impl Report {
    /// How the attempt ended, from what it reported.
    fn end(&self) -> AttemptEnd {
        match (self.status, &self.failure) {
            (Some(status), _) => AttemptEnd::Answered(status),
            (None, Some(failure)) => AttemptEnd::Failed(failure.clone()),
            (None, None) => AttemptEnd::Failed("the provider did not answer".into()),
        }
    }
}

/// The request for target `index` of `plan`, its provider's address resolved. Boxed: it is
/// kept in the request's context, which Pingora moves around.
async fn prepare(
    llm: &LlmEndpoint,
    plan: &Plan,
    index: usize,
) -> std::result::Result<Box<AttemptCtx>, String> {
    let attempt = llm.attempt(plan, index).map_err(|e| e.to_string())?;
    let peer = resolve(llm, &attempt).await?;
    Ok(Box::new(AttemptCtx {
        attempt,
        peer,
        report: Arc::default(),
    }))
}

/// An attempt, as the subrequest that makes it sees it.
pub struct AttemptCtx {
    attempt: Attempt,
    peer: SocketAddr,
    report: Arc<Mutex<Report>>,
}

impl AttemptCtx {
    fn report(&self) -> std::sync::MutexGuard<'_, Report> {
        self.report.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What became of a request of an LLM route.
pub enum Served {
    /// Answered (by Sluice, or by subrequests); the time spent waiting for providers.
    Answered(Option<Duration>),
    /// To proxy on the main session itself: its first attempt.
    Proxy(Box<FastPath>, Box<AttemptCtx>),
}

/// A request whose body fits Pingora's retry buffer: its attempts run on the main session,
/// through the proxy phases, without a subrequest (a second task and a channel crossing per
/// piece). Pingora's retry loop makes the fallbacks, replaying the buffered body.
pub struct FastPath {
    plan: Plan,
    index: usize,
    started: Instant,
    /// The current attempt failed in a way the next target may repair.
    falling_back: bool,
}

/// Serve one request of an LLM route on the main session.
pub async fn serve(
    llm: &LlmEndpoint,
    session: &mut Session,
    api: Api,
    body_timeout: Duration,
) -> Result<Served> {
    let head = session.req_header();
    let admission = match llm.admit(api, &head.method, &head.headers) {
        Ok(admission) => admission,
        Err(refusal) => {
            session.set_keepalive(None);
            respond::write(session, refusal).await?;
            return Ok(Served::Answered(None));
        }
    };
    // Pingora keeps up to 64 KiB of the body for retries: enough for the fast path.
    session.downstream_session.enable_retry_buffering();
    let body = match read_body(session, admission.max_body_bytes(), body_timeout, || {
        llm::refusal(
            api.format(),
            http::StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "the request body is larger than {} bytes (`llm.max_body_bytes`)",
                admission.max_body_bytes()
            ),
        )
    })
    .await
    {
        Ok(body) => body.freeze(),
        Err(NoBody::Refused(refusal)) => {
            session.set_keepalive(None);
            respond::write(session, refusal).await?;
            return Ok(Served::Answered(None));
        }
        Err(NoBody::ClientGone) => {
            session.set_keepalive(None);
            return Ok(Served::Answered(None));
        }
    };
    let mut plan = match llm.plan(admission, &session.req_header().headers, body) {
        Planned::Answer(response) => {
            respond::write(session, response).await?;
            return Ok(Served::Answered(None));
        }
        Planned::Proxy(plan) => *plan,
    };
    if session.downstream_session.get_retry_buffer().is_some() {
        let mut fast = Box::new(FastPath {
            plan,
            index: 0,
            started: Instant::now(),
            falling_back: false,
        });
        if let Some(attempt) = fast.next_attempt(llm, 0).await {
            return Ok(Served::Proxy(fast, attempt));
        }
        plan = fast.plan;
        let response = plan.unreachable("no provider could be tried");
        respond::write(session, response).await?;
        llm.finish(plan, 502, None, None);
        return Ok(Served::Answered(None));
    }
    let (status, served, observed) = try_targets(llm, session, &mut plan).await?;
    let upstream_time = plan.upstream_time();
    llm.finish(plan, status, served, observed.as_ref());
    Ok(Served::Answered(Some(upstream_time)))
}

impl FastPath {
    /// The first attempt from target `from` on that can be prepared (a target whose request
    /// cannot be built or whose address cannot be resolved is recorded and skipped).
    async fn next_attempt(&mut self, llm: &LlmEndpoint, from: usize) -> Option<Box<AttemptCtx>> {
        for index in from..self.plan.len() {
            let started = Instant::now();
            match prepare(llm, &self.plan, index).await {
                Ok(attempt) => {
                    self.index = index;
                    self.started = Instant::now();
                    return Some(attempt);
                }
                Err(why) => {
                    llm.attempt_ended(
                        &mut self.plan,
                        index,
                        &AttemptEnd::Failed(why),
                        started.elapsed(),
                    );
                    llm.fell_back(&self.plan, index);
                }
            }
        }
        None
    }

    /// Mark the current attempt failed in a way the next target may repair.
    pub fn fall_back(&mut self) {
        self.falling_back = true;
    }

    /// Whether the current attempt is being given up for the next target.
    pub fn is_falling_back(&self) -> bool {
        self.falling_back
    }

    /// Pingora asks for a peer again after a failed attempt: account for it and prepare the
    /// next target.
    pub async fn advance(
        &mut self,
        llm: &LlmEndpoint,
        current: &AttemptCtx,
    ) -> Option<Box<AttemptCtx>> {
        self.falling_back = false;
        let end = current.end();
        llm.attempt_ended(&mut self.plan, self.index, &end, self.started.elapsed());
        llm.fell_back(&self.plan, self.index);
        self.next_attempt(llm, self.index + 1).await
    }

    /// The request is over: account for the last attempt and the request.
    pub fn finish(mut self, llm: &LlmEndpoint, last: Option<&AttemptCtx>, status: u16) -> Duration {
        let mut observed = None;
        let mut served = None;
        if let Some(attempt) = last {
            let end = attempt.end();
            llm.attempt_ended(&mut self.plan, self.index, &end, self.started.elapsed());
            let mut report = attempt.report();
            // The client has its answer: a body left unread is read now.
            observed = report.observed.take().map(Observation::read);
            served = report.status.map(|_| self.index);
        }
        let upstream_time = self.plan.upstream_time();
        llm.finish(self.plan, status, served, observed.as_ref());
        upstream_time
    }
}

/// Try the plan's targets in turn until one answers in a way the client should see.
/// Returns the status the client got, the attempt that served it and what it carried.
async fn try_targets(
    llm: &LlmEndpoint,
    session: &mut Session,
    plan: &mut Plan,
) -> Result<(u16, Option<usize>, Option<Observed>)> {
    let mut last_failure = String::from("no provider could be tried");
    for index in 0..plan.len() {
        let started = Instant::now();
        let attempt = match prepare(llm, plan, index).await {
            Ok(attempt) => attempt,
            Err(why) => {
                last_failure = why;
                llm.attempt_ended(
                    plan,
                    index,
                    &AttemptEnd::Failed(last_failure.clone()),
                    started.elapsed(),
                );
                if index + 1 < plan.len() {
                    llm.fell_back(plan, index);
                }
                continue;
            }
        };
        let may_fall_back = attempt.may_fall_back();
        let report = attempt.report.clone();
        let outcome = run_attempt(session, plan.body().clone(), attempt, may_fall_back).await;
        let report = std::mem::take(&mut *report.lock().unwrap_or_else(|p| p.into_inner()));
        let end = report.end();
        llm.attempt_ended(plan, index, &end, started.elapsed());
        match outcome {
            Piped::Swallowed => {
                llm.fell_back(plan, index);
                last_failure = match end {
                    AttemptEnd::Answered(status) => format!("HTTP {status}"),
                    AttemptEnd::Failed(failure) => failure,
                };
                continue;
            }
            Piped::Passed => {
                let observed = report.observed.map(Observation::read);
                return Ok((report.status.unwrap_or(502), Some(index), observed));
            }
            Piped::Nothing(why) => {
                last_failure = report.failure.unwrap_or(why);
                if may_fall_back {
                    llm.fell_back(plan, index);
                }
                continue;
            }
        }
    }
    let message = format!("no provider could answer: {last_failure}");
    respond::write(session, plan.unreachable(&message)).await?;
    Ok((502, None, None))
}

/// How an attempt's response went to the client.
enum Piped {
    /// It did (some or all of it): the request is answered.
    Passed,
    /// A failure that another target may still repair; the client saw nothing.
    Swallowed,
    /// Nothing reached the client (the subrequest failed before any response).
    Nothing(String),
}

/// Run one attempt as a subrequest, piping its response to the client unless it is a
/// failure to fall back from.
async fn run_attempt(
    session: &mut Session,
    client_body: Bytes,
    attempt: Box<AttemptCtx>,
    may_fall_back: bool,
) -> Piped {
    let Some(spawner) = session.subrequest_spawner.as_ref() else {
        return Piped::Nothing("subrequests are not enabled".into());
    };
    let ctx = SubrequestCtx::builder()
        .body_mode(BodyMode::ExpectBody)
        .user_ctx(Box::new(Some(attempt)))
        .build();
    let (subrequest, handle) = spawner.create_subrequest(session.downstream_session.as_ref(), ctx);

    let mut swallowing = false;
    let mut passed = false;
    let filter = |task: HttpTask| -> Result<Option<HttpTask>> {
        if swallowing {
            return Ok(None);
        }
        if !passed {
            let failed = match &task {
                HttpTask::Header(header, _) => llm::retryable(header.status.as_u16()),
                HttpTask::Failed(_) => true,
                _ => false,
            };
            if failed && may_fall_back {
                swallowing = true;
                return Ok(None);
            }
            passed = true;
        }
        Ok(Some(task))
    };
    let result = pipe_subrequest(
        session,
        subrequest,
        handle,
        filter,
        // The client's body, as its head frames it; the attempt swaps in its own.
        InputBodyType::Preset(InputBody::Bytes(vec![client_body])),
    )
    .await;
    let (mut state, error) = match result {
        Ok(state) => (state, None),
        Err(e) => (e.state, Some(e.error)),
    };
    if error.is_some() && passed {
        // The subrequest failed after its answer had started: its last pieces (the error event
        // that ends the client's stream) may still be queued; the pipe stops at the failure
        // without writing them.
        if let Some(rx) = state.pipe_rx.take() {
            drain(session, rx).await;
        }
    }
    // The subrequest records what its response carried when it ends: wait for it.
    if let Some(join) = state.join_handle {
        let _ = join.await;
    }
    if swallowing {
        Piped::Swallowed
    } else if passed {
        Piped::Passed
    } else {
        Piped::Nothing(
            error.map_or_else(|| "the provider did not answer".into(), |e| e.to_string()),
        )
    }
}

/// Write what a failed subrequest still had queued for the client, up to its failure.
async fn drain(session: &mut Session, mut rx: tokio::sync::mpsc::Receiver<HttpTask>) {
    let write = async {
        while let Some(task) = rx.recv().await {
            if matches!(task, HttpTask::Failed(_)) {
                return;
            }
            match session.write_response_tasks(vec![task]).await {
                Ok(true) | Err(_) => return,
                Ok(false) => {}
            }
        }
    };
    // The subrequest ends right after its failure; never wait long for it.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, write).await;
}

/// The provider's address (see [`sluice_filters::llm::resolve`]).
async fn resolve(llm: &LlmEndpoint, attempt: &Attempt) -> std::result::Result<SocketAddr, String> {
    let address = &attempt.outgoing.address;
    llm.resolver()
        .resolve(&address.host, address.port)
        .await
        .map_err(|e| {
            format!(
                "cannot resolve `{}` of provider `{}`: {e}",
                address.host, attempt.provider
            )
        })
}

/// The attempt a subrequest was created for, taken from its context.
pub fn take_attempt(session: &mut Session) -> Option<Box<AttemptCtx>> {
    session
        .subrequest_ctx
        .as_mut()?
        .user_ctx_mut()?
        .downcast_mut::<Option<Box<AttemptCtx>>>()?
        .take()
}

impl AttemptCtx {
    /// Whether another target is left if this one fails.
    pub fn may_fall_back(&self) -> bool {
        self.attempt.may_fall_back
    }

    /// How the attempt ended, from what it reported.
    fn end(&self) -> AttemptEnd {
        self.report().end()
    }

    /// Note a failure that will be repaired by the next target.
    pub fn failing_over(&self, status: Option<u16>, error: Option<&pingora::Error>) {
        let mut report = self.report();
        if let Some(status) = status {
            report.status = Some(status);
        }
        if let Some(error) = error {
            report.failure = Some(describe(error, &self.attempt.provider));
        }
    }

    /// The provider to connect to.
    pub fn peer(&self) -> Box<HttpPeer> {
        let address = &self.attempt.outgoing.address;
        let mut peer = HttpPeer::new(self.peer, address.tls, address.host.clone());
        peer.options.connection_timeout = Some(self.attempt.connect_timeout);
        peer.options.total_connection_timeout = Some(self.attempt.connect_timeout);
        peer.options.read_timeout = Some(self.attempt.timeout);
        peer.options.write_timeout = Some(self.attempt.timeout);
        peer.options.idle_timeout = Some(PROVIDER_IDLE_TIMEOUT);
        Box::new(peer)
    }

    /// Make the request the provider's: path, headers, credentials. The head is built as
    /// `http` parts: header names go out as they are (lower case), without a case-keeping map,
    /// and without `append_header` parsing each prepared name again.
    pub fn rewrite_request(&self, request: &mut RequestHeader) -> Result<()> {
        let outgoing = &self.attempt.outgoing;
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = http::Method::POST;
        parts.uri = http::Uri::try_from(outgoing.path.as_str())
            .explain_err(InvalidHTTPHeader, |e| format!("provider path: {e}"))?;
        parts.headers.reserve(outgoing.headers.len());
        for (name, value) in &outgoing.headers {
            parts.headers.append(name.clone(), value.clone());
        }
        *request = RequestHeader::from(parts);
        Ok(())
    }

    /// The subrequest reads the client's body, as the client's head frames it; what goes to
    /// the provider is the attempt's own body, whole, at the end.
    pub fn request_body(&self, body: &mut Option<Bytes>, end: bool) {
        *body = end.then(|| self.attempt.outgoing.body.clone());
    }

    /// The provider's response head: note the status, and make the head fit the body the
    /// client will get. The head is changed as `http` parts: Pingora's own setters parse each
    /// name again and keep a second, case-preserving map; header names go out lower case.
    pub fn response_head(&mut self, response: &mut ResponseHeader) -> Result<()> {
        const PROVIDER: HeaderName = HeaderName::from_static(llm::PROVIDER_HEADER);
        const MODEL: HeaderName = HeaderName::from_static(llm::MODEL_HEADER);
        let value = |text: &str| {
            HeaderValue::from_str(text)
                .explain_err(InvalidHTTPHeader, |_| format!("header value {text:?}"))
        };
        let (provider, model) = (
            value(&self.attempt.provider)?,
            value(&self.attempt.provider_model)?,
        );
        let status = response.status.as_u16();
        self.report().status = Some(status);
        let head = self.attempt.head(status);
        let empty = ResponseHeader::from(http::Response::new(()).into_parts().0);
        let mut parts = http::response::Parts::from(std::mem::replace(response, empty));
        // Statuses only one format knows (Anthropic's 529) become the client format's.
        let client = llm::translate::client_status(status, self.attempt.client_format());
        if client != status {
            parts.status = http::StatusCode::from_u16(client)
                .explain_err(InvalidHTTPHeader, |_| format!("status {client}"))?;
        }
        let headers = &mut parts.headers;
        if head.drop_length {
            headers.remove(http::header::CONTENT_LENGTH);
            headers.insert(
                http::header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        if let Some(content_type) = head.content_type {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(content_type),
            );
        }
        headers.remove(http::header::SET_COOKIE);
        headers.insert(PROVIDER, provider);
        headers.insert(MODEL, model);
        *response = ResponseHeader::from(parts);
        Ok(())
    }

    /// A piece of the provider's body, shaped for the client.
    pub fn response_body(&mut self, body: &mut Option<Bytes>, end: bool) {
        self.attempt.body(body, end);
        if end {
            let observation = self.attempt.take_observation();
            self.report().observed = Some(observation);
        }
    }

    /// The attempt failed without a usable response; write the client an error in its format
    /// (it reaches the client only if no other target is left).
    pub async fn failed(&mut self, session: &mut Session, error: &pingora::Error) -> u16 {
        let reason = describe(error, &self.attempt.provider);
        self.report().failure = Some(reason.clone());
        let status = if matches!(
            error.etype(),
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout
        ) {
            504
        } else {
            502
        };
        if session.response_written().is_some() {
            // The answer had started: end the client's stream with an error event.
            let ending = self.attempt.broken(&reason);
            // A body that ended was taken in full already; a broken stream's ending is new.
            if ending.is_some() || self.report().observed.is_none() {
                let observation = self.attempt.take_observation();
                self.report().observed = Some(observation);
            }
            if let Some(ending) = ending {
                let _ = session.write_response_body(Some(ending), true).await;
            }
        } else {
            let response = llm::refusal(
                self.attempt.client_format(),
                http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY),
                &reason,
            );
            let _ = respond::write(session, response).await;
        }
        status
    }
}

/// A provider failure in words, without URLs or credentials.
fn describe(error: &pingora::Error, provider: &str) -> String {
    let what = match error.etype() {
        ErrorType::ConnectTimedout => "connecting timed out",
        ErrorType::ConnectRefused => "the connection was refused",
        ErrorType::ConnectNoRoute => "no route to the provider",
        ErrorType::ReadTimedout => "the provider did not answer in time (`timeout`)",
        ErrorType::ConnectionClosed => "the provider closed the connection",
        ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert => "the TLS handshake failed",
        _ if error.esource() == &ErrorSource::Upstream => "the provider's answer broke off",
        _ => "the request could not be sent",
    };
    format!("provider `{provider}`: {what}")
}
