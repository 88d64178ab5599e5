//! One connection that carries many calls over a single pair of message streams, with no
//! channel per call: stdio (lines each way) and legacy HTTP+SSE (POSTs out, one event stream
//! in). Responses are matched to calls by id. Requests and notifications the server sends
//! outside a response have nothing that says which call they belong to: progress is routed by
//! its token, the rest to the single call in flight that can carry events (with several, Sluice
//! cannot tell, and answers requests itself).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    Announcements, CallOptions, Event, Outcome, ServerRequest, UpstreamError, UpstreamMessage,
    cancelled_bytes, client_error, request_bytes, response_bytes,
};
use crate::jsonrpc::code;

/// Messages and bytes waiting to be written; a server that stops reading makes new calls fail
/// at once instead of queueing without end.
const OUTGOING_QUEUE: usize = 1024;
const OUTGOING_BYTES: usize = 16 * 1024 * 1024;

/// The sending side of the queue of messages to the server, bounded in messages and bytes.
#[derive(Clone)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Vec<u8>>,
    bytes: Arc<AtomicUsize>,
}

/// Why a message was not queued.
pub(crate) enum OutboxError {
    Full,
    Closed,
}

impl Outbox {
    pub fn try_send(&self, message: Vec<u8>) -> Result<(), OutboxError> {
        let len = message.len();
        if self.bytes.fetch_add(len, Ordering::AcqRel) + len > OUTGOING_BYTES {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(OutboxError::Full);
        }
        self.tx.try_send(message).map_err(|e| {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            match e {
                mpsc::error::TrySendError::Full(_) => OutboxError::Full,
                mpsc::error::TrySendError::Closed(_) => OutboxError::Closed,
            }
        })
    }
}

/// The writing task's side of the queue.
pub(crate) struct OutboxReceiver {
    rx: mpsc::Receiver<Vec<u8>>,
    bytes: Arc<AtomicUsize>,
}

impl OutboxReceiver {
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        let message = self.rx.recv().await?;
        self.bytes.fetch_sub(message.len(), Ordering::AcqRel);
        Some(message)
    }
}

/// A call waiting for its answer.
struct PendingCall {
    answer: oneshot::Sender<Result<Outcome, UpstreamError>>,
    options: CallOptions,
}

type Pending = Arc<Mutex<HashMap<u64, PendingCall>>>;

/// The calling side: send requests, wait for answers.
pub struct Mux {
    server: Arc<str>,
    timeout: Duration,
    outgoing: Outbox,
    pending: Pending,
    next_id: AtomicU64,
    /// Becomes `Some(reason)` when the connection is gone.
    closed: watch::Receiver<Option<String>>,
}

/// The receiving side, for the task that reads the server's messages.
#[derive(Clone)]
pub(crate) struct Inbound {
    server: Arc<str>,
    pending: Pending,
    outgoing: Outbox,
    announcements: Arc<Announcements>,
    closed: Arc<watch::Sender<Option<String>>>,
}

/// A new connection: its calling side, its receiving side, and the messages to write.
pub(crate) fn new(
    server: Arc<str>,
    timeout: Duration,
    announcements: Arc<Announcements>,
) -> (Mux, Inbound, OutboxReceiver) {
    let pending: Pending = Arc::default();
    let (tx, rx) = mpsc::channel::<Vec<u8>>(OUTGOING_QUEUE);
    let bytes = Arc::new(AtomicUsize::new(0));
    let outgoing = Outbox {
        tx,
        bytes: bytes.clone(),
    };
    let outgoing_rx = OutboxReceiver { rx, bytes };
    let (closed_tx, closed) = watch::channel(None);
    let inbound = Inbound {
        server: server.clone(),
        pending: pending.clone(),
        outgoing: outgoing.clone(),
        announcements,
        closed: Arc::new(closed_tx),
    };
    let mux = Mux {
        server,
        timeout,
        outgoing,
        pending,
        next_id: AtomicU64::new(1),
        closed,
    };
    (mux, inbound, outgoing_rx)
}

