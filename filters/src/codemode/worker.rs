//! A Code Mode worker: the process that embeds CPython and runs one script.
//!
//! The gateway starts `sluice code-worker` with its limits in the environment. The worker loads
//! the interpreter and [the prelude](prelude.py) (which imports every module scripts may use),
//! confines itself ([`super::sandbox`]), says it is ready, runs the one script it is sent, and
//! exits; the gateway replaces it. One script per process: nothing a script does to the
//! interpreter can reach the next script, whoever sends it.

use std::ffi::CString;
use std::io::{BufRead, Write};
use std::process::ExitCode;

use pyo3::prelude::*;

use super::protocol::{FromWorker, ToWorker};
use super::sandbox::{self, Confinement};

/// Environment variables that carry the limits from the gateway.
pub const CPU_ENV: &str = "SLUICE_CODE_CPU_SECONDS";
pub const MEMORY_ENV: &str = "SLUICE_CODE_MEMORY_BYTES";

const PRELUDE: &str = include_str!("prelude.py");
const PROBE: &str = include_str!("probe.py");

/// Tool calls from the script, and the answers to them, over stdout and stdin.
#[pymodule]
mod _sluice {
    use super::*;

    /// Send every `(tool, arguments JSON)` request at once, then wait for all their answers;
    /// the answers' JSON, in the order of the requests.
    #[pyfunction]
    fn call_many(requests: Vec<(String, String)>) -> PyResult<Vec<String>> {
        let count = requests.len() as u64;
        let first = next_ids(count);
        for (offset, (tool, arguments)) in requests.into_iter().enumerate() {
            let arguments = serde_json::from_str(&arguments).map_err(|e| {
                pyo3::exceptions::PyValueError::new_err(format!("arguments are not JSON: {e}"))
            })?;
            send(&FromWorker::Call {
                id: first + offset as u64,
                tool,
                arguments,
            })
            .map_err(|e| pyo3::exceptions::PyOSError::new_err(e.to_string()))?;
        }
        let mut answers: Vec<Option<String>> = vec![None; count as usize];
        while answers.iter().any(Option::is_none) {
            match receive() {
                Some(ToWorker::Answer { id, answer }) if (first..first + count).contains(&id) => {
                    answers[(id - first) as usize] = Some(answer.to_string());
                }
                Some(_) => {}
                None => {
                    return Err(pyo3::exceptions::PyOSError::new_err(
                        "the gateway closed the connection",
                    ));
                }
            }
        }
        Ok(answers.into_iter().flatten().collect())
    }
}

/// Reserve `n` call ids; the first of them.
fn next_ids(n: u64) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(n, Ordering::Relaxed)
}

fn send(message: &FromWorker) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    out.write_all(&line)?;
    out.flush()
}

fn receive() -> Option<ToWorker> {
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => serde_json::from_str(&line).ok(),
    }
}

/// `sluice code-worker --probe`: confine this process as a worker would be, try every escape
/// from plain Python (no prelude checks), and print what happened as JSON. For tests of the
/// process boundary; it runs no script.
pub fn probe() -> ExitCode {
    Python::initialize();
    let outcome = Python::attach(|py| -> Result<String, String> {
        let code = CString::new(PROBE).map_err(|e| e.to_string())?;
        let probe = PyModule::from_code(py, &code, c"sluice_probe.py", c"sluice_probe")
            .map_err(|e| e.to_string())?;
        let layers = sandbox::confine(Confinement {
            cpu_seconds: 10,
            memory_bytes: 256 << 20,
        })
        .map_err(|e| e.to_string())?;
        let results: String = probe
            .call_method0("attempts")
            .and_then(|r| r.extract())
            .map_err(|e| e.to_string())?;
        Ok(format!(
            "{{\"confinement\":{layers:?},\"attempts\":{results}}}"
        ))
    });
    match outcome.and_then(|line| send_line(&line).map_err(|e| e.to_string())) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            let _ = send(&FromWorker::Failed { error: e });
            ExitCode::FAILURE
        }
    }
}

fn send_line(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// The worker's `main`.
pub fn main() -> ExitCode {
    match serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let _ = send(&FromWorker::Failed { error });
            ExitCode::FAILURE
        }
    }
}

fn serve() -> Result<(), String> {
    let limit = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let confinement = Confinement {
        cpu_seconds: limit(CPU_ENV, 10),
        memory_bytes: limit(MEMORY_ENV, 256 << 20),
    };
    pyo3::append_to_inittab!(_sluice);
    Python::initialize();
    Python::attach(|py| -> Result<(), String> {
        let code = CString::new(PRELUDE).map_err(|e| e.to_string())?;
        let prelude = PyModule::from_code(py, &code, c"sluice_prelude.py", c"sluice_prelude")
            .map_err(|e| format!("the Code Mode prelude failed: {e}"))?;
        let run = prelude.getattr("run").map_err(|e| e.to_string())?;
        let layers = sandbox::confine(confinement).map_err(|e| e.to_string())?;
        send(&FromWorker::Ready {
            confinement: layers,
        })
        .map_err(|e| e.to_string())?;
        let Some(ToWorker::Run {
            script,
            namespaces,
            output_limit,
        }) = receive()
        else {
            return Err("expected a script to run".into());
        };
        let report: String = run
            .call1((script, namespaces, output_limit))
            .and_then(|r| r.extract())
            .map_err(|e| format!("the worker failed running the script: {e}"))?;
        let report = serde_json::from_str(&report).map_err(|e| e.to_string())?;
        send(&FromWorker::Done { report }).map_err(|e| e.to_string())
    })?;
    // Exit without finalizing the interpreter: the process is done, and finalizing could
    // run code a script left behind.
    std::process::exit(0)
}
