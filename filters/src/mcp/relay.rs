//! Forwarding one request to an upstream and relaying what comes back: the streaming contract.
//!
//! The answer is JSON when the upstream answered with nothing before it (the common case: no
//! task, no extra allocation beyond the call), and an SSE stream as soon as the upstream sends
//! something to carry first (progress, log messages, requests to the client); the stream then
//! carries those in order and ends with the response. The call is cancelled at the upstream
//! when the client cancels it (`notifications/cancelled`) or goes away (the stream's reader is
//! dropped, or the proxy drops the whole request). Every queue on the way is bounded.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use http::StatusCode;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::http::Response;
use super::live::{Live, SessionTag, WaitingRequest};
use crate::jsonrpc::code;
use crate::session::ClientCapabilities;
use crate::sse;
use crate::upstream::answer::{Member, StreamedAnswer};
use crate::upstream::{
    CallOptions, EVENTS_PER_CALL, Event, Outcome, ServerRequest, Upstream, UpstreamError,
    client_error,
};

/// Events waiting for a slow client on one stream; past this the relay stops reading the
/// upstream's events, which the upstream side then drops (notifications) or refuses (requests).
const STREAM_QUEUE: usize = 16;

/// Who the relayed request is for.
/// What a stateless-era (2026-07-28) caller changes in the relay.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stateless {
    /// The request set `io.modelcontextprotocol/logLevel`: log messages may be relayed.
    pub relay_logs: bool,
}

pub(super) struct Caller<'a> {
    /// `None` in a session.
    pub stateless: Option<Stateless>,
    /// How a stateless caller's call pauses for its input; `None` in a session.
    pub pauses: Option<Pause>,
    pub live: &'a Arc<Live>,
    pub streamed: &'a prometheus::IntCounter,
    pub session: SessionTag,
    pub session_expires_at: u64,
    pub capabilities: ClientCapabilities,
    pub request_id: &'a RawValue,
}

