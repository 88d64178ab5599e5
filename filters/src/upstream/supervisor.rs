//! Keeps each upstream connected and its tools in the catalog.
//!
//! One task per server: connect (start the process or initialize over HTTP), read every page of
//! its tools, resources, resource templates and prompts into the catalog, then wait for the
//! sync interval, a `list_changed` notification or the connection's end. A failure marks the server unhealthy and retries with
//! exponential back-off; its last good tools stay in the catalog, and the other servers are
//! never affected.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use serde_json::Value;
use serde_json::value::RawValue;
use sluice_conf::{McpServer, SessionMode, Transport};
use tokio::sync::{OnceCell, Semaphore, broadcast};
use tokio_util::sync::CancellationToken;

use super::http::HttpConnection;
use super::sse::SseConnection;
use super::stdio::StdioConnection;
use super::{
    Announcements, CallOptions, Connection, Outcome, ResourceUpdate, UpstreamError,
    initialize_params, notification_bytes,
};
use crate::catalog::{CatalogStore, Kind, ServerLists};
use crate::jsonrpc::code;

const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Upstream sessions a `per_client` server keeps open at once; past this, the longest idle is
/// closed (its client gets a fresh upstream session on its next call).
const MAX_CLIENT_SESSIONS: usize = 1_000;
/// A `per_client` upstream session unused this long is closed.
const CLIENT_SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// A server that sends more pages than this is treated as broken.
const MAX_PAGES: usize = 1000;

/// Where a server stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    /// Not yet connected for the first time.
    Starting = 0,
    /// Connected and synced.
    Ready = 1,
    /// The last attempt failed; retrying.
    Failed = 2,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Ready => "ready",
            Health::Failed => "failed",
        }
    }
}

/// One configured upstream server.
pub struct Upstream {
    pub name: Arc<str>,
    config: McpServer,
    /// Position in the configuration: the catalog lists servers in this order.
    order: AtomicUsize,
    connection: ArcSwapOption<Connection>,
    health: AtomicU8,
    last_error: Mutex<Option<String>>,
    announcements: Arc<Announcements>,
    /// Cancelled when the server is removed or replaced, or Sluice stops.
    retired: CancellationToken,
    /// For `session: per_client`: one upstream connection per downstream session.
    clients: Mutex<HashMap<[u8; 16], ClientSession>>,
    /// `max_concurrent_calls` places; a call waits for one up to `queue_timeout`.
    in_flight: Semaphore,
}

/// A `per_client` server's connection for one downstream session, opened on its first call.
struct ClientSession {
    connection: Arc<OnceCell<Arc<Connection>>>,
    last_used: Instant,
    /// When the downstream session expires (Unix seconds).
    expires_at: Option<u64>,
}

/// How often `per_client` servers look for upstream sessions to close.
const CLIENT_SWEEP: Duration = Duration::from_secs(2);

impl Upstream {
    fn new(
        config: McpServer,
        order: usize,
        retired: CancellationToken,
        updates: broadcast::Sender<ResourceUpdate>,
    ) -> Self {
        let in_flight = Semaphore::new(config.max_concurrent_calls.max(1));
        Upstream {
            name: Arc::from(config.name.as_str()),
            config,
            order: AtomicUsize::new(order),
            connection: ArcSwapOption::empty(),
            health: AtomicU8::new(Health::Starting as u8),
            last_error: Mutex::new(None),
            announcements: Arc::new(Announcements::new(updates)),
            retired,
            clients: Mutex::default(),
            in_flight,
        }
    }

    /// Stop supervising this server; its child process ends once the calls still holding
    /// its connection are done.
    fn retire(&self) {
        self.retired.cancel();
        self.connection.store(None);
    }

    pub fn health(&self) -> Health {
        match self.health.load(Ordering::Relaxed) {
            0 => Health::Starting,
            1 => Health::Ready,
            _ => Health::Failed,
        }
    }

