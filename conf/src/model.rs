//! The typed configuration Sluice runs on.
//!
//! These types are what the rest of the program reads; the YAML file is only one way to build
//! them (see [`crate::load`]). Defaults live here, next to the field they belong to.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use crate::llm::{Budget, Llm, Price, Provider, ProviderKind, Redis, Route, State, Target};
use crate::secret::{Secret, redact_url};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where `/mcp` (and later the LLM routes) are served.
    pub listen: Vec<Listener>,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    #[serde(default)]
    pub admin: Option<Admin>,
    #[serde(default)]
    pub mcp: Mcp,
    /// Virtual keys: who may call, and what they may use.
    #[serde(default)]
    pub keys: Vec<Key>,
    /// Refuse requests without a valid virtual key (the default). Turn off only for local
    /// experiments: every caller then sees every tool.
    #[serde(default = "default_true")]
    pub enforce_auth: bool,
    #[serde(default)]
    pub audit: Audit,
    /// Worker threads of the gateway service.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// On SIGTERM, how long requests in flight may take to finish.
    #[serde(default = "default_grace_period", with = "humantime_serde")]
    pub grace_period: Duration,
    /// Where a new Sluice (`sluice run --upgrade`) takes over the listening sockets from this
    /// one, which hands them over on SIGQUIT.
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: PathBuf,
    /// Bounds on what clients may hold of the gateway.
    #[serde(default)]
    pub limits: Limits,
    /// The Python workers that run Code Mode scripts.
    #[serde(default)]
    pub code_mode: CodeMode,
    /// LLM providers that `/v1/messages` and `/v1/chat/completions` are routed to.
    #[serde(default)]
    pub providers: Vec<Provider>,
    /// Which provider serves which model; the first matching route applies.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Model prices, for cost budgets and the audit log.
    #[serde(default)]
    pub prices: Vec<Price>,
    #[serde(default)]
    pub llm: Llm,
    /// Counted state: token limits, budgets and spend.
    #[serde(default)]
    pub state: State,
}

/// Code Mode's workers and the limits of one script.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeMode {
    /// Workers kept started and waiting; each runs one script and is replaced.
    #[serde(default = "default_code_workers")]
    pub workers: usize,
    /// CPU time a script may use (the kernel stops it beyond).
    #[serde(default = "default_code_cpu", with = "humantime_serde")]
    pub cpu_limit: Duration,
    /// Wall-clock time a script may take, waiting on tools included.
    #[serde(default = "default_code_wall", with = "humantime_serde")]
    pub time_limit: Duration,
    /// Memory a script may allocate, in MiB.
    #[serde(default = "default_code_memory")]
    pub memory_mb: u64,
    /// Bytes of printed output and result returned; the rest is cut with a note.
    #[serde(default = "default_code_output")]
    pub output_limit: usize,
    /// Tool calls one script may make.
    #[serde(default = "default_code_calls")]
    pub max_tool_calls: usize,
}

impl Default for CodeMode {
    fn default() -> Self {
        CodeMode {
            workers: default_code_workers(),
            cpu_limit: default_code_cpu(),
            time_limit: default_code_wall(),
            memory_mb: default_code_memory(),
            output_limit: default_code_output(),
            max_tool_calls: default_code_calls(),
        }
    }
}

fn default_code_workers() -> usize {
    2
}
fn default_code_cpu() -> Duration {
    Duration::from_secs(10)
}
fn default_code_wall() -> Duration {
    Duration::from_secs(60)
}
fn default_code_memory() -> u64 {
    256
}
fn default_code_output() -> usize {
    16 * 1024
}
fn default_code_calls() -> usize {
    100
}

/// Bounds on client connections and requests. Every one has a safe default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Client connections open at once; more are answered 503 and closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// The request line and headers together; larger gets 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// A request head must arrive whole within this of its first byte (slow clients).
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A request body must arrive whole within this; a slower one gets 408.
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    pub body_timeout: Duration,
    /// A kept-alive connection with no request for this long is closed.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: default_max_connections(),
            max_header_bytes: default_max_header_bytes(),
            header_timeout: default_header_timeout(),
            body_timeout: default_body_timeout(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

fn default_max_connections() -> usize {
    10_000
}
fn default_max_header_bytes() -> usize {
    32 * 1024
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_upgrade_sock() -> PathBuf {
    PathBuf::from("/tmp/sluice-upgrade.sock")
}

fn default_threads() -> usize {
    2
}
fn default_true() -> bool {
    true
}
fn default_grace_period() -> Duration {
    Duration::from_secs(5)
}

/// A virtual key. The secret is given as `key` (normally `${VAR}`) or as its SHA-256
/// (`key_sha256`, hex); Sluice keeps only the hash either way.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    /// Shown in logs, audit records and errors; never the secret.
    pub name: String,
    #[serde(default)]
    pub key: Option<Secret>,
    #[serde(default)]
    pub key_sha256: Option<String>,
    /// Namespaced tool names or globs (`docs__search_*`).
    #[serde(default)]
    pub tools: Vec<String>,
    /// Names of `mcp.tool_groups`.
    #[serde(default)]
    pub tool_groups: Vec<String>,
    #[serde(default)]
    pub disabled: bool,
    /// RFC 3339 time after which the key is refused, e.g. `2027-01-31T00:00:00Z`.
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// Code Mode: `tools/list` shows the meta-tools (search, stubs, run a Python script)
    /// instead of the catalog, plus the tools of servers listed `direct`.
    #[serde(default)]
    pub code_mode: bool,
    /// Model names or globs this key may ask for on the LLM routes; none when empty.
    #[serde(default)]
    pub models: Vec<String>,
    /// What the key may spend on models.
    #[serde(default)]
    pub budget: Option<Budget>,
}

/// Per-key request limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests per minute, on `/mcp` and the LLM routes together.
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    /// Model tokens (prompt and completion) per minute.
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
}