/// A request to forward.
pub(super) struct Forward {
    pub upstream: Arc<Upstream>,
    pub method: &'static str,
    pub params: Box<RawValue>,
    pub progress: Option<Progress>,
    /// Whether a large answer may be passed on as it arrives (not when it must be changed).
    pub stream_answer: bool,
    /// The client's `Mcp-Param-*` headers, for a stateless upstream.
    pub param_headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// The client's progress token, and the one the upstream sees instead (unique per call, so
/// progress from a shared upstream connection reaches the right caller).
pub(super) struct Progress {
    pub client: Box<RawValue>,
    pub upstream: String,
}

/// How a relayed call ended.
pub(super) enum Ending {
    Answered(Result<Outcome, UpstreamError>),
    /// A large answer was passed on as it arrived; `cut` says why it ended early, if it did.
    Streamed {
        member: Member,
        is_error: bool,
        cut: Option<String>,
    },
    /// The client cancelled or went away before the answer.
    Abandoned(&'static str),
    /// The upstream asked for something the stateless client did not declare it can do.
    MissingCapability(&'static str),
}

/// Builds the final JSON-RPC message for the request `id` now being answered (after a pause
/// that is a retry, not the first request) from how the call ended, and accounts for it.
pub(super) type Finish = Box<dyn FnOnce(&RawValue, Ending, Duration) -> Vec<u8> + Send>;

/// Calls the answer-building closure exactly once: with the answer, or with
/// [`Ending::Abandoned`] when the call is dropped first, so every call is accounted for.
struct Finisher {
    finish: Option<Finish>,
    started: Instant,
}

impl Finisher {
    fn finish(mut self, id: &RawValue, ending: Ending) -> Vec<u8> {
        match self.finish.take() {
            Some(f) => f(id, ending, self.started.elapsed()),
            None => Vec::new(),
        }
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        if let Some(f) = self.finish.take() {
            let null = RawValue::NULL;
            f(
                null,
                Ending::Abandoned("the client went away"),
                self.started.elapsed(),
            );
        }
    }
}

/// A call in progress: everything that continues it, so that it can be paused (a stateless
/// client must answer a question first) and resumed by the client's retry.
struct Running {
    call:
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Outcome, UpstreamError>> + Send>>,
    events: Events,
    finisher: Finisher,
    translator: Translator,
    server: Arc<str>,
    /// The answer, when it came while questions were being gathered.
    early: Option<Result<Outcome, UpstreamError>>,
}

/// Forward `forward` and answer with what comes back. `finish` turns the ending into the
/// final JSON-RPC message (and accounts for the call); it runs exactly once.
pub(super) async fn relay(caller: Caller<'_>, forward: Forward, finish: Finish) -> Response {
    let finisher = Finisher {
        finish: Some(finish),
        started: Instant::now(),
    };
    let (events_tx, events) = mpsc::channel(EVENTS_PER_CALL);
    let options = CallOptions {
        events: Some(events_tx.clone()),
        stream_answer: forward.stream_answer,
        param_headers: forward.param_headers,
        progress_token: forward.progress.as_ref().map(|p| p.upstream.clone()),
        // A stateless request has no session to give its own upstream session (per_client
        // servers serve it on their shared one).
        session: caller.stateless.is_none().then_some(caller.session),
        session_expires_at: Some(caller.session_expires_at),
    };
    let Forward {
        upstream,
        method,
        params,
        progress,
        ..
    } = forward;
    let server = upstream.name.clone();
    let call = Box::pin(async move { upstream.call(method, Some(&params), &options).await });
    let translator = Translator {
        stateless: caller.stateless,
        live: caller.live.clone(),
        session: caller.session,
        capabilities: caller.capabilities,
        progress,
        waiting: Vec::new(),
        asked: 0,
    };
    let running = Running {
        call,
        events: Events {
            queue: events,
            kept_open: Some(events_tx),
        },
        finisher,
        translator,
        server,
        early: None,
    };
    drive(caller, running).await
}

/// Resume a call paused for a stateless client's input: its answers go to the upstream, and
/// the call goes on as if it had never stopped.
pub(super) async fn resume(
    caller: Caller<'_>,
    request_state: &str,
    responses: serde_json::Map<String, serde_json::Value>,
) -> Response {
    let Some(pause) = caller.pauses.as_ref() else {
        return invalid(
            caller.request_id,
            "`requestState` belongs to MCP 2026-07-28 requests",
        );
    };
    let parked = match pause.take(request_state) {
        Ok(parked) => parked,
        Err(message) => return invalid(caller.request_id, &message),
    };
    let mut missing = Vec::new();
    for (key, question) in parked.questions {
        match responses.get(&key) {
            Some(answer) => {
                let answer = serde_json::value::to_raw_value(answer)
                    .unwrap_or_else(|_| RawValue::NULL.to_owned());
                let _ = question.reply.send(Outcome::Result(answer));
            }
            None => missing.push((key, question)),
        }
    }
    if !missing.is_empty() {
        // Not every question was answered: ask the rest again.
        return pause.park(caller.request_id, parked.running, missing);
    }
    drive(caller, parked.running).await
}

/// A call's queue of events. The call's end drops its sender; were that the last one, the
/// channel would wake the task waiting on the queue, which is the task running the call at
/// that moment: the scheduler then runs it once more for nothing, on the other worker thread
/// (0.6 cross-thread wake-ups per call at a low rate; perf/RESULTS.md, 2026-12-02 10:52). So
/// the relay keeps a sender open until the queue is dropped, and first leaves no waker behind.
struct Events {
    queue: mpsc::Receiver<Event>,
    kept_open: Option<mpsc::Sender<Event>>,
}

impl Drop for Events {
    fn drop(&mut self) {
        // Polled with a no-op waker, the receiver forgets the task's one.
        let _ = self.queue.recv().now_or_never();
        self.kept_open.take();
    }
}

/// What the next step of a call is.
enum Step {
    Answered(Result<Outcome, UpstreamError>),
    Cancelled,
    Event(Event),
}

async fn next_step(running: &mut Running, cancelled: &super::live::TrackedCall) -> Step {
    if let Some(outcome) = running.early.take() {
        return Step::Answered(outcome);
    }
    tokio::select! {
        biased;
        outcome = &mut running.call => Step::Answered(outcome),
        () = cancelled.cancelled() => Step::Cancelled,
        Some(event) = running.events.queue.recv() => Step::Event(event),
    }
}

/// Run a call until its answer (JSON, or an SSE stream once there is something to send
/// first), its cancellation, or a question for a stateless client (which pauses it).
async fn drive(caller: Caller<'_>, mut running: Running) -> Response {
    let tracked = caller.live.track_call(caller.session, caller.request_id);
    let mut sent = Vec::new();
    let id = caller.request_id;
    // Until the upstream sends something to carry, the answer may still be plain JSON.
    loop {
        match next_step(&mut running, &tracked).await {
            Step::Answered(outcome) => {
                // Events sent just before the answer are still queued: they go first.
                sent.extend(running.translator.drain(&mut running.events.queue));
                let outcome = match outcome {
                    Ok(Outcome::Streamed(answer)) if sent.is_empty() => {
                        return json_stream(id, answer, running.finisher);
                    }
                    Ok(Outcome::Streamed(answer)) => collect(&running.server, answer).await,
                    outcome => outcome,
                };
                let body = running.finisher.finish(id, Ending::Answered(outcome));
                if sent.is_empty() {
                    return Response::json(StatusCode::OK, body);
                }
                sent.push(sse::message_event(&body));
                return whole_stream(caller.streamed, sent);
            }
            Step::Cancelled => {
                let Running { call, finisher, .. } = running;
                drop(call);
                let body =
                    finisher.finish(id, Ending::Abandoned("the client cancelled the request"));
                return Response::json(StatusCode::OK, body);
            }
            Step::Event(event) => match running.translator.translate(event) {
                Translated::Send(bytes) => {
                    sent.push(bytes);
                    break;
                }
                Translated::Skip => {}
                Translated::Missing(capability) => {
                    let Running { call, finisher, .. } = running;
                    drop(call);
                    let body = finisher.finish(id, Ending::MissingCapability(capability));
                    if sent.is_empty() {
                        return Response::json(StatusCode::BAD_REQUEST, body);
                    }
                    sent.push(sse::message_event(&body));
                    return whole_stream(caller.streamed, sent);
                }
                Translated::Ask(request) => {
                    let questions = gather(&mut running, request).await;
                    let Some(pause) = caller.pauses.as_ref() else {
                        continue;
                    };
                    let paused = pause.park(id, running, questions);
                    if sent.is_empty() {
                        return paused;
                    }
                    if let Some(bytes) = paused.body.as_bytes() {
                        sent.push(sse::message_event(bytes));
                    }
                    return whole_stream(caller.streamed, sent);
                }
            },
        }
    }

    // Something to carry before the answer: an SSE stream, fed by a task.
    caller.streamed.inc();
    let (out, stream) = mpsc::channel(STREAM_QUEUE);
    for bytes in sent {
        let _ = out.try_send(bytes);
    }
    let id = id.to_owned();
    let pauses = caller.pauses.clone();
    tokio::spawn(async move {
        loop {
            let step = tokio::select! {
                step = next_step(&mut running, &tracked) => step,
                () = out.closed() => return,
            };
            match step {
                Step::Answered(outcome) => {
                    for event in running.translator.drain(&mut running.events.queue) {
                        if out.send(event).await.is_err() {
                            return;
                        }
                    }
                    // An SSE event holds one whole message: a streamed answer is gathered.
                    let outcome = match outcome {
                        Ok(Outcome::Streamed(answer)) => collect(&running.server, answer).await,
                        outcome => outcome,
                    };
                    let body = running.finisher.finish(&id, Ending::Answered(outcome));
                    let _ = out.send(sse::message_event(&body)).await;
                    return;
                }
                Step::Cancelled => {
                    let Running { call, finisher, .. } = running;
                    drop(call);
                    finisher.finish(&id, Ending::Abandoned("the client cancelled the request"));
                    return;
                }
                Step::Event(event) => match running.translator.translate(event) {
                    Translated::Send(bytes) => {
                        tokio::select! {
                            sent = out.send(bytes) => if sent.is_err() { return },
                            () = tracked.cancelled() => {}
                        }
                    }
                    Translated::Skip => {}
                    Translated::Missing(capability) => {
                        let Running { call, finisher, .. } = running;
                        drop(call);
                        let body = finisher.finish(&id, Ending::MissingCapability(capability));
                        let _ = out.send(sse::message_event(&body)).await;
                        return;
                    }
                    Translated::Ask(request) => {
                        let questions = gather(&mut running, request).await;
                        let Some(pause) = pauses.as_ref() else {
                            continue;
                        };
                        let paused = pause.park(&id, running, questions);
                        if let Some(bytes) = paused.body.as_bytes() {
                            let _ = out.send(sse::message_event(bytes)).await;
                        }
                        return;
                    }
                },
            }
        }
    });
    Response::events(stream)
}

/// Servers often ask several things at once (one request each, sent together): the questions
/// that arrive within [`GATHER_WINDOW`] of the first go out in one `InputRequiredResult`
/// rather than one round trip each. The call is polled meanwhile, or nothing more would come.
async fn gather(running: &mut Running, first: ServerRequest) -> Vec<(String, ServerRequest)> {
    let mut questions = vec![first];
    let deadline = tokio::time::sleep(GATHER_WINDOW);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            biased;
            Some(event) = running.events.queue.recv() => {
                if let Translated::Ask(request) = running.translator.translate(event) {
                    questions.push(request);
                }
            }
            outcome = &mut running.call, if running.early.is_none() => {
                running.early = Some(outcome);
            }
            () = &mut deadline => break,
        }
    }
    questions
        .into_iter()
        .map(|q| {
            running.translator.asked += 1;
            (format!("input-{}", running.translator.asked), q)
        })
        .collect()
}

/// An SSE answer whose events are all known already.
fn whole_stream(streamed: &prometheus::IntCounter, events: Vec<Bytes>) -> Response {
    streamed.inc();
    let (out, stream) = mpsc::channel(events.len().max(1));
    for event in events {
        let _ = out.try_send(event);
    }
    Response::events(stream)
}

fn invalid(id: &RawValue, message: &str) -> Response {
    Response::json(
        StatusCode::OK,
        crate::jsonrpc::error_bytes(Some(id), code::INVALID_PARAMS, message, None),
    )
}

/// A JSON response whose `result` (or `error`) is passed on as it arrives from the upstream;
/// the call is accounted for when the last byte has gone (or the client went away).
fn json_stream(id: &RawValue, answer: StreamedAnswer, finisher: Finisher) -> Response {
    let member = answer.member;
    let name = match member {
        Member::Result => "result",
        Member::Error => "error",
    };
    let head = Bytes::from(format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{},\"{name}\":",
        id.get()
    ));
    struct State {
        head: Option<Bytes>,
        answer: StreamedAnswer,
        finisher: Option<Finisher>,
        id: Box<RawValue>,
    }
    let state = State {
        head: Some(head),
        answer,
        finisher: Some(finisher),
        id: id.to_owned(),
    };
    let stream = futures::stream::unfold(state, move |mut state| async move {
        if let Some(head) = state.head.take() {
            return Some((Ok(head), state));
        }
        let finisher = state.finisher.take()?;
        match state.answer.chunks.next().await {
            Some(Ok(bytes)) => {
                state.finisher = Some(finisher);
                Some((Ok(bytes), state))
            }
            Some(Err(cut)) => {
                finisher.finish(
                    &state.id,
                    Ending::Streamed {
                        member,
                        is_error: false,
                        cut: Some(cut.clone()),
                    },
                );
                Some((Err(cut), state))
            }
            None => {
                let is_error = state.answer.is_error.load(Ordering::Relaxed);
                finisher.finish(
                    &state.id,
                    Ending::Streamed {
                        member,
                        is_error,
                        cut: None,
                    },
                );
                Some((Ok(Bytes::from_static(b"}")), state))
            }
        }
    });
    Response::json_stream(Box::pin(stream))
}