    /// The reason of the last failure, if the server is not healthy.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The prefix its tools are exposed under.
    pub fn tool_prefix(&self) -> &str {
        self.config.tool_prefix()
    }

    /// The process id of a stdio server's current child.
    pub fn pid(&self) -> Option<u32> {
        match self.connection.load().as_deref() {
            Some(Connection::Stdio(c)) => c.pid(),
            _ => None,
        }
    }

    /// Forward one request to the server, with no events expected.
    pub async fn request(
        &self,
        method: &str,
        params: Option<&RawValue>,
    ) -> Result<Outcome, UpstreamError> {
        self.call(method, params, &CallOptions::default()).await
    }

    /// Forward one request to the server; what it sends on the way goes to `options.events`.
    /// Dropping the future cancels the request at the server.
    pub async fn call(
        &self,
        method: &str,
        params: Option<&RawValue>,
        options: &CallOptions,
    ) -> Result<Outcome, UpstreamError> {
        let connection = match options.session {
            // Boxed: the handshake it may make would otherwise make every call's future larger.
            Some(session) if self.config.session == SessionMode::PerClient => {
                Box::pin(self.client_connection(session, options.session_expires_at)).await?
            }
            _ => self
                .connection
                .load_full()
                .ok_or_else(|| UpstreamError::Unavailable {
                    server: self.name.clone(),
                    reason: if self.retired.is_cancelled() {
                        "it was removed, or Sluice is stopping".into()
                    } else {
                        self.last_error()
                            .unwrap_or_else(|| "it has not connected yet".into())
                    },
                })?,
        };
        // Until its answer begins, a call holds one of the server's places.
        let _place = tokio::time::timeout(self.config.queue_timeout, self.in_flight.acquire())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| UpstreamError::Busy {
                server: self.name.clone(),
                limit: self.config.max_concurrent_calls,
                waited: self.config.queue_timeout,
            })?;
        let outcome = connection.request(method, params, options).await;
        // Calls see an unreachable server before the next sync does: reflect it in the health
        // (readiness, metrics) at once, and recover on the next answer.
        match &outcome {
            Err(e @ (UpstreamError::Connect { .. } | UpstreamError::Disconnected { .. })) => {
                self.set_health(Health::Failed, Some(e.to_string()));
            }
            Ok(_) if self.health() == Health::Failed => self.set_health(Health::Ready, None),
            _ => {}
        }
        outcome
    }

    /// The upstream session of downstream `session` (`per_client` servers), opened on first
    /// use; concurrent first calls share one handshake.
    async fn client_connection(
        &self,
        session: [u8; 16],
        expires_at: Option<u64>,
    ) -> Result<Arc<Connection>, UpstreamError> {
        let cell = {
            let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            if !clients.contains_key(&session) {
                for closed in evict_idle(&mut clients) {
                    tokio::spawn(async move { closed.close().await });
                }
            }
            let entry = clients.entry(session).or_insert_with(|| ClientSession {
                connection: Arc::default(),
                last_used: Instant::now(),
                expires_at,
            });
            entry.last_used = Instant::now();
            entry.connection.clone()
        };
        cell.get_or_try_init(|| async {
            let (connection, _) = self.connect().await?;
            tracing::debug!(server = %self.name, "opened an upstream session for a client");
            Ok::<_, UpstreamError>(Arc::new(connection))
        })
        .await
        .cloned()
    }

    /// Close, every so often, the upstream sessions of downstream sessions that expired or sat
    /// idle (a client that never says goodbye must not hold an upstream session for ever).
    async fn sweep_client_sessions(&self) {
        loop {
            tokio::time::sleep(CLIENT_SWEEP).await;
            let closed = {
                let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
                evict_idle(&mut clients)
            };
            for connection in closed {
                tracing::debug!(server = %self.name, "closing the upstream session of an ended client session");
                connection.close().await;
            }
        }
    }

    /// The downstream session ended: close its upstream session, if it has one.
    async fn end_client_session(&self, session: [u8; 16]) {
        let removed = self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&session);
        if let Some(connection) = removed.and_then(|c| c.connection.get().cloned()) {
            connection.close().await;
        }
    }

    fn set_health(&self, health: Health, error: Option<String>) {
        self.health.store(health as u8, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }

    /// Connect and run the MCP handshake, within `connect_timeout`: a server that accepts and
    /// never answers fails like one that refuses, so readiness and retries go on.
    async fn connect(&self) -> Result<(Connection, Hello), UpstreamError> {
        let limit = self.config.connect_timeout;
        tokio::time::timeout(limit, self.connect_unbounded())
            .await
            .map_err(|_| UpstreamError::Timeout {
                server: self.name.clone(),
                timeout: limit,
            })?
    }

    async fn connect_unbounded(&self) -> Result<(Connection, Hello), UpstreamError> {
        let timeout = self.config.request_timeout;
        let announcements = self.announcements.clone();
        let connection = match self.config.transport() {
            Transport::Stdio(stdio) => Connection::Stdio(StdioConnection::spawn(
                self.name.clone(),
                stdio,
                timeout,
                announcements,
            )?),
            Transport::Sse(sse) => Connection::Sse(
                SseConnection::connect(self.name.clone(), sse, timeout, announcements).await?,
            ),
            // Streamable HTTP runs its own handshake: it must keep the session id it returns.
            Transport::Http(http) => {
                let era = match self.config.session {
                    SessionMode::PerClient => sluice_conf::UpstreamEra::Session,
                    SessionMode::Shared => self.config.era,
                };
                let conn = HttpConnection::new(
                    self.name.clone(),
                    http,
                    timeout,
                    announcements.clone(),
                    era,
                )?;
                match conn.initialize().await {
                    Ok(result) => return Ok((Connection::Http(conn), Hello::read(&result))),
                    // A server that refuses the POST may speak the 2024-11-05 HTTP+SSE
                    // transport at the same URL (the specification's backward compatibility).
                    Err(
                        refused @ UpstreamError::Http {
                            status: 400 | 404 | 405,
                            ..
                        },
                    ) if era == sluice_conf::UpstreamEra::Auto => {
                        match SseConnection::connect(
                            self.name.clone(),
                            http,
                            timeout,
                            announcements,
                        )
                        .await
                        {
                            Ok(sse) => {
                                tracing::info!(server = %self.name, "upstream speaks the HTTP+SSE transport (2024-11-05)");
                                Connection::Sse(sse)
                            }
                            Err(_) => return Err(refused),
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let params =
            RawValue::from_string(initialize_params()).map_err(|e| self.protocol(e.to_string()))?;
        let result = self.handshake(
            &connection
                .request("initialize", Some(&params), &CallOptions::default())
                .await?,
        )?;
        connection.notify(notification_bytes("notifications/initialized"));
        Ok((connection, Hello::read(&result)))
    }

    /// The `initialize` result, or why the server refused.
    fn handshake(&self, outcome: &Outcome) -> Result<Box<RawValue>, UpstreamError> {
        match outcome {
            Outcome::Result(result) => Ok(result.clone()),
            Outcome::Error(e) => Err(self.protocol(format!("initialize was refused: {}", e.get()))),
            Outcome::Streamed(_) => Err(self.protocol("initialize came back in pieces".into())),
        }
    }

    /// Read everything the server lists: its tools, and its resources, templates and prompts
    /// where it declared them.
    async fn list_everything(
        &self,
        connection: &Connection,
        hello: &Hello,
    ) -> Result<ServerLists, UpstreamError> {
        let mut lists = ServerLists {
            tools: self.list_all(connection, Kind::Tools).await?,
            instructions: hello.instructions.clone(),
            ..ServerLists::default()
        };
        if hello.resources {
            lists.resources = self.list_all(connection, Kind::Resources).await?;
            lists.templates = self.list_all(connection, Kind::Templates).await?;
        }
        if hello.prompts {
            lists.prompts = self.list_all(connection, Kind::Prompts).await?;
        }
        Ok(lists)
    }

    /// Read every page of one list. A server that does not know the method lists nothing.
    async fn list_all(
        &self,
        connection: &Connection,
        kind: Kind,
    ) -> Result<Vec<Value>, UpstreamError> {
        let (method, member) = kind.list_method();
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let params = match &cursor {
                Some(c) => Some(
                    serde_json::value::to_raw_value(&serde_json::json!({ "cursor": c }))
                        .map_err(|e| self.protocol(e.to_string()))?,
                ),
                None => None,
            };
            let result = match connection
                .request(method, params.as_deref(), &CallOptions::default())
                .await?
            {
                Outcome::Result(r) => r,
                Outcome::Error(e) if kind != Kind::Tools && is_method_not_found(&e) => {
                    return Ok(Vec::new());
                }
                // Resources or prompts it cannot list must not cost the server its tools.
                Outcome::Error(e) if kind != Kind::Tools => {
                    tracing::warn!(server = %self.name, "{method} answered an error, so the server lists none: {}", error_message(&e));
                    return Ok(Vec::new());
                }
                Outcome::Error(e) => {
                    return Err(UpstreamError::Answered {
                        server: self.name.clone(),
                        detail: format!("{method} failed: {}", error_message(&e)),
                    });
                }
                Outcome::Streamed(_) => {
                    return Err(self.protocol(format!("{method} came back in pieces")));
                }
            };
            let mut page: Value =
                serde_json::from_str(result.get()).map_err(|e| self.protocol(e.to_string()))?;
            match page.get_mut(member).map(Value::take) {
                Some(Value::Array(found)) => items.extend(found),
                _ => {
                    return Err(self.protocol(format!("{method} answer has no `{member}` array")));
                }
            }
            cursor = page
                .get("nextCursor")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if cursor.is_none() {
                return Ok(items);
            }
        }
        Err(self.protocol(format!("{method} sent more than {MAX_PAGES} pages")))
    }

    fn protocol(&self, detail: String) -> UpstreamError {
        UpstreamError::Protocol {
            server: self.name.clone(),
            detail,
        }
    }

    /// Connect, sync and watch the server for as long as the runtime runs.
    async fn supervise(self: Arc<Self>, catalog: Arc<CatalogStore>) {
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.connect().await {
                Ok((connection, hello)) => {
                    let connection = Arc::new(connection);
                    match self.list_everything(&connection, &hello).await {
                        Ok(lists) => {
                            tracing::info!(
                                server = %self.name,
                                tools = lists.tools.len(),
                                resources = lists.resources.len(),
                                prompts = lists.prompts.len(),
                                "upstream synced"
                            );
                            catalog.set_server(
                                &self.name,
                                self.order.load(Ordering::Relaxed),
                                self.config.tool_prefix(),
                                lists,
                            );
                            self.connection.store(Some(connection.clone()));
                            self.set_health(Health::Ready, None);
                            backoff = MIN_BACKOFF;
                            let reason = self.watch(&connection, &hello, &catalog).await;
                            self.connection.store(None);
                            tracing::warn!(server = %self.name, "upstream lost: {reason}; reconnecting");
                            self.set_health(Health::Failed, Some(reason));
                        }
                        Err(e) => self.fail(e),
                    }
                }
                Err(e) => self.fail(e),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn fail(&self, e: UpstreamError) {
        tracing::warn!(server = %self.name, "upstream failed: {e}");
        self.set_health(Health::Failed, Some(e.to_string()));
    }

    /// Resync on interval and on `list_changed`; return when the connection is lost.
    async fn watch(
        &self,
        connection: &Arc<Connection>,
        hello: &Hello,
        catalog: &CatalogStore,
    ) -> String {
        loop {
            let closed = async {
                match connection.as_ref() {
                    Connection::Stdio(c) => c.closed().await,
                    Connection::Sse(c) => c.closed().await,
                    Connection::Http(_) | Connection::Local(_) => std::future::pending().await,
                }
            };
            tokio::select! {
                reason = closed => return reason,
                _ = tokio::time::sleep(self.config.sync_interval) => {}
                _ = self.announcements.list_changed.notified() => {}
            }
            match self.list_everything(connection, hello).await {
                Ok(lists) => {
                    tracing::info!(server = %self.name, tools = lists.tools.len(), "upstream re-synced");
                    catalog.set_server(
                        &self.name,
                        self.order.load(Ordering::Relaxed),
                        self.config.tool_prefix(),
                        lists,
                    )
                }
                // An HTTP server that cannot be synced is reconnected; its last tools stay.
                Err(e) => return e.to_string(),
            }
        }
    }
}

/// Remove the client sessions idle too long, and the longest idle past the cap; returns their
/// connections to close.
fn evict_idle(clients: &mut HashMap<[u8; 16], ClientSession>) -> Vec<Arc<Connection>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut evicted: Vec<[u8; 16]> = clients
        .iter()
        .filter(|(_, c)| {
            c.last_used.elapsed() > CLIENT_SESSION_IDLE || c.expires_at.is_some_and(|e| now > e)
        })
        .map(|(k, _)| *k)
        .collect();
    if clients.len() - evicted.len() >= MAX_CLIENT_SESSIONS
        && let Some((oldest, _)) = clients
            .iter()
            .filter(|(k, _)| !evicted.contains(k))
            .min_by_key(|(_, c)| c.last_used)
    {
        evicted.push(*oldest);
    }
    evicted
        .into_iter()
        .filter_map(|k| clients.remove(&k))
        .filter_map(|c| c.connection.get().cloned())
        .collect()
}

/// What a server said about itself in its `initialize` result.
#[derive(Debug, Default)]
struct Hello {
    instructions: Option<String>,
    resources: bool,
    prompts: bool,
}

impl Hello {
    fn read(result: &RawValue) -> Self {
        let value: Value = serde_json::from_str(result.get()).unwrap_or_default();
        let capabilities = value.get("capabilities");
        Hello {
            instructions: value
                .get("instructions")
                .and_then(Value::as_str)
                .map(str::to_owned),
            resources: capabilities.and_then(|c| c.get("resources")).is_some(),
            prompts: capabilities.and_then(|c| c.get("prompts")).is_some(),
        }
    }
}

fn is_method_not_found(error: &RawValue) -> bool {
    serde_json::from_str::<Value>(error.get())
        .ok()
        .and_then(|e| e.get("code").and_then(Value::as_i64))
        == Some(i64::from(code::METHOD_NOT_FOUND))
}

/// What a configuration reload changed among the servers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ServerChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Servers whose configuration changed: restarted with the new one.
    pub replaced: Vec<String>,
}

impl ServerChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.replaced.is_empty()
    }
}

/// Every configured upstream. The set is a snapshot swapped as a whole when the configuration
/// changes, so readers never lock and a reload adds, removes or restarts servers while the
/// others keep serving.
pub struct Upstreams {
    servers: ArcSwap<Vec<Arc<Upstream>>>,
    catalog: Arc<CatalogStore>,
    /// Every server's resource updates, for the sessions subscribed to them.
    updates: broadcast::Sender<ResourceUpdate>,
    stopping: CancellationToken,
    /// Serializes [`Upstreams::apply`] calls.
    applying: Mutex<()>,
    /// Every server has synced or failed once since start.
    started: AtomicBool,
}

impl Upstreams {
    pub fn new(configs: &[McpServer], catalog: Arc<CatalogStore>) -> Self {
        let stopping = CancellationToken::new();
        let (updates, _) = broadcast::channel(256);
        let servers = configs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Arc::new(Upstream::new(
                    c.clone(),
                    i,
                    stopping.child_token(),
                    updates.clone(),
                ))
            })
            .collect();
        Upstreams {
            servers: ArcSwap::from_pointee(servers),
            catalog,
            updates,
            stopping,
            applying: Mutex::new(()),
            started: AtomicBool::new(false),
        }
    }

    /// Start one supervisor task per server on the current runtime.
    pub fn start(&self) {
        for server in self.servers.load().iter() {
            self.supervise(server);
        }
    }

    fn supervise(&self, server: &Arc<Upstream>) {
        if server.config.session == SessionMode::PerClient {
            let sweeper = server.clone();
            let retired = server.retired.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = sweeper.sweep_client_sessions() => {}
                    () = retired.cancelled() => {}
                }
            });
        }
        let supervise = server.clone().supervise(self.catalog.clone());
        let retired = server.retired.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = supervise => {}
                () = retired.cancelled() => {}
            }
        });
    }

    /// Bring the running servers in line with `configs` (a configuration reload): new servers
    /// are started, removed ones stopped and their tools dropped from the catalog, changed ones
    /// restarted; unchanged servers are not touched. Runs supervisors on the current runtime.
    pub fn apply(&self, configs: &[McpServer]) -> ServerChanges {
        let _serial = self.applying.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.servers.load_full();
        let mut changes = ServerChanges::default();
        let mut next = Vec::with_capacity(configs.len());
        for (order, config) in configs.iter().enumerate() {
            let existing = current.iter().find(|s| s.config.name == config.name);
            match existing {
                // Matched by name: a server whose settings are unchanged keeps running
                // wherever it moved in the list.
                Some(server) if server.config == *config => {
                    server.order.store(order, Ordering::Relaxed);
                    next.push(server.clone());
                }
                _ => {
                    let server = Arc::new(Upstream::new(
                        config.clone(),
                        order,
                        self.stopping.child_token(),
                        self.updates.clone(),
                    ));
                    self.supervise(&server);
                    match existing {
                        Some(old) => {
                            old.retire();
                            changes.replaced.push(config.name.clone());
                        }
                        None => changes.added.push(config.name.clone()),
                    }
                    next.push(server);
                }
            }
        }
        for old in current.iter() {
            if !configs.iter().any(|c| c.name == *old.name) {
                old.retire();
                self.catalog.remove_server(&old.name);
                changes.removed.push(old.name.to_string());
            }
        }
        let names: Vec<&str> = configs.iter().map(|c| c.name.as_str()).collect();
        self.catalog.reorder(&names);
        self.servers.store(Arc::new(next));
        changes
    }

    /// Add a server that lives in this process, connected and synced at once; it is not
    /// supervised (it cannot fail) and a configuration reload leaves it alone unless a server
    /// of the same name is configured.
    pub async fn attach_local(
        &self,
        config: McpServer,
        server: Arc<dyn super::LocalServer>,
    ) -> Result<(), UpstreamError> {
        let order = self.servers.load().len();
        let upstream = Arc::new(Upstream::new(
            config,
            order,
            self.stopping.child_token(),
            self.updates.clone(),
        ));
        let connection = Arc::new(Connection::Local(server));
        let hello = Hello {
            resources: true,
            prompts: true,
            ..Hello::default()
        };
        let lists = upstream.list_everything(&connection, &hello).await?;
        self.catalog
            .set_server(&upstream.name, order, upstream.config.tool_prefix(), lists);
        upstream.connection.store(Some(connection));
        upstream.set_health(Health::Ready, None);
        let _serial = self.applying.lock().unwrap_or_else(|p| p.into_inner());
        let mut servers = Vec::clone(&self.servers.load());
        servers.push(upstream);
        self.servers.store(Arc::new(servers));
        Ok(())
    }

    /// Stop supervising (shutdown): nothing is restarted any more, and each stdio child is
    /// stopped once the calls still holding its connection are done.
    pub fn stop(&self) {
        self.stopping.cancel();
        for server in self.servers.load().iter() {
            server.retire();
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Upstream>> {
        self.servers
            .load()
            .iter()
            .find(|s| &*s.name == name)
            .cloned()
    }

    /// The servers as of now.
    pub fn all(&self) -> Arc<Vec<Arc<Upstream>>> {
        self.servers.load_full()
    }

    pub fn catalog(&self) -> &Arc<CatalogStore> {
        &self.catalog
    }

    /// A downstream session ended (DELETE): close the upstream sessions opened for it.
    pub fn end_client_session(&self, session: [u8; 16]) {
        for server in self.servers.load().iter() {
            if server.config.session == SessionMode::PerClient {
                let server = server.clone();
                tokio::spawn(async move { server.end_client_session(session).await });
            }
        }
    }

    /// Resource updates from every server, as they come.
    pub fn resource_updates(&self) -> broadcast::Receiver<ResourceUpdate> {
        self.updates.subscribe()
    }

    /// Wait until every server has synced or failed once since Sluice started (at most their
    /// longest `connect_timeout`, and not at all afterwards): a request that arrives while
    /// Sluice starts, or takes over the sockets of the process it upgrades, sees the whole
    /// catalog rather than "unknown tool".
    pub async fn started(&self) {
        if self.started.load(Ordering::Relaxed) {
            return;
        }
        let limit = self
            .servers
            .load()
            .iter()
            .map(|s| s.config.connect_timeout)
            .max()
            .unwrap_or_default()
            + Duration::from_secs(1);
        let deadline = Instant::now() + limit;
        while !self.is_ready() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.started.store(true, Ordering::Relaxed);
    }

    /// Ready once every server has synced or failed at least once.
    pub fn is_ready(&self) -> bool {
        self.servers
            .load()
            .iter()
            .all(|s| s.health() != Health::Starting)
    }
}

/// The `message` of a JSON-RPC error object, shortened (or the object, if it has none).
fn error_message(error: &RawValue) -> String {
    let text = serde_json::from_str::<Value>(error.get())
        .ok()
        .and_then(|e| e.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| error.get().to_string());
    crate::jsonrpc::shorten(&text, 300).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn servers(yaml: &str) -> Vec<McpServer> {
        let text = format!("listen: [{{address: 127.0.0.1:1}}]\nmcp:\n  servers:\n{yaml}");
        sluice_conf::parse(Path::new("t.yaml"), &text, &|_| None)
            .expect("valid config")
            .mcp
            .servers
    }

    #[tokio::test]
    async fn apply_adds_removes_and_restarts_only_what_changed() {
        let catalog = Arc::new(CatalogStore::new());
        let before = servers(
            "    - {name: a, stdio: {command: /nonexistent/a}}\n    - {name: b, stdio: {command: /nonexistent/b}}\n",
        );
        let upstreams = Upstreams::new(&before, catalog.clone());
        upstreams.start();
        catalog.set_server_tools("b", 1, "b", vec![serde_json::json!({"name": "t"})]);
        let a = upstreams.get("a").expect("a");

        let after = servers(
            "    - {name: a, stdio: {command: /nonexistent/a}}\n    - {name: c, stdio: {command: /nonexistent/c}}\n",
        );
        let changes = upstreams.apply(&after);
        assert_eq!(changes.added, ["c"]);
        assert_eq!(changes.removed, ["b"]);
        assert!(changes.replaced.is_empty());
        assert!(
            Arc::ptr_eq(&a, &upstreams.get("a").expect("a")),
            "unchanged server untouched"
        );
        assert!(upstreams.get("b").is_none());
        assert!(
            catalog.load().get("b__t").is_none(),
            "removed server's tools are gone"
        );

        let changed = servers(
            "    - {name: a, stdio: {command: /nonexistent/a2}}\n    - {name: c, stdio: {command: /nonexistent/c}}\n",
        );
        assert_eq!(upstreams.apply(&changed).replaced, ["a"]);
        assert!(a.retired.is_cancelled(), "the old instance of a is stopped");
        upstreams.stop();
    }
}