impl Mux {
    /// Resolves when the connection has ended, with the reason.
    pub async fn closed(&self) -> String {
        let mut closed = self.closed.clone();
        match closed.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "the connection's tasks ended".to_string(),
        }
    }

    /// Send a request and wait for the answer (or the connection's end, or the timeout).
    /// Dropping the future cancels the request at the server.
    pub async fn request(
        &self,
        method: &str,
        params: Option<&RawValue>,
        options: &CallOptions,
    ) -> Result<Outcome, UpstreamError> {
        if let Some(reason) = self.closed.borrow().clone() {
            return Err(UpstreamError::Unavailable {
                server: self.server.clone(),
                reason,
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, rx) = oneshot::channel();
        self.lock_pending().insert(
            id,
            PendingCall {
                answer,
                options: options.clone(),
            },
        );
        let mut guard = CancelOnDrop {
            id,
            pending: &self.pending,
            outgoing: &self.outgoing,
            reason: "the client is gone",
        };
        if let Err(e) = self.outgoing.try_send(request_bytes(id, method, params)) {
            self.lock_pending().remove(&id);
            std::mem::forget(guard);
            let reason = match e {
                OutboxError::Full => {
                    "it is not reading what Sluice sends (the queue to it is full)"
                }
                OutboxError::Closed => "its input is closed",
            };
            return Err(UpstreamError::Disconnected {
                server: self.server.clone(),
                reason: reason.into(),
            });
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(answer)) => {
                std::mem::forget(guard);
                answer
            }
            Ok(Err(_)) => {
                std::mem::forget(guard);
                Err(UpstreamError::Disconnected {
                    server: self.server.clone(),
                    reason: "the reader stopped".into(),
                })
            }
            Err(_) => {
                guard.reason = "timeout";
                drop(guard);
                Err(UpstreamError::Timeout {
                    server: self.server.clone(),
                    timeout: self.timeout,
                })
            }
        }
    }

    /// Send a notification; nothing comes back.
    pub fn notify(&self, message: Vec<u8>) {
        let _ = self.outgoing.try_send(message);
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, PendingCall>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Cancels a request at the server when its caller stops waiting for it (client gone,
/// `notifications/cancelled`, timeout): the call is forgotten and the server told.
struct CancelOnDrop<'a> {
    id: u64,
    pending: &'a Pending,
    outgoing: &'a Outbox,
    reason: &'static str,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        let removed = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        if removed.is_some() {
            let _ = self
                .outgoing
                .try_send(cancelled_bytes(self.id, self.reason));
        }
    }
}

impl Inbound {
    /// Route one message from the server.
    pub fn handle(&self, line: &str) {
        handle_line(
            &self.server,
            line,
            &self.pending,
            &self.outgoing,
            &self.announcements,
        );
    }

    /// The connection is gone: fail every call in flight, naming the reason.
    pub fn close(&self, reason: String) {
        let waiters: Vec<_> = {
            let mut map = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            map.drain().map(|(_, call)| call.answer).collect()
        };
        for tx in waiters {
            let _ = tx.send(Err(UpstreamError::Disconnected {
                server: self.server.clone(),
                reason: reason.clone(),
            }));
        }
        let _ = self.closed.send(Some(reason));
    }
}