/// Gather a streamed answer whole (bounded by the upstream's message limit).
async fn collect(server: &Arc<str>, mut answer: StreamedAnswer) -> Result<Outcome, UpstreamError> {
    let protocol = |detail: String| UpstreamError::Protocol {
        server: server.clone(),
        detail,
    };
    let mut value = Vec::new();
    while let Some(chunk) = answer.chunks.next().await {
        value.extend_from_slice(&chunk.map_err(protocol)?);
    }
    let value = String::from_utf8(value).map_err(|_| protocol("the answer is not UTF-8".into()))?;
    let value = RawValue::from_string(value)
        .map_err(|e| protocol(format!("the answer is not JSON: {e}")))?;
    Ok(match answer.member {
        Member::Result => Outcome::Result(value),
        Member::Error => Outcome::Error(value),
    })
}

/// What an upstream's event becomes for the client.
enum Translated {
    Send(Bytes),
    Skip,
    /// A request a stateless client must answer first: the call pauses.
    Ask(ServerRequest),
    /// The upstream needs a capability the stateless client did not declare: the call ends
    /// with -32021 naming it.
    Missing(&'static str),
}

/// Turns an upstream's events into messages for the client.
struct Translator {
    stateless: Option<Stateless>,
    live: Arc<Live>,
    session: SessionTag,
    capabilities: ClientCapabilities,
    progress: Option<Progress>,
    /// Requests relayed to the client in this call; forgotten when the call ends.
    waiting: Vec<WaitingRequest>,
    /// Questions put to a stateless client so far (their keys are unique in the call).
    asked: usize,
}

impl Translator {
    /// Translate what is still queued (the call has ended, so nothing more comes, and no
    /// question can be put any more).
    fn drain(&mut self, events: &mut mpsc::Receiver<Event>) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Ok(event) = events.try_recv() {
            match self.translate(event) {
                Translated::Send(bytes) => out.push(bytes),
                Translated::Skip => {}
                Translated::Ask(request) => refuse(request, "the call has ended"),
                Translated::Missing(_) => {}
            }
        }
        out
    }

