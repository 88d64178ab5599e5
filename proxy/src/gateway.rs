//! `Gateway`: Sluice's `ProxyHttp`. `request_filter` routes a request by path to its handler in
//! `filters`; routes that Sluice answers itself end there. Routes that proxy to a peer (LLM
//! providers, the hot path to Streamable HTTP tool servers) will use `upstream_peer` and the
//! response phases.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use sluice_filters::mcp::transport;
use sluice_filters::mcp::{McpEndpoint, Request};

use crate::respond;

/// What a request is for.
enum Route {
    Mcp,
    NotFound,
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

    async fn serve_mcp(&self, session: &mut Session) -> Result<()> {
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
        let head = session.req_header();
        let response = self
            .mcp
            .handle(Request {
                method: &head.method,
                headers: &head.headers,
                body: &body,
            })
            .await;
        respond::write(session, response).await
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    /// Route by path; every route served so far is answered here.
    async fn request_filter(&self, session: &mut Session, _ctx: &mut Self::CTX) -> Result<bool> {
        match route(session.req_header().uri.path()) {
            Route::Mcp => self.serve_mcp(session).await?,
            Route::NotFound => {
                let path = session.req_header().uri.path().to_string();
                respond::write(session, respond::not_found(&path)).await?
            }
        }
        Ok(true)
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
