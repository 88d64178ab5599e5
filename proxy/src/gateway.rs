//! `Gateway`: Sluice's `ProxyHttp`. `request_filter` routes a request by path to its handler in
//! `filters`; routes that Sluice answers itself end there. Routes that proxy to a peer (LLM
//! providers, the hot path to Streamable HTTP tool servers) will use `upstream_peer` and the
//! response phases.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use sluice_filters::mcp::transport;
use sluice_filters::mcp::{McpEndpoint, Request};

use crate::respond;

/// What a request is for.
#[derive(Clone, Copy)]
enum Route {
    Mcp,
    NotFound,
}

impl Route {
    /// The `route` label of the request metrics.
    fn label(self) -> &'static str {
        match self {
            Route::Mcp => "mcp",
            Route::NotFound => "not_found",
        }
    }
}

/// What earlier phases learned about a request, for the later ones.
pub struct RequestCtx {
    started: Instant,
    route: Route,
    upstream_time: Option<Duration>,
}

fn route(path: &str) -> Route {
    match path {
        "/mcp" | "/mcp/" => Route::Mcp,
        _ => Route::NotFound,
    }
}

pub struct Gateway {
    mcp: Arc<McpEndpoint>,
}

impl Gateway {
    pub fn new(mcp: Arc<McpEndpoint>) -> Self {
        Gateway { mcp }
    }

    async fn serve_mcp(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let head = session.req_header();
        if let Err(refusal) = self.mcp.check_head(&head.method, &head.headers) {
            // The body was not read: do not reuse the connection.
            session.set_keepalive(None);
            return respond::write(session, refusal).await;
        }
        let limit = self.mcp.max_body_bytes();
        let mut body = BytesMut::new();
        while let Some(chunk) = session.read_request_body().await? {
            if body.len() + chunk.len() > limit {
                session.set_keepalive(None);
                return respond::write(session, transport::too_large(limit)).await;
            }
            body.extend_from_slice(&chunk);
        }
        // The pipeline borrows the head while the connection is watched for the client going
        // away (which drops the pipeline's future and so cancels its upstream call).
        let head = session.req_header();
        let (method, headers) = (head.method.clone(), head.headers.clone());
        let handled = self.mcp.handle(Request {
            method: &method,
            headers: &headers,
            body: &body,
        });
        let response = tokio::select! {
            response = handled => response,
            // The client went away: dropping the pipeline cancels its upstream call.
            _ = session.downstream_session.read_body_or_idle(true) => {
                session.set_keepalive(None);
                return Ok(());
            }
        };
        ctx.upstream_time = response.upstream_time;
        respond::write(session, response).await
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx {
            started: Instant::now(),
            route: Route::NotFound,
            upstream_time: None,
        }
    }

    /// Route by path; every route served so far is answered here.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        ctx.started = Instant::now();
        ctx.route = route(session.req_header().uri.path());
        match ctx.route {
            Route::Mcp => self.serve_mcp(session, ctx).await?,
            Route::NotFound => {
                let path = session.req_header().uri.path().to_string();
                respond::write(session, respond::not_found(&path)).await?
            }
        }
        Ok(true)
    }

    /// Count the request once it is done.
    async fn logging(
        &self,
        session: &mut Session,
        _error: Option<&pingora::Error>,
        ctx: &mut Self::CTX,
    ) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        self.mcp.metrics().observe_request(
            ctx.route.label(),
            status,
            ctx.started.elapsed(),
            ctx.upstream_time,
        );
    }

    /// No route proxies to a peer yet.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        Error::e_explain(
            ErrorType::InternalError,
            "no route of Sluice proxies to a peer yet",
        )
    }
}