/// The audit log: one JSON line per MCP request that does work.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    /// Where records go; `None` turns the audit log off.
    #[serde(default = "default_audit_path")]
    pub path: Option<PathBuf>,
    /// Record tool arguments themselves, not only their size.
    #[serde(default)]
    pub include_arguments: bool,
    /// Record tool results themselves (cut to `max_value_bytes`), not only their size.
    #[serde(default)]
    pub include_results: bool,
    /// Recorded arguments and results are cut to this many bytes.
    #[serde(default = "default_audit_max_value_bytes")]
    pub max_value_bytes: usize,
    /// Rotate when the file reaches this size.
    #[serde(default = "default_audit_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (`audit.jsonl.1` ... `.N`).
    #[serde(default = "default_audit_max_files")]
    pub max_files: usize,
}

impl Default for Audit {
    fn default() -> Self {
        Audit {
            path: default_audit_path(),
            include_arguments: false,
            include_results: false,
            max_value_bytes: default_audit_max_value_bytes(),
            max_bytes: default_audit_max_bytes(),
            max_files: default_audit_max_files(),
        }
    }
}

fn default_audit_path() -> Option<PathBuf> {
    Some(PathBuf::from("data/audit.jsonl"))
}
fn default_audit_max_value_bytes() -> usize {
    16 * 1024
}
fn default_audit_max_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_audit_max_files() -> usize {
    5
}

/// One listening socket for client traffic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub address: SocketAddr,
    #[serde(default)]
    pub tls: Option<Tls>,
}

/// Certificate and key for a TLS listener (PEM files). Both are read again on SIGHUP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Oldest TLS version accepted: `"1.2"` (default) or `"1.3"`.
    #[serde(default = "default_min_tls")]
    pub min_version: String,
    /// Offer HTTP/2 by ALPN (HTTP/1.1 stays available).
    #[serde(default = "default_true")]
    pub http2: bool,
}

fn default_min_tls() -> String {
    "1.2".into()
}

/// The admin listener: health and metrics, never client traffic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Loopback by default; another address needs a `token`.
    #[serde(default = "default_admin_address")]
    pub address: SocketAddr,
    /// When set, `/metrics` and the detail of `/readyz` need `Authorization: Bearer <token>`
    /// (normally `${VAR}`).
    #[serde(default)]
    pub token: Option<Secret>,
}

fn default_admin_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

/// The `/mcp` endpoint and the upstream MCP servers behind it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mcp {
    #[serde(default)]
    pub servers: Vec<McpServer>,
    /// Named sets of tools (names or globs) that keys grant by name.
    #[serde(default)]
    pub tool_groups: BTreeMap<String, Vec<String>>,
    /// Largest request body accepted on `/mcp`; larger ones get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Tools per `tools/list` page; further pages are reached with `nextCursor`.
    #[serde(default = "default_page_size")]
    pub page_size: usize,
    /// Browser origins allowed to call `/mcp` besides localhost ones. Requests without an
    /// `Origin` header (every non-browser client) are always allowed.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// How long a downstream session stays valid after it was created.
    #[serde(default = "default_session_ttl", with = "humantime_serde")]
    pub session_ttl: Duration,
    /// A session unused this long on an instance is ended there.
    #[serde(default = "default_session_idle_timeout", with = "humantime_serde")]
    pub session_idle_timeout: Duration,
    /// Sessions one instance holds at most; `initialize` beyond it gets 503.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Session secrets accepted besides `SLUICE_SESSION_SECRET` (which seals), for rotation
    /// (normally `${SLUICE_SESSION_SECRET_PREVIOUS}`); at least 16 bytes each.
    #[serde(default)]
    pub previous_session_secrets: Vec<Secret>,
}

impl Default for Mcp {
    fn default() -> Self {
        Mcp {
            servers: Vec::new(),
            tool_groups: BTreeMap::new(),
            max_body_bytes: default_max_body_bytes(),
            page_size: default_page_size(),
            allowed_origins: Vec::new(),
            session_ttl: default_session_ttl(),
            session_idle_timeout: default_session_idle_timeout(),
            max_sessions: default_max_sessions(),
            previous_session_secrets: Vec::new(),
        }
    }
}

fn default_max_body_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_page_size() -> usize {
    100
}
fn default_session_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_session_idle_timeout() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_sessions() -> usize {
    100_000
}

