//! The audit log: one JSON line per MCP request that does work (`tools/call`, later
//! `resources/read` and `prompts/get`).
//!
//! Records are queued in memory and written by a writer thread that wakes every
//! [`FLUSH_INTERVAL`] (or when the queue fills up), so the request path never waits for the disk
//! and never wakes a thread per record: at thousands of calls per second a wake-up per record
//! cost more than the rest of the audit work together. The writer rotates by size, and
//! [`AuditLog::close`] drains everything before returning, so a clean shutdown loses nothing.
//! Records name keys by their configured name; key material never reaches the log.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use sluice_conf::Audit as AuditConfig;

/// How long a record may wait in memory before it is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Queue length that wakes the writer early.
const HIGH_WATER: usize = 4096;
/// Beyond this many queued records, or this many bytes of them (the disk cannot keep up),
/// records are dropped and counted rather than slowing requests down or growing without bound.
const QUEUE_LIMIT: usize = 262_144;
const QUEUE_BYTES_LIMIT: usize = 64 * 1024 * 1024;

/// One audited request.
#[derive(Debug, Serialize)]
pub struct AuditRecord {
    pub time: Timestamp,
    /// The JSON-RPC id of the request, as sent; for a call a Code Mode script made,
    /// `<parent id>.<n>`.
    pub request_id: String,
    /// For a call a Code Mode script made: the `request_id` of the `run_script` call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// A fingerprint of the session id (the id itself is a credential of sorts).
    pub session: String,
    pub key: String,
    pub method: &'static str,
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
    /// The LLM call whose response asked for this tool call (see `llm::links`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub llm_request_id: Option<String>,
    /// The `tool_use` (or `tool_calls`) id of that response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_use_id: Option<String>,
    /// The tool's result, with `audit.include_results` (cut to `audit.max_value_bytes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<serde_json::value::RawValue>>,
}

/// One LLM request.
#[derive(Debug, Serialize)]
pub struct LlmRecord {
    pub time: Timestamp,
    /// This record's id; tool calls the response asked for name it as `llm_request_id`.
    pub request_id: String,
    pub key: String,
    /// `llm/messages`, `llm/chat_completions`, `llm/count_tokens`.
    pub method: &'static str,
    /// The model the client asked for.
    pub model: String,
    /// Who served it, if anyone did.
    pub provider: Option<String>,
    pub provider_model: Option<String>,
    pub stream: bool,
    /// `ok`, `error` (the provider or the gateway failed it), `denied` (key, model, budget).
    pub status: &'static str,
    pub http_status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every provider tried, in order.
    pub attempts: Vec<LlmAttempt>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    /// In the unit of `prices`.
    pub cost: f64,
    /// The tool calls the response asked for.
    pub tool_uses: Vec<ToolUseRef>,
    pub upstream_ms: Option<f64>,
    pub total_ms: f64,
}

/// One provider tried for an LLM request.
#[derive(Debug, Clone, Serialize)]
pub struct LlmAttempt {
    pub provider: String,
    pub model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A `tool_use` block of a model response.
#[derive(Debug, Clone, Serialize)]
pub struct ToolUseRef {
    pub id: String,
    pub name: String,
}

/// A record of either kind.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Entry {
    Tool(AuditRecord),
    Llm(LlmRecord),
}

impl From<AuditRecord> for Entry {
    fn from(record: AuditRecord) -> Self {
        Entry::Tool(record)
    }
}

impl From<LlmRecord> for Entry {
    fn from(record: LlmRecord) -> Self {
        Entry::Llm(record)
    }
}

impl Entry {
    fn weight(&self) -> usize {
        match self {
            Entry::Tool(record) => record.weight(),
            Entry::Llm(record) => {
                std::mem::size_of::<LlmRecord>()
                    + record.request_id.len()
                    + record.model.len()
                    + record.error.as_ref().map_or(0, String::len)
                    + record.attempts.len() * 64
                    + record.tool_uses.len() * 64
            }
        }
    }
}

impl AuditRecord {
    /// About the memory the record holds while queued.
    fn weight(&self) -> usize {
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        std::mem::size_of::<Self>()
            + self.request_id.len()
            + text(&self.parent)
            + self.session.len()
            + self.key.len()
            + text(&self.server)
            + text(&self.tool)
            + text(&self.error)
            + self.arguments.as_ref().map_or(0, |a| a.get().len())
            + self.result.as_ref().map_or(0, |a| a.get().len())
    }
}

