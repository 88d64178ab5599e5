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
}

/// Calls the answer-building closure exactly once: with the answer, or with
/// [`Ending::Abandoned`] when the relay is dropped first, so every call is accounted for.
struct Finisher<F: FnOnce(Ending, Duration) -> Vec<u8>> {
    finish: Option<F>,
    started: Instant,
}

impl<F: FnOnce(Ending, Duration) -> Vec<u8>> Finisher<F> {
    fn finish(mut self, ending: Ending) -> Vec<u8> {
        match self.finish.take() {
            Some(f) => f(ending, self.started.elapsed()),
            None => Vec::new(),
        }
    }
}

impl<F: FnOnce(Ending, Duration) -> Vec<u8>> Drop for Finisher<F> {
    fn drop(&mut self) {
        if let Some(f) = self.finish.take() {
            f(
                Ending::Abandoned("the client went away"),
                self.started.elapsed(),
            );
        }
    }
}

/// Forward `forward` and answer with what comes back. `finish` turns the ending into the
/// final JSON-RPC message (and accounts for the call); it runs exactly once.
pub(super) async fn relay<F>(caller: Caller<'_>, forward: Forward, finish: F) -> Response
where
    F: FnOnce(Ending, Duration) -> Vec<u8> + Send + 'static,
{
    let finisher = Finisher {
        finish: Some(finish),
        started: Instant::now(),
    };
    let (events_tx, mut events) = mpsc::channel(EVENTS_PER_CALL);
    let options = CallOptions {
        events: Some(events_tx),
        stream_answer: forward.stream_answer,
        progress_token: forward.progress.as_ref().map(|p| p.upstream.clone()),
        session: Some(caller.session),
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
    let mut call = Box::pin(async move { upstream.call(method, Some(&params), &options).await });
    let tracked = caller.live.track_call(caller.session, caller.request_id);
    let mut translator = Translator {
        stateless: caller.stateless,
        live: caller.live.clone(),
        session: caller.session,
        capabilities: caller.capabilities,
        progress,
        waiting: Vec::new(),
    };

    // Until the upstream sends something to carry, the answer may still be plain JSON.
    let first = loop {
        tokio::select! {
            biased;
            outcome = &mut call => {
                // Events sent just before the answer are still queued: they go first.
                let pending = translator.drain(&mut events);
                let outcome = match outcome {
                    Ok(Outcome::Streamed(answer)) if pending.is_empty() => {
                        return json_stream(caller.request_id, answer, finisher);
                    }
                    Ok(Outcome::Streamed(answer)) => collect(&server, answer).await,
                    outcome => outcome,
                };
                let body = finisher.finish(Ending::Answered(outcome));
                if pending.is_empty() {
                    return Response::json(StatusCode::OK, body);
                }
                caller.streamed.inc();
                let (out, stream) = mpsc::channel(pending.len() + 1);
                for event in pending {
                    let _ = out.try_send(event);
                }
                let _ = out.try_send(sse::message_event(&body));
                return Response::events(stream);
            }
            () = tracked.cancelled() => {
                drop(call);
                let body = finisher.finish(Ending::Abandoned("the client cancelled the request"));
                return Response::json(StatusCode::OK, body);
            }
            Some(event) = events.recv() => {
                if let Some(bytes) = translator.translate(event) {
                    break bytes;
                }
            }
        }
    };

    caller.streamed.inc();
    let (out, stream) = mpsc::channel(STREAM_QUEUE);
    let _ = out.try_send(first);
    tokio::spawn(async move {
        let _tracked = &tracked;
        loop {
            tokio::select! {
                biased;
                outcome = &mut call => {
                    for event in translator.drain(&mut events) {
                        if out.send(event).await.is_err() {
                            return;
                        }
                    }
                    // An SSE event holds one whole message: a streamed answer is gathered.
                    let outcome = match outcome {
                        Ok(Outcome::Streamed(answer)) => collect(&server, answer).await,
                        outcome => outcome,
                    };
                    let body = finisher.finish(Ending::Answered(outcome));
                    let _ = out.send(sse::message_event(&body)).await;
                    return;
                }
                () = tracked.cancelled() => {
                    drop(call);
                    finisher.finish(Ending::Abandoned("the client cancelled the request"));
                    return;
                }
                () = out.closed() => return,
                Some(event) = events.recv() => {
                    let Some(bytes) = translator.translate(event) else { continue };
                    tokio::select! {
                        sent = out.send(bytes) => if sent.is_err() { return },
                        () = tracked.cancelled() => {}
                    }
                }
            }
        }
    });
    Response::events(stream)
}

/// A JSON response whose `result` (or `error`) is passed on as it arrives from the upstream;
/// the call is accounted for when the last byte has gone (or the client went away).
fn json_stream<F>(id: &RawValue, answer: StreamedAnswer, finisher: Finisher<F>) -> Response
where
    F: FnOnce(Ending, Duration) -> Vec<u8> + Send + 'static,
{
    let member = answer.member;
    let name = match member {
        Member::Result => "result",
        Member::Error => "error",
    };
    let head = Bytes::from(format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{},\"{name}\":",
        id.get()
    ));
    struct State<F: FnOnce(Ending, Duration) -> Vec<u8>> {
        head: Option<Bytes>,
        answer: StreamedAnswer,
        finisher: Option<Finisher<F>>,
    }
    let state = State {
        head: Some(head),
        answer,
        finisher: Some(finisher),
    };
    let stream = futures::stream::unfold(state, move |mut state| async move {
        if let Some(head) = state.head.take() {
            return Some((Ok(head), state));
        }
        let finisher = state.finisher.take()?;
        match state.answer.chunks.recv().await {
            Some(Ok(bytes)) => {
                state.finisher = Some(finisher);
                Some((Ok(bytes), state))
            }
            Some(Err(cut)) => {
                finisher.finish(Ending::Streamed {
                    member,
                    is_error: false,
                    cut: Some(cut.clone()),
                });
                Some((Err(cut), state))
            }
            None => {
                let is_error = state.answer.is_error.load(Ordering::Relaxed);
                finisher.finish(Ending::Streamed {
                    member,
                    is_error,
                    cut: None,
                });
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
    while let Some(chunk) = answer.chunks.recv().await {
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

/// Turns an upstream's events into messages for the client.
struct Translator {
    stateless: Option<Stateless>,
    live: Arc<Live>,
    session: SessionTag,
    capabilities: ClientCapabilities,
    progress: Option<Progress>,
    /// Requests relayed to the client in this call; forgotten when the call ends.
    waiting: Vec<WaitingRequest>,
}

impl Translator {
    /// Translate what is still queued (the call has ended, so nothing more comes).
    fn drain(&mut self, events: &mut mpsc::Receiver<Event>) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Ok(event) = events.try_recv() {
            out.extend(self.translate(event));
        }
        out
    }

    fn translate(&mut self, event: Event) -> Option<Bytes> {
        match event {
            Event::Notification(message) => {
                let is_log = message.get().contains("\"notifications/message\"");
                if is_log && self.stateless.is_some_and(|s| !s.relay_logs) {
                    // A stateless client gets log messages only when it asked for them.
                    return None;
                }
                Some(sse::message_event(
                    self.restore_progress(message).get().as_bytes(),
                ))
            }
            Event::Request(request) => self.relay_request(request),
        }
    }

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
    /// it, otherwise sent with an id of Sluice's, the answer routed back by [`Live`].
    fn relay_request(&mut self, request: ServerRequest) -> Option<Bytes> {
        if self.stateless.is_some() {
            // A stateless client takes no requests on a stream (2026-07-28 asks for input with
            // an InputRequiredResult instead, which Sluice does not build yet).
            let _ = request.reply.send(client_error(
                code::METHOD_NOT_FOUND,
                &format!(
                    "the client speaks MCP 2026-07-28, which takes no `{}` request during a call",
                    request.method
                ),
            ));
            return None;
        }
        let params: Option<serde_json::Value> = request
            .params
            .as_deref()
            .and_then(|p| serde_json::from_str(p.get()).ok());
        if !self.capabilities.allows(&request.method, params.as_ref()) {
            let _ = request.reply.send(client_error(
                code::METHOD_NOT_FOUND,
                &format!(
                    "the client did not declare the capability that `{}` needs",
                    request.method
                ),
            ));
            return None;
        }
        let (id, guard) = match self.live.wait_for_client(self.session, request.reply) {
            Ok(waiting) => waiting,
            Err(e) => {
                tracing::warn!("cannot relay `{}`: {e}", request.method);
                return None;
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
        Some(sse::message_event(message.as_bytes()))
    }
}
