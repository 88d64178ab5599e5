//! Assembling the Pingora server: listeners, the gateway service, the admin service and the
//! background service that keeps upstream MCP servers connected.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};
use pingora::services::listening::Service;
use sluice_filters::audit::AuditLog;
use sluice_filters::catalog::CatalogStore;
use sluice_filters::codemode::CodeMode;
use sluice_filters::codemode::pool::{Pool, WorkerCommand};
use sluice_filters::llm::links::ToolUseBook;
use sluice_filters::llm::{LlmEndpoint, LlmServices};
use sluice_filters::mcp::{McpEndpoint, Services};
use sluice_filters::metrics::Metrics;
use sluice_filters::ratelimit::LocalRateLimiter;
use sluice_filters::ratelimit::RateLimiter;
use sluice_filters::state::{
    EndedSessions, MemoryStore, RedisRateLimiter, RedisShared, RedisSpend, SpendStore, SqliteStore,
};
use sluice_filters::upstream::Upstreams;
use tokio::signal::unix::{SignalKind, signal};

use crate::admin::Admin;
use crate::connections;
use crate::gateway::Gateway;
use crate::tls::{Certificate, PlainHttpRefusal};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] sluice_conf::ConfigError),
    #[error("{0}")]
    Audit(#[from] sluice_filters::audit::AuditError),
    #[error("{0}")]
    State(#[from] sluice_filters::state::StateError),
    #[error("state.redis: {0}")]
    Redis(#[from] sluice_filters::state::RedisError),
    #[error("cannot start the Redis runtime: {0}")]
    Runtime(String),
    #[error("TLS listener {address}: {source}")]
    Tls {
        address: String,
        source: crate::tls::TlsError,
    },
}

/// The environment variable holding the secret that seals session ids.
const SESSION_SECRET_ENV: &str = "SLUICE_SESSION_SECRET";

/// Run the gateway until it is told to stop (SIGTERM: gracefully; SIGINT: at once). SIGHUP
/// reloads the configuration.
pub fn run(config_path: &Path, upgrade: bool) -> Result<(), StartError> {
    let config = sluice_conf::load(config_path)?;

    let conf = ServerConf {
        threads: config.threads,
        grace_period_seconds: Some(config.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: config.upgrade_sock.to_string_lossy().into_owned(),
        // A timer runs for each waiting read (a kept-alive client's next request, a provider's
        // answer). Sluice's timeouts are seconds to minutes long and almost always cancelled:
        // Pingora's own timers keep a cancelled one until its deadline, and Pingora gives
        // that case to Tokio's timers. Every timeout of a second or more goes to Tokio (about
        // 4,000 fewer instructions an LLM request under callgrind; the same CPU under load).
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    let catalog = Arc::new(CatalogStore::new());
    let upstreams = Arc::new(Upstreams::new(&config.mcp.servers, catalog));
    let audit = Arc::new(AuditLog::open(&config.audit)?);
    let metrics = Arc::new(Metrics::new());
    let links = Arc::new(ToolUseBook::new(config.llm.link_window));
    let counted = CountedState::open(&config)?;
    let llm = Arc::new(LlmEndpoint::new(
        &config,
        LlmServices {
            audit: audit.clone(),
            metrics: metrics.clone(),
            rate_limiter: counted.rate_limiter.clone(),
            spend: counted.spend.clone(),
            links: links.clone(),
        },
    ));
    let services = Services {
        upstreams: upstreams.clone(),
        audit: audit.clone(),
        metrics: metrics.clone(),
        rate_limiter: counted.rate_limiter.clone(),
        links,
        code_mode: Arc::new(CodeMode::new(Pool::new(
            worker_command(),
            &config.code_mode,
        ))),
    };
    let code_mode = services.code_mode.clone();
    let mcp = Arc::new(McpEndpoint::new(
        &config,
        services,
        &session_secret(),
        config.mcp.session_ttl,
    ));

    let _ended_sessions = counted.share_ended_sessions(&mcp);

    let proxy = pingora::proxy::http_proxy(
        &server.configuration,
        Gateway::new(mcp.clone(), llm.clone(), config.limits.clone()),
    );
    let limits = connections::Limits {
        max_connections: config.limits.max_connections,
        header_timeout: config.limits.header_timeout,
    };
    let gauges = connections::Gauges {
        open: metrics.open_connections.clone(),
        refused: metrics.refused_connections.clone(),
    };
    let mut gateway = Service::new(
        "sluice".to_string(),
        connections::Guarded::new(proxy, limits, gauges),
    );
    let mut certificates = Vec::new();
    for listener in &config.listen {
        let address = listener.address.to_string();
        match &listener.tls {
            None => gateway.add_tcp(&address),
            Some(tls) => {
                let tls_error = |source| StartError::Tls {
                    address: address.clone(),
                    source,
                };
                let certificate = Certificate::load(tls).map_err(tls_error)?;
                let settings = certificate.settings(tls).map_err(tls_error)?;
                gateway.add_tls_with_settings(&address, None, settings);
                certificates.push(certificate);
            }
        }
        let scheme = if listener.tls.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!("serving MCP on {scheme}://{address}/mcp");
    }
    if !certificates.is_empty() {
        gateway
            .endpoints()
            .set_pre_tls_callback(Arc::new(PlainHttpRefusal));
    }
    server.add_service(gateway);

    if let Some(admin) = &config.admin {
        let app = Admin::new(
            upstreams.clone(),
            metrics,
            counted.redis.clone(),
            admin.token.as_ref(),
        );
        let mut service = Service::new("sluice admin".to_string(), HttpServer::new_app(app));
        service.add_tcp(&admin.address.to_string());
        tracing::info!(
            "admin on http://{}/ (healthz, readyz, metrics)",
            admin.address
        );
        server.add_service(service);
    }

    server.add_service(background_service(
        "control",
        Control {
            upstreams,
            grace_period: config.grace_period,
            code_mode,
            mcp,
            llm,
            certificates,
            config_path: config_path.to_path_buf(),
        },
    ));
    server.run(RunArgs::default());
    // Every runtime has stopped: nothing records any more, so the audit log can be drained.
    audit.close();
    counted.close();
    tracing::info!("stopped");
    Ok(())
}

/// Where counted state lives: rate limits and spend in this process (spend persisted to
/// SQLite), or shared with the other instances through Redis, which also shares ended sessions.
struct CountedState {
    rate_limiter: Arc<dyn RateLimiter>,
    spend: Arc<dyn SpendStore>,
    sqlite: Option<Arc<SqliteStore>>,
    redis: Option<Arc<RedisShared>>,
    /// Redis's own runtime: its I/O never runs on the request threads.
    runtime: Option<tokio::runtime::Runtime>,
}

impl CountedState {
    fn open(config: &sluice_conf::Config) -> Result<Self, StartError> {
        if let Some(redis) = &config.state.redis {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("sluice-redis")
                .enable_all()
                .build()
                .map_err(|e| StartError::Runtime(e.to_string()))?;
            let shared = {
                let _entered = runtime.enter();
                RedisShared::start(redis)?
            };
            tracing::info!(
                "counted state (rate limits, spend, ended sessions) shared through Redis at {}",
                sluice_conf::redact_url(redis.url.expose())
            );
            return Ok(CountedState {
                rate_limiter: Arc::new(RedisRateLimiter::new(shared.clone())),
                spend: Arc::new(RedisSpend::new(shared.clone())),
                sqlite: None,
                redis: Some(shared),
                runtime: Some(runtime),
            });
        }
        // Spend is kept on disk only where model traffic is configured.
        let sqlite = if config.providers.is_empty() {
            None
        } else {
            Some(Arc::new(SqliteStore::open(&config.state.path)?))
        };
        let spend: Arc<dyn SpendStore> = match &sqlite {
            Some(store) => store.clone(),
            None => Arc::new(MemoryStore::new()),
        };
        Ok(CountedState {
            rate_limiter: Arc::new(LocalRateLimiter::new()),
            spend,
            sqlite,
            redis: None,
            runtime: None,
        })
    }

    /// With Redis: a DELETE here ends the session on every instance, and theirs here.
    fn share_ended_sessions(&self, mcp: &Arc<McpEndpoint>) -> Option<Arc<EndedSessions>> {
        let (redis, runtime) = (self.redis.as_ref()?, self.runtime.as_ref()?);
        let local = mcp.clone();
        let ended = {
            let _entered = runtime.enter();
            Arc::new(EndedSessions::new(
                redis.clone(),
                Arc::new(move |nonce, expires_at| local.session_ended_elsewhere(nonce, expires_at)),
            ))
        };
        let shared = ended.clone();
        mcp.sessions().on_end(Arc::new(move |nonce, expires_at| {
            shared.end(nonce, expires_at)
        }));
        Some(ended)
    }

    /// Write what is pending (spend to SQLite) once nothing counts any more.
    fn close(self) {
        if let Some(store) = self.sqlite {
            store.close();
        }
        if let Some(runtime) = self.runtime {
            // Give the last deltas a moment to reach Redis.
            runtime.shutdown_timeout(std::time::Duration::from_millis(500));
        }
    }
}

/// Runs the upstream supervisors and applies SIGHUP reloads, on the background runtime.
struct Control {
    upstreams: Arc<Upstreams>,
    grace_period: std::time::Duration,
    code_mode: Arc<CodeMode>,
    mcp: Arc<McpEndpoint>,
    llm: Arc<LlmEndpoint>,
    certificates: Vec<Arc<Certificate>>,
    config_path: PathBuf,
}

impl Control {
    fn reload(&self) {
        for certificate in &self.certificates {
            match certificate.reload() {
                Ok(()) => tracing::info!(
                    "TLS certificate {} reloaded",
                    certificate.cert_path().display()
                ),
                Err(e) => {
                    tracing::error!("TLS certificate reload refused, the current one is kept: {e}")
                }
            }
        }
        match sluice_conf::load(&self.config_path) {
            Ok(config) => {
                self.mcp.reload(&config);
                self.llm.reload(&config);
                let changes = self.upstreams.apply(&config.mcp.servers);
                if !changes.is_empty() {
                    tracing::info!(
                        added = ?changes.added,
                        removed = ?changes.removed,
                        restarted = ?changes.replaced,
                        "MCP servers changed"
                    );
                }
                tracing::info!("configuration reloaded from {}", self.config_path.display());
            }
            Err(e) => tracing::error!("configuration reload refused, the running one is kept: {e}"),
        }
    }
}

#[async_trait]
impl BackgroundService for Control {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.upstreams.start();
        self.code_mode.pool().warm();
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP, reload is off: {e}");
                None
            }
        };
        loop {
            tokio::select! {
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => self.reload(),
                _ = shutdown.changed() => {
                    // Requests still in flight finish within the grace period, on the
                    // upstreams: they are stopped when it is over.
                    tokio::time::sleep(self.grace_period).await;
                    self.upstreams.stop();
                    return;
                }
            }
        }
    }
}

/// Code Mode workers are this binary, started as `sluice code-worker`.
fn worker_command() -> WorkerCommand {
    WorkerCommand {
        program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("sluice")),
        args: vec!["code-worker".into()],
    }
}

fn session_secret() -> Vec<u8> {
    match std::env::var(SESSION_SECRET_ENV) {
        Ok(secret) if secret.len() >= 16 => secret.into_bytes(),
        Ok(_) => {
            tracing::warn!(
                "{SESSION_SECRET_ENV} is shorter than 16 bytes; using a random secret instead"
            );
            random_secret()
        }
        Err(_) => {
            tracing::warn!(
                "{SESSION_SECRET_ENV} is not set: sessions will not survive a restart nor be shared between instances"
            );
            random_secret()
        }
    }
}

fn random_secret() -> Vec<u8> {
    let mut secret = vec![0u8; 32];
    rand::fill(&mut secret[..]);
    secret
}
