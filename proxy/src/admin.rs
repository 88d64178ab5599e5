//! The admin listener: `/healthz` (the process is up), `/readyz` (every upstream has synced or
//! failed once), `/metrics` (Prometheus). Never serves client traffic.
//!
//! With `admin.token` set, `/metrics` and the detail of `/readyz` (server names, errors, pids)
//! need `Authorization: Bearer <token>`; `/healthz` and the readiness status itself stay open
//! for load balancers' probes.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use sha2::{Digest, Sha256};
use sluice_conf::Secret;
use sluice_filters::metrics::Metrics;
use sluice_filters::state::RedisShared;
use sluice_filters::upstream::Upstreams;

pub struct Admin {
    upstreams: Arc<Upstreams>,
    metrics: Arc<Metrics>,
    /// The Redis shared with other instances, if any.
    redis: Option<Arc<RedisShared>>,
    /// SHA-256 of the token, when one is required.
    token_hash: Option<[u8; 32]>,
}

impl Admin {
    pub fn new(
        upstreams: Arc<Upstreams>,
        metrics: Arc<Metrics>,
        redis: Option<Arc<RedisShared>>,
        token: Option<&Secret>,
    ) -> Self {
        Admin {
            upstreams,
            metrics,
            redis,
            token_hash: token.map(|t| Sha256::digest(t.expose().as_bytes()).into()),
        }
    }

    /// Whether the request may see what the token guards. Hashes are compared, so the time
    /// taken says nothing about the token.
    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(expected) = self.token_hash else {
            return true;
        };
        let presented = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| <[u8; 32]>::from(Sha256::digest(t.trim().as_bytes())));
        presented == Some(expected)
    }

    fn readiness(&self, detail: bool) -> (StatusCode, Vec<u8>) {
        let ready = self.upstreams.is_ready();
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        if !detail {
            return (
                status,
                serde_json::json!({ "ready": ready })
                    .to_string()
                    .into_bytes(),
            );
        }
        let servers: serde_json::Map<String, serde_json::Value> = self
            .upstreams
            .all()
            .iter()
            .map(|u| {
                let mut entry = serde_json::json!({ "health": u.health().as_str() });
                if let Some(error) = u.last_error() {
                    entry["error"] = error.into();
                }
                if let Some(pid) = u.pid() {
                    entry["pid"] = pid.into();
                }
                (u.name.to_string(), entry)
            })
            .collect();
        let tools = self.upstreams.catalog().load().len();
        let mut body = serde_json::json!({ "ready": ready, "tools": tools, "servers": servers });
        // Redis down does not make the instance unready: it serves on local counters.
        if let Some(redis) = &self.redis {
            let mut state =
                serde_json::json!({ "redis": if redis.is_up() { "up" } else { "down" } });
            if let Some(trouble) = redis.trouble() {
                state["error"] = trouble.into();
            }
            body["state"] = state;
        }
        (status, body.to_string().into_bytes())
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let authorized = self.authorized(session);
        let (status, body, content_type) = match session.req_header().uri.path() {
            "/healthz" => (StatusCode::OK, b"ok\n".to_vec(), "text/plain"),
            "/readyz" => {
                let (status, body) = self.readiness(authorized);
                (status, body, "application/json")
            }
            "/metrics" if !authorized => (
                StatusCode::UNAUTHORIZED,
                b"/metrics needs `Authorization: Bearer <admin.token>`\n".to_vec(),
                "text/plain",
            ),
            "/metrics" => (
                StatusCode::OK,
                {
                    if let Some(redis) = &self.redis {
                        self.metrics.redis_up.set(i64::from(redis.is_up()));
                    }
                    self.metrics.render(&self.upstreams)
                },
                "text/plain; version=0.0.4",
            ),
            _ => (
                StatusCode::NOT_FOUND,
                b"admin routes: /healthz /readyz /metrics\n".to_vec(),
                "text/plain",
            ),
        };
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_default()
    }
}
