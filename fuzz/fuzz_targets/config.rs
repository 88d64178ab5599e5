//! The configuration parser (`sluice_conf::parse`: YAML, `${VAR}` substitution, validation),
//! then what the gateway builds from a configuration it accepted (keys, grants, upstream
//! table, the `/mcp` endpoint, a reload), none of which may fail once validation passed.
#![no_main]

use std::path::Path;
use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use sluice_filters::audit::AuditLog;
use sluice_filters::catalog::CatalogStore;
use sluice_filters::codemode::CodeMode;
use sluice_filters::codemode::pool::{Pool, WorkerCommand};
use sluice_filters::mcp::{McpEndpoint, Services};
use sluice_filters::metrics::Metrics;
use sluice_filters::ratelimit::LocalRateLimiter;
use sluice_filters::upstream::Upstreams;

/// The audit log stays off whatever the input says: a fuzzed path is not opened.
static AUDIT: LazyLock<Arc<AuditLog>> = LazyLock::new(|| {
    let off = sluice_conf::Audit {
        path: None,
        ..sluice_conf::Audit::default()
    };
    Arc::new(AuditLog::open(&off).expect("audit log off"))
});
static METRICS: LazyLock<Arc<Metrics>> = LazyLock::new(|| Arc::new(Metrics::new()));

/// `${VAR}`: variables whose name starts with `UNSET` are not set; `*PORT*` is a port; the rest
/// hold a key-like string.
fn lookup(name: &str) -> Option<String> {
    if name.starts_with("UNSET") {
        None
    } else if name.contains("PORT") {
        Some("8080".into())
    } else {
        Some(format!("fuzz-{name}-0123456789"))
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match sluice_conf::parse(Path::new("fuzz.yaml"), text, &lookup) {
        Ok(config) => config,
        Err(e) => {
            // An error names a line of the file, if any (YAML breaks lines at NEL, LS and PS
            // too).
            if let Some(line) = e.line {
                let lines = text
                    .split(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'])
                    .count()
                    + 1;
                assert!((1..=lines).contains(&line), "line {line} of {lines}: {e}");
            }
            let _ = e.to_string();
            return;
        }
    };
    let upstreams = Arc::new(Upstreams::new(
        &config.mcp.servers,
        Arc::new(CatalogStore::new()),
    ));
    // Code Mode's pool is built, never started: no worker process.
    let worker = WorkerCommand {
        program: "/nonexistent/sluice-fuzz-starts-no-code-worker".into(),
        args: Vec::new(),
    };
    let code_mode = Arc::new(CodeMode::new(Pool::new(worker, &config.code_mode)));
    let endpoint = McpEndpoint::new(
        &config,
        Services {
            upstreams,
            audit: AUDIT.clone(),
            metrics: METRICS.clone(),
            rate_limiter: Arc::new(LocalRateLimiter::new()),
            code_mode: code_mode.clone(),
            links: std::sync::Arc::new(sluice_filters::llm::links::ToolUseBook::new(std::time::Duration::from_secs(60))),
        },
        b"sluice-fuzz-session-secret-0123456789",
        config.mcp.session_ttl,
    );
    endpoint.reload(&config);
    code_mode.pool().reload(&config.code_mode);
});
