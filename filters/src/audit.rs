//! The audit log: one JSON line per MCP request that does work (`tools/call`, later
//! `resources/read` and `prompts/get`).
//!
//! Records are handed to a writer thread over a channel, so the request path never waits for
//! the disk. The writer flushes whenever the queue runs empty, rotates by size, and on
//! [`AuditLog::close`] drains everything before returning, so a clean shutdown loses nothing.
//! Records name keys by their configured name; key material never reaches the log.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;

use serde::Serialize;
use sluice_conf::Audit as AuditConfig;

/// Records waiting for the writer; beyond this, records are dropped and counted, rather than
/// slowing requests down.
const QUEUE: usize = 65_536;

/// One audited request.
#[derive(Debug, Serialize)]
pub struct AuditRecord {
    /// RFC 3339, milliseconds, UTC.
    pub time: String,
    /// The JSON-RPC id of the request, as sent.
    pub request_id: String,
    /// A fingerprint of the session id (the id itself is a credential of sorts).
    pub session: String,
    pub key: String,
    pub method: String,
    pub server: Option<String>,
    pub tool: Option<String>,
    pub argument_bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Box<serde_json::value::RawValue>>,
    /// `ok`, `tool_error` (the tool answered `isError`), `error` (JSON-RPC error), `denied`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub upstream_ms: Option<f64>,
    pub total_ms: f64,
}

/// Why the audit log cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the audit log {path}: {source}")]
pub struct AuditError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Handle to the audit writer.
pub struct AuditLog {
    sender: Mutex<Option<SyncSender<AuditRecord>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    include_arguments: bool,
}

impl AuditLog {
    /// Start the writer for `config`; a log with no path discards records.
    pub fn open(config: &AuditConfig) -> Result<Self, AuditError> {
        let Some(path) = config.path.clone() else {
            return Ok(AuditLog {
                sender: Mutex::new(None),
                writer: Mutex::new(None),
                include_arguments: false,
            });
        };
        let file = open_append(&path)?;
        let (tx, rx) = sync_channel(QUEUE);
        let rotation = Rotation {
            path,
            max_bytes: config.max_bytes,
            max_files: config.max_files,
        };
        let writer = std::thread::Builder::new()
            .name("sluice-audit".into())
            .spawn(move || write_loop(rx, file, rotation))
            .map_err(|source| AuditError {
                path: PathBuf::from("<thread>"),
                source,
            })?;
        Ok(AuditLog {
            sender: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            include_arguments: config.include_arguments,
        })
    }

    /// Whether records should carry the arguments themselves.
    pub fn include_arguments(&self) -> bool {
        self.include_arguments
    }

    /// Queue a record; never blocks the caller.
    pub fn record(&self, record: AuditRecord) {
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(sender) = sender
            && sender.try_send(record).is_err()
        {
            tracing::error!("audit queue is full; a record was dropped");
        }
    }

    /// Write every queued record and stop the writer.
    pub fn close(&self) {
        self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(writer) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = writer.join();
        }
    }
}

struct Rotation {
    path: PathBuf,
    max_bytes: u64,
    max_files: usize,
}

fn open_append(path: &Path) -> Result<File, AuditError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| AuditError {
            path: path.to_path_buf(),
            source,
        })?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| AuditError {
            path: path.to_path_buf(),
            source,
        })
}

fn write_loop(rx: Receiver<AuditRecord>, file: File, rotation: Rotation) {
    let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut out = BufWriter::new(file);
    // Block for the next record; then drain what is queued; flush when the queue is empty.
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(record) = next {
            match serde_json::to_vec(&record) {
                Ok(mut line) => {
                    line.push(b'\n');
                    if let Err(e) = out.write_all(&line) {
                        tracing::error!("audit log write failed: {e}");
                    }
                    size += line.len() as u64;
                }
                Err(e) => tracing::error!("audit record not serializable: {e}"),
            }
            if size >= rotation.max_bytes {
                match rotate(out, &rotation) {
                    Ok(file) => {
                        out = BufWriter::new(file);
                        size = 0;
                    }
                    Err(e) => {
                        tracing::error!(
                            "audit log rotation failed: {e}; records are lost until it succeeds"
                        );
                        return;
                    }
                }
            }
            next = match rx.try_recv() {
                Ok(record) => Some(record),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => None,
            };
        }
        if let Err(e) = out.flush() {
            tracing::error!("audit log flush failed: {e}");
        }
    }
    let _ = out.flush();
    let _ = out.get_ref().sync_all();
}

/// `audit.jsonl` → `audit.jsonl.1` → ... → `audit.jsonl.N` (dropped), then a fresh file.
fn rotate(mut out: BufWriter<File>, rotation: &Rotation) -> Result<File, AuditError> {
    let _ = out.flush();
    drop(out);
    let name = |n: usize| PathBuf::from(format!("{}.{n}", rotation.path.display()));
    if rotation.max_files > 0 {
        let _ = std::fs::remove_file(name(rotation.max_files));
        for n in (1..rotation.max_files).rev() {
            let _ = std::fs::rename(name(n), name(n + 1));
        }
        let _ = std::fs::rename(&rotation.path, name(1));
    } else {
        let _ = std::fs::remove_file(&rotation.path);
    }
    open_append(&rotation.path)
}

/// Current time for records.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize) -> AuditRecord {
        AuditRecord {
            time: now_rfc3339(),
            request_id: i.to_string(),
            session: "s".into(),
            key: "alice".into(),
            method: "tools/call".into(),
            server: Some("everything".into()),
            tool: Some("everything__echo".into()),
            argument_bytes: 10,
            arguments: None,
            status: "ok",
            error: None,
            upstream_ms: Some(1.0),
            total_ms: 1.5,
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-audit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn close_writes_everything() {
        let dir = temp_dir("close");
        let path = dir.join("audit.jsonl");
        let log = AuditLog::open(&AuditConfig {
            path: Some(path.clone()),
            ..AuditConfig::default()
        })
        .unwrap();
        for i in 0..1000 {
            log.record(record(i));
        }
        log.close();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1000);
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["key"], "alice");
        assert_eq!(first["status"], "ok");
    }

    #[test]
    fn rotates_by_size() {
        let dir = temp_dir("rotate");
        let path = dir.join("audit.jsonl");
        let log = AuditLog::open(&AuditConfig {
            path: Some(path.clone()),
            max_bytes: 2000,
            max_files: 2,
            include_arguments: false,
        })
        .unwrap();
        for i in 0..100 {
            log.record(record(i));
        }
        log.close();
        assert!(dir.join("audit.jsonl.1").exists());
        assert!(dir.join("audit.jsonl.2").exists());
        assert!(!dir.join("audit.jsonl.3").exists());
    }
}
