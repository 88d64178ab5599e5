//! An upstream MCP server run as a child process, speaking newline-delimited JSON-RPC on
//! stdin/stdout. Its stderr goes to Sluice's log. When it exits, calls in flight fail with an
//! error naming the server, and the supervisor starts a new one.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::value::RawValue;
use sluice_conf::StdioTransport;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

use super::{
    Announcements, CallOptions, Event, MAX_MESSAGE_BYTES, Outcome, ServerRequest, UpstreamError,
    UpstreamMessage, cancelled_bytes, client_error, request_bytes, response_bytes,
};
use crate::jsonrpc::code;

/// Lines waiting to be written to the child; a child that stops reading makes new calls fail
/// at once instead of queueing without end.
const OUTGOING_QUEUE: usize = 1024;

/// A call waiting for its answer.
struct PendingCall {
    answer: oneshot::Sender<Result<Outcome, UpstreamError>>,
    options: CallOptions,
}

type Pending = Arc<Mutex<HashMap<u64, PendingCall>>>;

/// A running child process and the tasks that talk to it.
pub struct StdioConnection {
    server: Arc<str>,
    timeout: Duration,
    outgoing: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    next_id: AtomicU64,
    /// Becomes `Some(reason)` when the process is gone.
    closed: watch::Receiver<Option<String>>,
    pid: Option<u32>,
    /// Dropped with the connection: tells the process task to kill the child.
    _kill: oneshot::Sender<()>,
}

impl StdioConnection {
    /// Start the child process. What it announces outside calls (list changes, resource
    /// updates) goes to `announcements`.
    pub fn spawn(
        server: Arc<str>,
        config: &StdioTransport,
        timeout: Duration,
        announcements: Arc<Announcements>,
    ) -> Result<Self, UpstreamError> {
        let mut command = Command::new(&config.command);
        command
            .args(&config.args)
            .envs(&config.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(cwd) = &config.cwd {
            command.current_dir(cwd);
        }
        let mut child = command.spawn().map_err(|e| UpstreamError::Connect {
            server: server.clone(),
            detail: format!("cannot start `{}`: {e}", config.command),
        })?;
        let pid = child.id();
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(UpstreamError::Connect {
                server,
                detail: "the child process has no stdio pipes".into(),
            });
        };

        let pending: Pending = Arc::default();
        let (outgoing, mut outgoing_rx) = mpsc::channel::<Vec<u8>>(OUTGOING_QUEUE);
        let (closed_tx, closed) = watch::channel(None);
        let (kill, kill_rx) = oneshot::channel();

        // Writer: one task owns stdin so lines never interleave.
        tokio::spawn(async move {
            let mut stdin = stdin;
            while let Some(mut line) = outgoing_rx.recv().await {
                line.push(b'\n');
                if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                    break;
                }
            }
        });

        // Reader: route responses to their callers, answer the server's own requests.
        {
            let server = server.clone();
            let pending = pending.clone();
            let outgoing = outgoing.clone();
            tokio::spawn(async move {
                let codec = LinesCodec::new_with_max_length(MAX_MESSAGE_BYTES);
                let mut lines = FramedRead::new(stdout, codec);
                while let Some(line) = lines.next().await {
                    match line {
                        Ok(line) => {
                            handle_line(&server, &line, &pending, &outgoing, &announcements)
                        }
                        Err(LinesCodecError::MaxLineLengthExceeded) => tracing::warn!(
                            server = %server,
                            "ignoring a stdout line longer than {MAX_MESSAGE_BYTES} bytes"
                        ),
                        Err(LinesCodecError::Io(e)) => {
                            tracing::warn!(server = %server, "reading stdout failed: {e}");
                            break;
                        }
                    }
                }
            });
        }

        // Stderr goes to the log, line by line, tagged with the server.
        {
            let server = server.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(target: "sluice::upstream::stderr", server = %server, "{line}");
                }
            });
        }

        // Process: wait for exit (or kill on drop), then fail everything in flight.
        {
            let server = server.clone();
            let pending = pending.clone();
            tokio::spawn(async move {
                let reason = wait_or_kill(child, kill_rx).await;
                tracing::warn!(server = %server, "upstream process ended: {reason}");
                let waiters: Vec<_> = {
                    let mut map = pending.lock().unwrap_or_else(|p| p.into_inner());
                    map.drain().map(|(_, call)| call.answer).collect()
                };
                for tx in waiters {
                    let _ = tx.send(Err(UpstreamError::Disconnected {
                        server: server.clone(),
                        reason: reason.clone(),
                    }));
                }
                let _ = closed_tx.send(Some(reason));
            });
        }

        Ok(StdioConnection {
            server,
            timeout,
            outgoing,
            pending,
            next_id: AtomicU64::new(1),
            closed,
            pid,
            _kill: kill,
        })
    }

    /// The child's process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Resolves when the process has ended, with the reason.
    pub async fn closed(&self) -> String {
        let mut closed = self.closed.clone();
        match closed.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "the process task ended".to_string(),
        }
    }

    /// Send a request and wait for the answer (or the process's end, or the timeout).
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
                mpsc::error::TrySendError::Full(_) => {
                    "it is not reading its stdin (the queue to it is full)"
                }
                mpsc::error::TrySendError::Closed(_) => "its stdin is closed",
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
    outgoing: &'a mpsc::Sender<Vec<u8>>,
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

async fn wait_or_kill(mut child: Child, kill: oneshot::Receiver<()>) -> String {
    tokio::select! {
        status = child.wait() => match status {
            Ok(status) => format!("the process exited ({status})"),
            Err(e) => format!("waiting for the process failed: {e}"),
        },
        _ = kill => {
            let _ = child.kill().await;
            "Sluice stopped the process".to_string()
        }
    }
}

fn handle_line(
    server: &Arc<str>,
    line: &str,
    pending: &Pending,
    outgoing: &mpsc::Sender<Vec<u8>>,
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
                let _ = outgoing.send(response_bytes(&id, &outcome)).await;
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
