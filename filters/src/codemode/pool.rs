//! The worker processes that run Code Mode scripts, and one script's run.
//!
//! The pool keeps `code_mode.workers` workers started, confined and waiting, so that a script
//! does not wait for an interpreter to load. A run takes one, sends it the script, carries its
//! tool calls to the gateway's caller (concurrently: a script's `parallel(...)` sends several
//! at once), and ends it; a fresh worker takes its place in the background. At most `workers`
//! scripts run at once; a spinning script holds one worker and nothing else, and is stopped by
//! the kernel at its CPU limit or by the pool at its time limit.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use serde_json::value::RawValue;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;
use tokio_util::codec::{FramedRead, LinesCodec};

use crate::lines::{ForgivingLines, Line};

use super::protocol::{FromWorker, Report, ToWorker};
use super::worker::{CPU_ENV, MEMORY_ENV};

/// How a worker is started: normally this very binary with `code-worker`.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// The limits of one script (from `code_mode:` in the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub workers: usize,
    pub cpu: Duration,
    pub time: Duration,
    pub memory_mb: u64,
    pub output: usize,
    pub max_calls: usize,
}

impl From<&sluice_conf::CodeMode> for Limits {
    fn from(c: &sluice_conf::CodeMode) -> Self {
        Limits {
            workers: c.workers.max(1),
            cpu: c.cpu_limit,
            time: c.time_limit,
            memory_mb: c.memory_mb,
            output: c.output_limit,
            max_calls: c.max_tool_calls,
        }
    }
}

/// Why a script did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no Code Mode worker could be started: {0}")]
    Start(String),
    #[error("every Code Mode worker is busy; retry shortly")]
    Busy,
    #[error("the script was stopped at its CPU limit of {0:?} (`code_mode.cpu_limit`)")]
    CpuLimit(Duration),
    #[error("the script was stopped at its time limit of {0:?} (`code_mode.time_limit`)")]
    TimeLimit(Duration),
    #[error(
        "the script's worker ended ({0}); its memory (`code_mode.memory_mb`) or stack may have run out"
    )]
    Crashed(String),
    #[error("the script broke its worker: {0}")]
    Broken(String),
    #[error("the script's worker broke the protocol: {0}")]
    Protocol(String),
}

/// One tool call a script asks for.
pub struct ScriptCall {
    /// The tool's name as clients know it (`server__tool`).
    pub tool: String,
    /// A JSON object.
    pub arguments: Box<RawValue>,
}

/// Carries a script's tool calls through the gateway; answers with the JSON of
/// `{"result": ...}` or `{"error": "..."}`.
pub type Caller = Arc<dyn Fn(ScriptCall) -> BoxFuture<'static, Box<RawValue>> + Send + Sync>;

/// The longest line a worker may send: a tool call's arguments or a script's report.
const MAX_LINE: usize = 8 * 1024 * 1024;
/// How long a worker may take to load and confine itself.
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Pool {
    command: WorkerCommand,
    limits: ArcSwap<Limits>,
    idle: Mutex<Vec<Worker>>,
    running: ArcSwap<Semaphore>,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: FramedRead<ChildStdout, LinesCodec>,
}

impl Pool {
    pub fn new(command: WorkerCommand, config: &sluice_conf::CodeMode) -> Arc<Self> {
        let limits = Limits::from(config);
        Arc::new(Pool {
            command,
            limits: ArcSwap::from_pointee(limits),
            idle: Mutex::new(Vec::new()),
            running: ArcSwap::from_pointee(Semaphore::new(limits.workers)),
        })
    }

    /// New limits from a reload; workers already started keep theirs until they are used.
    pub fn reload(&self, config: &sluice_conf::CodeMode) {
        let limits = Limits::from(config);
        if limits.workers != self.limits.load().workers {
            self.running.store(Arc::new(Semaphore::new(limits.workers)));
        }
        self.limits.store(Arc::new(limits));
        self.lock_idle().clear();
    }

    pub fn limits(&self) -> Limits {
        **self.limits.load()
    }

    /// Start the waiting workers (in the background).
    pub fn warm(self: &Arc<Self>) {
        let pool = self.clone();
        tokio::spawn(async move { pool.refill().await });
    }

    /// Run `script` with the tools of `namespaces` (see [`ToWorker::Run`]); its tool calls go
    /// to `call`.
    pub async fn run(
        self: &Arc<Self>,
        script: &str,
        namespaces: String,
        call: Caller,
    ) -> Result<Report, RunError> {
        let limits = self.limits();
        let running = self.running.load_full();
        let _place = tokio::time::timeout(limits.time, running.acquire())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(RunError::Busy)?;
        let waiting = self.lock_idle().pop();
        let worker = match waiting {
            Some(worker) => worker,
            None => spawn(&self.command, limits).await?,
        };
        self.warm();
        drive(worker, script, namespaces, call, limits).await
    }

