//! Assembling the Pingora server: listeners, the gateway service, the admin service and the
//! background service that keeps upstream MCP servers connected.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};
use pingora::services::listening::Service;
use sluice_filters::catalog::CatalogStore;
use sluice_filters::mcp::{McpEndpoint, Settings};
use sluice_filters::upstream::Upstreams;

use crate::admin::Admin;
use crate::gateway::Gateway;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] sluice_conf::ConfigError),
    #[error("cannot listen with TLS on {address}: {source}")]
    Tls {
        address: String,
        source: Box<pingora::Error>,
    },
}

/// The environment variable holding the secret that seals session ids.
const SESSION_SECRET_ENV: &str = "SLUICE_SESSION_SECRET";

/// Run the gateway until it is told to stop.
pub fn run(config_path: &Path) -> Result<Infallible, StartError> {
    let config = sluice_conf::load(config_path)?;

    let conf = ServerConf {
        threads: config.threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let catalog = Arc::new(CatalogStore::new());
    let upstreams = Arc::new(Upstreams::new(&config.mcp.servers, catalog));
    let mcp = Arc::new(McpEndpoint::new(
        Settings::from_config(&config),
        upstreams.clone(),
        &session_secret(),
        config.mcp.session_ttl,
    ));

    let mut gateway = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Gateway::new(mcp),
        "sluice",
    );
    for listener in &config.listen {
        let address = listener.address.to_string();
        match &listener.tls {
            None => gateway.add_tcp(&address),
            Some(tls) => gateway
                .add_tls(
                    &address,
                    &tls.cert.to_string_lossy(),
                    &tls.key.to_string_lossy(),
                )
                .map_err(|source| StartError::Tls {
                    address: address.clone(),
                    source,
                })?,
        }
        tracing::info!(
            "serving MCP on {}://{address}/mcp",
            if listener.tls.is_some() {
                "https"
            } else {
                "http"
            }
        );
    }
    server.add_service(gateway);

    if let Some(admin) = &config.admin {
        let mut service = Service::new(
            "sluice admin".to_string(),
            HttpServer::new_app(Admin::new(upstreams.clone())),
        );
        service.add_tcp(&admin.address.to_string());
        tracing::info!("admin on http://{}/ (healthz, readyz)", admin.address);
        server.add_service(service);
    }

    server.add_service(background_service(
        "upstreams",
        UpstreamSupervisors { upstreams },
    ));
    server.run_forever()
}

/// Runs the upstream supervisors on the background service's runtime.
struct UpstreamSupervisors {
    upstreams: Arc<Upstreams>,
}

#[async_trait]
impl BackgroundService for UpstreamSupervisors {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.upstreams.start();
        let _ = shutdown.changed().await;
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
    rand_fill(&mut secret);
    secret
}

fn rand_fill(buf: &mut [u8]) {
    use std::io::Read;
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(buf);
    }
}