/// One upstream MCP server. Exactly one of `stdio`, `http` is given.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServer {
    /// Unique name; also the default tool prefix (`<name>__<tool>`).
    pub name: String,
    #[serde(default)]
    pub stdio: Option<StdioTransport>,
    #[serde(default)]
    pub http: Option<HttpTransport>,
    /// A legacy HTTP+SSE server (protocol 2024-11-05): `url` is its event stream (`/sse`).
    #[serde(default)]
    pub sse: Option<HttpTransport>,
    /// One upstream session for every caller (`shared`, the default), or one per downstream
    /// session (`per_client`) for servers that keep state per session.
    #[serde(default)]
    pub session: SessionMode,
    /// Which protocol era to speak to an HTTP server: `auto` (sessions when the server takes
    /// `initialize`, else the stateless 2026-07-28), `session` or `stateless`.
    #[serde(default)]
    pub era: UpstreamEra,
    /// How the server shows to keys in Code Mode: `scripts` (only through scripts, the
    /// default), `direct` (its tools also listed as tools), `only` (through scripts for every
    /// key, Code Mode or not).
    #[serde(default)]
    pub code_mode: ServerCodeMode,
    /// Tool name prefix; `None` means the server name, `""` means no prefix.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Re-read the server's catalog this often.
    #[serde(default = "default_sync_interval", with = "humantime_serde")]
    pub sync_interval: Duration,
    /// A call that takes longer fails with a timeout error naming the server. Also bounds
    /// connecting and `initialize`.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Connecting and the MCP handshake must finish within this, or the attempt fails (and is
    /// retried with backoff).
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Calls in flight to this server at once; more wait in line.
    #[serde(default = "default_max_concurrent_calls")]
    pub max_concurrent_calls: usize,
    /// How long a call waits in line before it fails with an error naming the server.
    #[serde(default = "default_queue_timeout", with = "humantime_serde")]
    pub queue_timeout: Duration,
}

impl McpServer {
    /// The prefix tools of this server are exposed under.
    pub fn tool_prefix(&self) -> &str {
        self.prefix.as_deref().unwrap_or(&self.name)
    }

    /// How Sluice reaches the server.
    pub fn transport(&self) -> Transport<'_> {
        match (&self.stdio, &self.http, &self.sse) {
            (Some(stdio), _, _) => Transport::Stdio(stdio),
            (None, Some(http), _) => Transport::Http(http),
            (None, None, Some(sse)) => Transport::Sse(sse),
            // `validate` refuses a server with no transport, so this is never reached for a
            // loaded config; a stdio command that cannot start reports itself at run time.
            (None, None, None) => Transport::Stdio(&EMPTY_STDIO),
        }
    }
}

static EMPTY_STDIO: StdioTransport = StdioTransport {
    command: String::new(),
    args: Vec::new(),
    env: BTreeMap::new(),
    cwd: None,
};

fn default_sync_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_concurrent_calls() -> usize {
    256
}
fn default_queue_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The way to reach one upstream.
#[derive(Debug, Clone, Copy)]
pub enum Transport<'a> {
    Stdio(&'a StdioTransport),
    Http(&'a HttpTransport),
    Sse(&'a HttpTransport),
}

/// The protocol era Sluice speaks to an upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamEra {
    /// Sessions when the server takes `initialize` (dual-era servers keep their session-era
    /// features, such as asking the client mid-call), else 2026-07-28.
    #[default]
    Auto,
    Session,
    Stateless,
}

/// How a server's tools reach callers when Code Mode is on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerCodeMode {
    /// Keys in Code Mode reach it through scripts; other keys see its tools listed.
    #[default]
    Scripts,
    /// Keys in Code Mode see its tools listed as well as through scripts.
    Direct,
    /// Every key reaches it only through scripts (keys not in Code Mode get the meta-tools
    /// for it).
    Only,
}

/// Whose upstream session a call uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionMode {
    /// One upstream session for every caller: stateless tool servers, most connection reuse.
    #[default]
    Shared,
    /// One upstream session per downstream session, closed when that session ends.
    PerClient,
}

/// A child process speaking MCP over stdin/stdout.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdioTransport {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment of the child (often its credentials, so kept secret).
    #[serde(default)]
    pub env: BTreeMap<String, Secret>,
    #[serde(default)]
    pub cwd: Option<PathBuf>,
}

/// A Streamable HTTP MCP server.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTransport {
    /// May hold credentials (userinfo, a query token): shown only through [`redact_url`].
    pub url: String,
    /// Extra headers sent to the upstream (its own credentials, typically from `${VAR}`).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Idle keep-alive connections kept per upstream. Keep it at least as large as the number
    /// of calls in flight to this server at peak, or connections are closed and reopened.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// For `https://` URLs: a PEM file of CA certificates to trust for this server, in addition
    /// to the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTransport")
            .field("url", &redact_url(&self.url))
            .field("headers", &self.headers)
            .field("pool_size", &self.pool_size)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

fn default_pool_size() -> usize {
    256
}
