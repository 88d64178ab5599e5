//! An upstream MCP server run as a child process, speaking newline-delimited JSON-RPC on
//! stdin/stdout. Its stderr goes to Sluice's log. When it exits, calls in flight fail with an
//! error naming the server, and the supervisor starts a new one.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::value::RawValue;
use sluice_conf::StdioTransport;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use super::{Outcome, UpstreamError, UpstreamMessage, request_bytes};

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Outcome, UpstreamError>>>>>;

/// A running child process and the tasks that talk to it.
pub struct StdioConnection {
    server: Arc<str>,
    timeout: Duration,
    outgoing: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    next_id: AtomicU64,
    /// Becomes `Some(reason)` when the process is gone.
    closed: watch::Receiver<Option<String>>,
    pid: Option<u32>,
    /// Dropped with the connection: tells the process task to kill the child.
    _kill: oneshot::Sender<()>,
}

impl StdioConnection {
    /// Start the child process. `list_changed` is notified when it announces new tools.
    pub fn spawn(
        server: Arc<str>,
        config: &StdioTransport,
        timeout: Duration,
        list_changed: Arc<Notify>,
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
        let (outgoing, mut outgoing_rx) = mpsc::unbounded_channel::<Vec<u8>>();
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
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    handle_line(&server, &line, &pending, &outgoing, &list_changed);
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
                    map.drain().map(|(_, tx)| tx).collect()
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
    pub async fn request(
        &self,
        method: &str,
        params: Option<&RawValue>,
    ) -> Result<Outcome, UpstreamError> {
        if let Some(reason) = self.closed.borrow().clone() {
            return Err(UpstreamError::Unavailable {
                server: self.server.clone(),
                reason,
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock_pending().insert(id, tx);
        if self
            .outgoing
            .send(request_bytes(id, method, params))
            .is_err()
        {
            self.lock_pending().remove(&id);
            return Err(UpstreamError::Disconnected {
                server: self.server.clone(),
                reason: "its stdin is closed".into(),
            });
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(UpstreamError::Disconnected {
                server: self.server.clone(),
                reason: "the reader stopped".into(),
            }),
            Err(_) => {
                self.lock_pending().remove(&id);
                // Tell the server to stop working on it.
                let cancel = format!(
                    "{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\",\"params\":{{\"requestId\":{id},\"reason\":\"timeout\"}}}}"
                );
                let _ = self.outgoing.send(cancel.into_bytes());
                Err(UpstreamError::Timeout {
                    server: self.server.clone(),
                    timeout: self.timeout,
                })
            }
        }
    }

    /// Send a notification; nothing comes back.
    pub fn notify(&self, message: Vec<u8>) {
        let _ = self.outgoing.send(message);
    }

    fn lock_pending(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Result<Outcome, UpstreamError>>>>
    {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
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
    outgoing: &mpsc::UnboundedSender<Vec<u8>>,
    list_changed: &Notify,
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
    match (&message.id, message.method.as_deref()) {
        // A response to one of our requests.
        (Some(id), None) => {
            let Some(id) = id.as_u64() else {
                tracing::warn!(server = %server, "response with an id Sluice never sent: {id}");
                return;
            };
            let waiter = pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            let outcome = message
                .into_outcome()
                .ok_or_else(|| UpstreamError::Protocol {
                    server: server.clone(),
                    detail: "a response without `result` or `error`".into(),
                });
            if let Some(tx) = waiter {
                let _ = tx.send(outcome);
            }
        }
        // A request from the server to its client.
        (Some(id), Some(method)) => {
            let answer = server_request_answer(method);
            let line = format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},{answer}}}");
            let _ = outgoing.send(line.into_bytes());
        }
        (None, Some("notifications/tools/list_changed")) => list_changed.notify_one(),
        (None, Some(method)) => tracing::debug!(server = %server, method, "upstream notification"),
        (None, None) => {
            tracing::warn!(server = %server, "ignoring a message with neither id nor method")
        }
    }
}

/// What Sluice answers to requests an upstream sends its client. Relaying them to the
/// downstream session that caused them comes with server-to-client streams.
pub(crate) fn server_request_answer(method: &str) -> String {
    match method {
        "ping" => "\"result\":{}".to_string(),
        "roots/list" => "\"result\":{\"roots\":[]}".to_string(),
        other => format!(
            "\"error\":{{\"code\":-32601,\"message\":{}}}",
            serde_json::Value::from(format!("Sluice does not relay `{other}` to clients yet"))
        ),
    }
}