/// Why the audit log cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the audit log {path}: {source}")]
pub struct AuditError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Records waiting for the writer.
#[derive(Default)]
struct Queue {
    records: Vec<Entry>,
    /// The [`AuditRecord::weight`] of `records`.
    bytes: usize,
    closed: bool,
    dropped: u64,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Handle to the audit writer.
pub struct AuditLog {
    /// `None` when auditing is off.
    shared: Option<Arc<Shared>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    include_arguments: bool,
    include_results: bool,
    max_value_bytes: usize,
}

impl AuditLog {
    /// Start the writer for `config`; a log with no path discards records.
    pub fn open(config: &AuditConfig) -> Result<Self, AuditError> {
        let Some(path) = config.path.clone() else {
            return Ok(AuditLog {
                shared: None,
                writer: Mutex::new(None),
                include_arguments: false,
                include_results: false,
                max_value_bytes: 0,
            });
        };
        let file = open_append(&path)?;
        let shared = Arc::new(Shared::default());
        let rotation = Rotation {
            path,
            max_bytes: config.max_bytes,
            max_files: config.max_files,
        };
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("sluice-audit".into())
                .spawn(move || write_loop(&shared, file, rotation))
                .map_err(|source| AuditError {
                    path: PathBuf::from("<thread>"),
                    source,
                })?
        };
        Ok(AuditLog {
            shared: Some(shared),
            writer: Mutex::new(Some(writer)),
            include_arguments: config.include_arguments,
            include_results: config.include_results,
            max_value_bytes: config.max_value_bytes,
        })
    }

    /// Whether records should carry tool results.
    pub fn include_results(&self) -> bool {
        self.include_results
    }

    /// A value to record (arguments, a result): as it is when small enough, else a string
    /// holding its cut beginning.
    pub fn capped(&self, json: &str) -> Option<Box<serde_json::value::RawValue>> {
        if json.len() <= self.max_value_bytes {
            return serde_json::value::RawValue::from_string(json.to_string()).ok();
        }
        let mut end = self.max_value_bytes;
        while !json.is_char_boundary(end) {
            end -= 1;
        }
        let cut = serde_json::Value::String(format!("{}… (cut at {} bytes)", &json[..end], end));
        serde_json::value::to_raw_value(&cut).ok()
    }

    /// Whether records should carry the arguments themselves.
    pub fn include_arguments(&self) -> bool {
        self.include_arguments
    }

    /// Queue a record; never blocks on the disk.
    pub fn record(&self, record: impl Into<Entry>) {
        let Some(shared) = &self.shared else {
            return;
        };
        let record = record.into();
        let weight = record.weight();
        let mut queue = shared.lock();
        if queue.closed
            || queue.records.len() >= QUEUE_LIMIT
            || queue.bytes + weight > QUEUE_BYTES_LIMIT
        {
            queue.dropped += 1;
            return;
        }
        queue.bytes += weight;
        queue.records.push(record);
        if queue.records.len() == HIGH_WATER {
            shared.wake.notify_one();
        }
    }

    /// Write every queued record and stop the writer.
    pub fn close(&self) {
        if let Some(shared) = &self.shared {
            shared.lock().closed = true;
            shared.wake.notify_one();
        }
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

fn write_loop(shared: &Shared, file: File, rotation: Rotation) {
    let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut out = BufWriter::with_capacity(256 * 1024, file);
    let mut batch = Vec::new();
    // One line buffer for every record: a fresh one grew through several reallocations each.
    let mut line = Vec::with_capacity(1024);
    loop {
        let (closed, dropped) = {
            let mut queue = shared.lock();
            if !queue.closed && queue.records.len() < HIGH_WATER {
                queue = shared
                    .wake
                    .wait_timeout(queue, FLUSH_INTERVAL)
                    .map(|(q, _)| q)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            std::mem::swap(&mut batch, &mut queue.records);
            queue.bytes = 0;
            (queue.closed, std::mem::take(&mut queue.dropped))
        };
        if dropped > 0 {
            tracing::error!("the audit log could not keep up: {dropped} records were dropped");
        }
        for record in batch.drain(..) {
            line.clear();
            match serde_json::to_writer(&mut line, &record) {
                Ok(()) => {
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
                        out = BufWriter::with_capacity(256 * 1024, file);
                        size = 0;
                    }
                    Err(e) => {
                        tracing::error!("audit log rotation failed: {e}; auditing stops");
                        return;
                    }
                }
            }
        }
        if let Err(e) = out.flush() {
            tracing::error!("audit log flush failed: {e}");
        }
        if closed {
            let _ = out.get_ref().sync_all();
            return;
        }
    }
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

/// When a record was made; written as RFC 3339 (milliseconds, UTC) by the writer thread, off
/// the request path.
#[derive(Debug, Clone, Copy)]
pub struct Timestamp(std::time::SystemTime);

impl Timestamp {
    pub fn now() -> Self {
        Timestamp(std::time::SystemTime::now())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_rfc3339_millis(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize) -> AuditRecord {
        AuditRecord {
            time: Timestamp::now(),
            request_id: i.to_string(),
            parent: None,
            session: "s".into(),
            key: "alice".into(),
            method: "tools/call",
            server: Some("everything".into()),
            tool: Some("everything__echo".into()),
            argument_bytes: 10,
            arguments: None,
            status: "ok",
            error: None,
            upstream_ms: Some(1.0),
            total_ms: 1.5,
            llm_request_id: None,
            tool_use_id: None,
            result: None,
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
            ..AuditConfig::default()
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