fn handle_line(
    server: &Arc<str>,
    line: &str,
    pending: &Pending,
    outgoing: &Outbox,
    announcements: &Announcements,
) {
    if line.trim().is_empty() {
        return;
    }
    let message: UpstreamMessage = match serde_json::from_str(line) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(server = %server, "ignoring a stdout line that is not JSON-RPC: {e}");
            return;
        }
    };
    let lock = || pending.lock().unwrap_or_else(|p| p.into_inner());
    match (message.id.is_some(), message.method.clone()) {
        // A response to one of our requests.
        (true, None) => {
            let Some(id) = message.numeric_id() else {
                tracing::warn!(server = %server, "a response with an id Sluice never sent");
                return;
            };
            let waiter = lock().remove(&id);
            let outcome = message
                .into_outcome()
                .ok_or_else(|| UpstreamError::Protocol {
                    server: server.clone(),
                    detail: "a response without `result` or `error`".into(),
                });
            if let Some(call) = waiter {
                let _ = call.answer.send(outcome);
            }
        }
        // A request from the server to its client: relayed to the one call in flight that can
        // carry it. stdio has no way to say which call a request belongs to, so with several
        // calls in flight Sluice cannot tell and answers it itself.
        (true, Some(method)) => {
            let id = message
                .id
                .map(|id| id.get().to_string())
                .unwrap_or_default();
            if method == "ping" {
                let _ = outgoing.try_send(response_bytes(&id, &Outcome::Result(empty_result())));
                return;
            }
            let (reply, answer) = oneshot::channel();
            let request = Event::Request(ServerRequest {
                method: method.clone(),
                params: message.params,
                reply,
            });
            match only_call_with_events(&lock()) {
                Some(options) => options.deliver(server, request),
                None => super::refuse_undeliverable(server, request),
            }
            let outgoing = outgoing.clone();
            tokio::spawn(async move {
                let outcome = answer.await.unwrap_or_else(|_| {
                    client_error(
                        code::INTERNAL_ERROR,
                        &format!("the client did not answer `{method}`"),
                    )
                });
                let _ = outgoing.try_send(response_bytes(&id, &outcome));
            });
        }
        (false, Some(method)) => match method.as_str() {
            "notifications/tools/list_changed"
            | "notifications/resources/list_changed"
            | "notifications/prompts/list_changed" => announcements.list_changed.notify_one(),
            "notifications/resources/updated" => announcements.resource_updated(server, &message),
            "notifications/progress" => {
                let token = message.params.as_deref().and_then(super::progress_token_of);
                let calls = lock();
                let call = calls.values().find(|c| {
                    c.options.progress_token.is_some() && c.options.progress_token == token
                });
                if let (Some(call), Ok(raw)) = (call, RawValue::from_string(line.to_string())) {
                    call.options.deliver(server, Event::Notification(raw));
                }
            }
            _ => {
                let calls = lock();
                match (
                    only_call_with_events(&calls),
                    RawValue::from_string(line.to_string()),
                ) {
                    (Some(options), Ok(raw)) => options.deliver(server, Event::Notification(raw)),
                    _ => tracing::debug!(server = %server, method, "upstream notification"),
                }
            }
        },
        (false, None) => {
            tracing::warn!(server = %server, "ignoring a message with neither id nor method")
        }
    }
}

/// The options of the single call in flight that has an event sink, if there is exactly one.
fn only_call_with_events(calls: &HashMap<u64, PendingCall>) -> Option<&CallOptions> {
    let mut with_events = calls.values().filter(|c| c.options.events.is_some());
    match (with_events.next(), with_events.next()) {
        (Some(call), None) => Some(&call.options),
        _ => None,
    }
}

fn empty_result() -> Box<RawValue> {
    RawValue::from_string("{}".to_string()).unwrap_or_else(|_| unreachable!())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_queue_to_a_server_that_stops_reading_is_bounded_in_bytes() {
        let (mux, _inbound, mut rx) = new(
            Arc::from("stuck"),
            Duration::from_secs(1),
            Arc::new(Announcements::new(tokio::sync::broadcast::channel(1).0)),
        );
        let big = vec![b'x'; 4 * 1024 * 1024];
        for _ in 0..OUTGOING_BYTES / big.len() {
            assert!(mux.outgoing.try_send(big.clone()).is_ok());
        }
        assert!(matches!(
            mux.outgoing.try_send(big.clone()),
            Err(OutboxError::Full)
        ));
        // Once the writer takes one, there is room again.
        assert!(rx.recv().await.is_some());
        assert!(mux.outgoing.try_send(big).is_ok());
    }
}
