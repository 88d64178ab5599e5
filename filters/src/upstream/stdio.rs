//! An upstream MCP server run as a child process, speaking newline-delimited JSON-RPC on
//! stdin/stdout ([`super::mux`] carries the calls). Its stderr goes to Sluice's log. When it
//! exits, calls in flight fail with an error naming the server, and the supervisor starts a
//! new one.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sluice_conf::StdioTransport;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio_util::codec::FramedRead;

use super::mux::{self, Mux};
use super::{Announcements, MAX_MESSAGE_BYTES, UpstreamError};
use crate::lines::{ForgivingLines, Line};

/// The longest stderr line logged; longer ones are skipped.
const MAX_STDERR_LINE: usize = 16 * 1024;

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
            .envs(
                config
                    .env
                    .iter()
                    .map(|(name, value)| (name, value.expose())),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that stopping it stops what it started too (a
            // launcher such as `npx` runs the server as its child).
            .process_group(0)
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
                let mut lines = FramedRead::new(stdout, ForgivingLines::new(MAX_MESSAGE_BYTES));
                while let Some(line) = lines.next().await {
                    match line {
                        Ok(Line::Text(line)) => inbound.handle(&line),
                        Ok(Line::TooLong) => tracing::warn!(
                            server = %server,
                            "ignoring a stdout line longer than {MAX_MESSAGE_BYTES} bytes"
                        ),
                        Ok(Line::NotUtf8) => tracing::warn!(
                            server = %server,
                            "ignoring a stdout line that is not UTF-8"
                        ),
                        Err(e) => {
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
                // Bounded like stdout: a child that writes without newlines costs no memory.
                let mut lines = FramedRead::new(stderr, ForgivingLines::new(MAX_STDERR_LINE));
                while let Some(line) = lines.next().await {
                    match line {
                        Ok(Line::Text(line)) => {
                            tracing::info!(target: "sluice::upstream::stderr", server = %server, "{line}")
                        }
                        Ok(Line::TooLong | Line::NotUtf8) => {}
                        Err(_) => break,
                    }
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

/// Kills the child's whole process group when dropped: when the child ends (its own
/// children must not outlive it), when Sluice stops it, and when the task is dropped.
struct ProcessGroup(Option<u32>);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            // ESRCH (nobody left in the group) is the normal case.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

async fn wait_or_kill(mut child: Child, kill: oneshot::Receiver<()>) -> String {
    let _group = ProcessGroup(child.id());
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
