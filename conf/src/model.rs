//! The typed configuration Sluice runs on.
//!
//! These types are what the rest of the program reads; the YAML file is only one way to build
//! them (see [`crate::load`]). Defaults live here, next to the field they belong to.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

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
    /// Worker threads of the gateway service.
    #[serde(default = "default_threads")]
    pub threads: usize,
}

fn default_threads() -> usize {
    2
}

/// One listening socket for client traffic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub address: SocketAddr,
    #[serde(default)]
    pub tls: Option<Tls>,
}

/// Certificate and key for a TLS listener (PEM files).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The admin listener: health and metrics, never client traffic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub address: SocketAddr,
}

/// The `/mcp` endpoint and the upstream MCP servers behind it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mcp {
    #[serde(default)]
    pub servers: Vec<McpServer>,
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
}

impl Default for Mcp {
    fn default() -> Self {
        Mcp {
            servers: Vec::new(),
            max_body_bytes: default_max_body_bytes(),
            page_size: default_page_size(),
            allowed_origins: Vec::new(),
            session_ttl: default_session_ttl(),
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

/// One upstream MCP server. Exactly one of `stdio`, `http` is given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServer {
    /// Unique name; also the default tool prefix (`<name>__<tool>`).
    pub name: String,
    #[serde(default)]
    pub stdio: Option<StdioTransport>,
    #[serde(default)]
    pub http: Option<HttpTransport>,
    /// Tool name prefix; `None` means the server name, `""` means no prefix.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Re-read the server's catalog this often.
    #[serde(default = "default_sync_interval", with = "humantime_serde")]
    pub sync_interval: Duration,
    /// A call that takes longer fails with a timeout error naming the server.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl McpServer {
    /// The prefix tools of this server are exposed under.
    pub fn tool_prefix(&self) -> &str {
        self.prefix.as_deref().unwrap_or(&self.name)
    }

    /// How Sluice reaches the server.
    pub fn transport(&self) -> Transport<'_> {
        match (&self.stdio, &self.http) {
            (Some(stdio), _) => Transport::Stdio(stdio),
            (None, Some(http)) => Transport::Http(http),
            // `validate` refuses a server with no transport, so this is never reached for a
            // loaded config; a stdio command that cannot start reports itself at run time.
            (None, None) => Transport::Stdio(&EMPTY_STDIO),
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

/// The way to reach one upstream.
#[derive(Debug, Clone, Copy)]
pub enum Transport<'a> {
    Stdio(&'a StdioTransport),
    Http(&'a HttpTransport),
}

/// A child process speaking MCP over stdin/stdout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdioTransport {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<PathBuf>,
}

/// A Streamable HTTP MCP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTransport {
    pub url: String,
    /// Extra headers sent to the upstream (its own credentials, typically from `${VAR}`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Idle keep-alive connections kept per upstream.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
}

fn default_pool_size() -> usize {
    32
}
