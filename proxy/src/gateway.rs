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
use sluice_conf::Limits;
use sluice_filters::mcp::transport;
use sluice_filters::mcp::{McpEndpoint, Request, Response};

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
    limits: Limits,
}

impl Gateway {
    pub fn new(mcp: Arc<McpEndpoint>, limits: Limits) -> Self {
        Gateway { mcp, limits }
    }

    async fn serve_mcp(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let head = session.req_header();
        // The key is checked on the head: a caller without one makes Sluice read no body.
        let admission = match self.mcp.admit(&head.method, &head.headers) {
            Ok(admission) => admission,
            Err(refusal) => {
                // The body was not read: do not reuse the connection.
                session.set_keepalive(None);
                return respond::write(session, refusal).await;
            }
        };
        let limit = admission.max_body_bytes();
        let body = match read_body(session, limit, self.limits.body_timeout).await {
            Ok(body) => body,
            Err(NoBody::Refused(refusal)) => {
                session.set_keepalive(None);
                return respond::write(session, refusal).await;
            }
            // A client that leaves mid-body is nobody's error.
            Err(NoBody::ClientGone) => {
                session.set_keepalive(None);
                return Ok(());
            }
        };
        // The pipeline borrows the head while the connection is watched for the client going
        // away (which drops the pipeline's future and so cancels its upstream call).
        let head = session.req_header();
        let (method, headers) = (head.method.clone(), head.headers.clone());
        let handled = self.mcp.serve(
            admission,
            Request {
                method: &method,
                headers: &headers,
                body: &body,
            },
        );
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

/// Why there is no body to serve.
enum NoBody {
    /// Too large or too slow: the answer to send.
    Refused(Response),
    /// The connection broke while the body was being read.
    ClientGone,
}

/// Read a request body of at most `limit` bytes within `timeout`.
async fn read_body(
    session: &mut Session,
    limit: usize,
    timeout: Duration,
) -> std::result::Result<BytesMut, NoBody> {
    let read = async {
        let mut body = BytesMut::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) if body.len() + chunk.len() > limit => {
                    return Err(NoBody::Refused(transport::too_large(limit)));
                }
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => return Ok(body),
                Err(_) => return Err(NoBody::ClientGone),
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(read) => read,
        Err(_) => Err(NoBody::Refused(respond::too_slow(timeout))),
    }
}

/// The size of a request head as it came: request line and headers.
fn head_bytes(head: &pingora::http::RequestHeader) -> usize {
    let line = head.method.as_str().len() + head.uri.to_string().len() + 12;
    head.headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + line
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
        if head_bytes(session.req_header()) > self.limits.max_header_bytes {
            session.set_keepalive(None);
            respond::write(
                session,
                respond::header_too_large(self.limits.max_header_bytes),
            )
            .await?;
            return Ok(true);
        }
        // Pingora keeps an HTTP/1.1 connection open without limit; bound its idle time.
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(self.limits.idle_timeout.as_secs()));
        }
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
