//! An upstream MCP server run as a child process, speaking newline-delimited JSON-RPC on
//! stdin/stdout ([`super::mux`] carries the calls). Its stderr goes to Sluice's log. When it
//! exits, calls in flight fail with an error naming the server, and the supervisor starts a
//! new one.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sluice_conf::StdioTransport;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

use super::mux::{self, Mux};
use super::{Announcements, MAX_MESSAGE_BYTES, UpstreamError};

/// A running child process and the tasks that talk to it.
pub struct StdioConnection {
    mux: Mux,
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
            .envs(config.env.iter().map(|(name, value)| (name, value.expose())))
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

        let (mux, inbound, mut outgoing_rx) = mux::new(server.clone(), timeout, announcements);
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
            let inbound = inbound.clone();
            tokio::spawn(async move {
                let codec = LinesCodec::new_with_max_length(MAX_MESSAGE_BYTES);
                let mut lines = FramedRead::new(stdout, codec);
                while let Some(line) = lines.next().await {
                    match line {
                        Ok(line) => inbound.handle(&line),
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
            tokio::spawn(async move {
                let reason = wait_or_kill(child, kill_rx).await;
                tracing::warn!(server = %server, "upstream process ended: {reason}");
                inbound.close(reason);
            });
        }

        Ok(StdioConnection {
            mux,
            pid,
            _kill: kill,
        })
    }

    /// The child's process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
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

/// Calls go through the multiplexed connection.
impl std::ops::Deref for StdioConnection {
    type Target = Mux;

    fn deref(&self) -> &Mux {
        &self.mux
    }
}
