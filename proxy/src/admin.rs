//! The admin listener: `/healthz` (the process is up), `/readyz` (every upstream has synced or
//! failed once), `/metrics` (Prometheus). Never serves client traffic.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use sluice_filters::metrics::Metrics;
use sluice_filters::upstream::Upstreams;

pub struct Admin {
    upstreams: Arc<Upstreams>,
    metrics: Arc<Metrics>,
}

impl Admin {
    pub fn new(upstreams: Arc<Upstreams>, metrics: Arc<Metrics>) -> Self {
        Admin { upstreams, metrics }
    }

    fn readiness(&self) -> (StatusCode, Vec<u8>) {
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
        let ready = self.upstreams.is_ready();
        let tools = self.upstreams.catalog().load().len();
        let body = serde_json::json!({ "ready": ready, "tools": tools, "servers": servers });
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, body.to_string().into_bytes())
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let (status, body, content_type) = match session.req_header().uri.path() {
            "/healthz" => (StatusCode::OK, b"ok\n".to_vec(), "text/plain"),
            "/readyz" => {
                let (status, body) = self.readiness();
                (status, body, "application/json")
            }
            "/metrics" => (
                StatusCode::OK,
                self.metrics.render(&self.upstreams),
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