    fn translate(&mut self, event: Event) -> Translated {
        match event {
            Event::Notification(message) => {
                let is_log = message.get().contains("\"notifications/message\"");
                if is_log && self.stateless.is_some_and(|s| !s.relay_logs) {
                    // A stateless client gets log messages only when it asked for them.
                    return Translated::Skip;
                }
                Translated::Send(sse::message_event(
                    self.restore_progress(message).get().as_bytes(),
                ))
            }
            Event::Request(request) => self.relay_request(request),
        }
    }

    /// The question `first` and any others already queued, under keys for `inputRequests`.
    /// Progress carries the token the upstream saw; the client gets its own back.
    fn restore_progress(&self, message: Box<RawValue>) -> Box<RawValue> {
        let Some(progress) = &self.progress else {
            return message;
        };
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(message.get()) else {
            return message;
        };
        let Some(params) = value.get_mut("params").and_then(|p| p.as_object_mut()) else {
            return message;
        };
        if params.get("progressToken").is_none() {
            return message;
        }
        let client: serde_json::Value =
            serde_json::from_str(progress.client.get()).unwrap_or_default();
        params.insert("progressToken".into(), client);
        serde_json::value::to_raw_value(&value).unwrap_or(message)
    }

    /// A request from the upstream to the client: refused here if the client cannot answer
    /// it; put to a stateless client as a question (the call pauses); otherwise sent on the
    /// stream with an id of Sluice's, the answer routed back by [`Live`].
    fn relay_request(&mut self, request: ServerRequest) -> Translated {
        let params: Option<serde_json::Value> = request
            .params
            .as_deref()
            .and_then(|p| serde_json::from_str(p.get()).ok());
        if !self.capabilities.allows(&request.method, params.as_ref()) {
            let capability = capability_of(&request.method);
            refuse(
                request,
                "the client did not declare the capability it needs",
            );
            if self.stateless.is_some() {
                return Translated::Missing(capability);
            }
            return Translated::Skip;
        }
        if self.stateless.is_some() {
            return Translated::Ask(request);
        }
        let (id, guard) = match self.live.wait_for_client(self.session, request.reply) {
            Ok(waiting) => waiting,
            Err(e) => {
                tracing::warn!("cannot relay `{}`: {e}", request.method);
                return Translated::Skip;
            }
        };
        self.waiting.push(guard);
        let mut message = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":{}",
            serde_json::Value::from(request.method.as_str())
        );
        if let Some(params) = &request.params {
            message.push_str(",\"params\":");
            message.push_str(params.get());
        }
        message.push('}');
        Translated::Send(sse::message_event(message.as_bytes()))
    }
}