    /// Start workers until `workers` are waiting.
    async fn refill(&self) {
        loop {
            let limits = self.limits();
            if self.lock_idle().len() >= limits.workers {
                return;
            }
            match spawn(&self.command, limits).await {
                Ok(worker) => {
                    let mut idle = self.lock_idle();
                    if idle.len() >= limits.workers {
                        return;
                    }
                    idle.push(worker);
                }
                Err(e) => {
                    tracing::error!("{e}");
                    return;
                }
            }
        }
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Worker>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Start a worker and wait until it says it is confined and ready.
async fn spawn(command: &WorkerCommand, limits: Limits) -> Result<Worker, RunError> {
    let mut child = Command::new(&command.program)
        .args(&command.args)
        .env_clear()
        .env(CPU_ENV, limits.cpu.as_secs().max(1).to_string())
        .env(MEMORY_ENV, (limits.memory_mb << 20).to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| RunError::Start(format!("{}: {e}", command.program.display())))?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(RunError::Start("the worker has no pipes".into()));
    };
    tokio::spawn(async move {
        let mut lines = FramedRead::new(stderr, ForgivingLines::new(16 * 1024));
        while let Some(Ok(line)) = lines.next().await {
            if let Line::Text(line) = line {
                tracing::debug!(target: "sluice::codemode::worker", "{line}");
            }
        }
    });
    let mut lines = FramedRead::new(stdout, LinesCodec::new_with_max_length(MAX_LINE));
    let first = tokio::time::timeout(START_TIMEOUT, lines.next())
        .await
        .map_err(|_| RunError::Start("the worker did not get ready in time".into()))?;
    match first.map(|l| l.map(|l| serde_json::from_str::<FromWorker>(&l))) {
        Some(Ok(Ok(FromWorker::Ready { confinement }))) => {
            tracing::debug!("Code Mode worker ready ({confinement})");
            Ok(Worker {
                child,
                stdin,
                lines,
            })
        }
        Some(Ok(Ok(FromWorker::Failed { error }))) => Err(RunError::Start(error)),
        _ => Err(RunError::Start(
            "the worker ended before it was ready".into(),
        )),
    }
}

/// Run one script on `worker` and end the worker.
async fn drive(
    mut worker: Worker,
    script: &str,
    namespaces: String,
    call: Caller,
    limits: Limits,
) -> Result<Report, RunError> {
    let run = ToWorker::Run {
        script: script.to_string(),
        namespaces,
        output_limit: limits.output,
    };
    write(&mut worker.stdin, &run).await?;
    let deadline = tokio::time::sleep(limits.time);
    tokio::pin!(deadline);
    let mut calls = FuturesUnordered::new();
    let mut made = 0usize;
    loop {
        tokio::select! {
            line = worker.lines.next() => {
                let line = match line {
                    Some(Ok(line)) => line,
                    Some(Err(e)) => return Err(RunError::Protocol(e.to_string())),
                    None => return Err(ended(&mut worker.child, limits).await),
                };
                match serde_json::from_str::<FromWorker>(&line) {
                    Ok(FromWorker::Call { id, tool, arguments }) => {
                        made += 1;
                        if made > limits.max_calls {
                            let refusal = error_answer(&format!(
                                "this script made more than {} tool calls (`code_mode.max_tool_calls`)",
                                limits.max_calls
                            ));
                            let answer = serde_json::from_str(refusal.get()).unwrap_or_default();
                            write(&mut worker.stdin, &ToWorker::Answer { id, answer }).await?;
                            continue;
                        }
                        let Ok(arguments) = serde_json::value::to_raw_value(&arguments) else {
                            return Err(RunError::Protocol("unreadable arguments".into()));
                        };
                        let answer = call(ScriptCall { tool, arguments });
                        calls.push(async move { (id, answer.await) });
                    }
                    Ok(FromWorker::Done { report }) => return Ok(report),
                    Ok(FromWorker::Failed { error }) => return Err(RunError::Broken(error)),
                    Ok(other) => {
                        return Err(RunError::Protocol(format!("an unexpected {other:?}")));
                    }
                    Err(e) => return Err(RunError::Protocol(e.to_string())),
                }
            }
            Some((id, answer)) = calls.next(), if !calls.is_empty() => {
                let answer = serde_json::from_str(answer.get()).unwrap_or_default();
                write(&mut worker.stdin, &ToWorker::Answer { id, answer }).await?;
            }
            () = &mut deadline => return Err(RunError::TimeLimit(limits.time)),
        }
    }
}

/// Why the worker went away mid-script.
async fn ended(child: &mut Child, limits: Limits) -> RunError {
    let status = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
    match status {
        Ok(Ok(status)) => match status.signal() {
            Some(libc::SIGXCPU) | Some(libc::SIGKILL) => RunError::CpuLimit(limits.cpu),
            Some(signal) => RunError::Crashed(format!("signal {signal}")),
            None => RunError::Crashed(status.to_string()),
        },
        _ => RunError::Crashed("it closed its output".into()),
    }
}

async fn write(stdin: &mut ChildStdin, message: &ToWorker) -> Result<(), RunError> {
    let mut line = serde_json::to_vec(message).map_err(|e| RunError::Protocol(e.to_string()))?;
    line.push(b'\n');
    stdin
        .write_all(&line)
        .await
        .map_err(|e| RunError::Crashed(format!("writing to it failed: {e}")))
}

/// `{"error": message}`.
pub fn error_answer(message: &str) -> Box<RawValue> {
    serde_json::value::to_raw_value(&serde_json::json!({ "error": message })).unwrap_or_default()
}