/// The client capability a server-to-client request needs.
fn capability_of(method: &str) -> &'static str {
    match method {
        "sampling/createMessage" => "sampling",
        "elicitation/create" => "elicitation",
        _ => "roots",
    }
}

/// Answer an upstream's request with an error saying why no client will.
fn refuse(request: ServerRequest, why: &str) {
    let _ = request.reply.send(client_error(
        code::METHOD_NOT_FOUND,
        &format!("Sluice cannot relay `{}`: {why}", request.method),
    ));
}

/// How long after a server's first question its other questions still join the same
/// `InputRequiredResult`.
const GATHER_WINDOW: Duration = Duration::from_millis(25);

/// How long a call paused for a stateless client's input waits for the retry. The upstream's
/// own `request_timeout` still bounds the whole call.
const PAUSE_TTL: Duration = Duration::from_secs(300);
/// Calls that may be paused at once on one instance.
const MAX_PAUSED: usize = 1_000;
/// Domain of sealed request states (apart from session ids).
const STATE_PURPOSE: u8 = b'R';

/// Calls paused for a stateless client's input (the MRTR bridge): a session-era upstream
/// asked its client something in the middle of a call; the stateless client got an
/// `InputRequiredResult` whose `requestState`, sealed by Sluice, names the paused call here.
pub struct Parking {
    paused: std::sync::Mutex<std::collections::HashMap<[u8; 16], Parked>>,
    sealer: Arc<crate::session::Sessions>,
}

struct Parked {
    running: Running,
    questions: Vec<(String, ServerRequest)>,
    expires: Instant,
}

impl Parking {
    pub fn new(sealer: Arc<crate::session::Sessions>) -> Self {
        Parking {
            paused: Default::default(),
            sealer,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<[u8; 16], Parked>> {
        self.paused.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A stateless request's way to pause its call: the parking and what its state is bound to.
#[derive(Clone)]
pub(super) struct Pause {
    pub parking: Arc<Parking>,
    pub key: Arc<str>,
    /// The method and the tool, prompt or URI: a state answers only the request it came from.
    pub binding: String,
}

impl Pause {
    /// Pause `running` with its `questions` and answer request `id` with them.
    fn park(
        &self,
        id: &RawValue,
        running: Running,
        questions: Vec<(String, ServerRequest)>,
    ) -> Response {
        let mut requests = serde_json::Map::new();
        for (key, question) in &questions {
            let params: serde_json::Value = question
                .params
                .as_deref()
                .and_then(|p| serde_json::from_str(p.get()).ok())
                .unwrap_or_else(|| serde_json::json!({}));
            requests.insert(
                key.clone(),
                serde_json::json!({ "method": question.method, "params": params }),
            );
        }
        let mut handle = [0u8; 16];
        rand::fill(&mut handle[..]);
        {
            let mut paused = self.parking.lock();
            let now = Instant::now();
            paused.retain(|_, p| p.expires > now);
            if paused.len() >= MAX_PAUSED {
                drop(paused);
                for (_, question) in questions {
                    refuse(question, "too many calls are waiting for their clients");
                }
                return Response::json(
                    StatusCode::OK,
                    crate::jsonrpc::error_bytes(
                        Some(id),
                        code::INTERNAL_ERROR,
                        "Sluice holds too many calls waiting for input; retry later",
                        None,
                    ),
                );
            }
            paused.insert(
                handle,
                Parked {
                    running,
                    questions,
                    expires: now + PAUSE_TTL,
                },
            );
        }
        let state = self
            .parking
            .sealer
            .seal(STATE_PURPOSE, &self.state_body(&handle));
        let result = serde_json::json!({
            "resultType": "input_required",
            "inputRequests": requests,
            "requestState": state,
        });
        Response::json(
            StatusCode::OK,
            crate::jsonrpc::result_bytes(id, &result.to_string()),
        )
    }

    /// What a request state seals: the paused call, its expiry, the key and the request.
    fn state_body(&self, handle: &[u8; 16]) -> Vec<u8> {
        use sha2::{Digest, Sha256};
        let expires = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + PAUSE_TTL.as_secs();
        let mut body = handle.to_vec();
        body.extend_from_slice(&expires.to_be_bytes());
        body.extend_from_slice(&Sha256::digest(self.key.as_bytes())[..8]);
        body.extend_from_slice(&Sha256::digest(self.binding.as_bytes())[..8]);
        body
    }

    /// The paused call a request state names, if the state is genuine, this key's, for this
    /// request, not expired, and the call is held here.
    fn take(&self, state: &str) -> Result<Parked, String> {
        let body = self
            .parking
            .sealer
            .unseal(STATE_PURPOSE, state)
            .filter(|b| b.len() == 40)
            .ok_or("`requestState` is not valid: it was changed, or not issued by this gateway")?;
        let handle: [u8; 16] = body[..16].try_into().map_err(|_| "malformed state")?;
        let expected = self.state_body(&handle);
        if body[24..32] != expected[24..32] {
            return Err("`requestState` was issued to another key".into());
        }
        if body[32..40] != expected[32..40] {
            return Err(
                "`requestState` belongs to another request (method and name must match)".into(),
            );
        }
        let expires = u64::from_be_bytes(body[16..24].try_into().map_err(|_| "malformed state")?);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now > expires {
            return Err("`requestState` has expired; make the request again from the start".into());
        }
        self.parking.lock().remove(&handle).ok_or_else(|| {
            "the paused call is not held by this gateway instance (it was answered already, timed out, or is held by another instance); make the request again from the start".to_string()
        })
    }
}
