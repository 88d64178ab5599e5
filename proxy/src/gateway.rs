//! `Gateway`: Sluice's `ProxyHttp`. `request_filter` routes a request by path to its handler in
//! `filters`; routes that Sluice answers itself end there. Routes that proxy to a peer (LLM
//! providers, the hot path to Streamable HTTP tool servers) will use `upstream_peer` and the
//! response phases.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use sluice_conf::Limits;
use sluice_filters::llm::LlmEndpoint;
use sluice_filters::llm::api::Api;
use sluice_filters::mcp::transport;
use sluice_filters::mcp::{McpEndpoint, Request, Response};

use crate::llm::{AttemptCtx, FastPath, Served};
use crate::respond;

/// What a request is for.
#[derive(Clone, Copy)]
enum Route {
    Mcp,
    Llm(Api),
    NotFound,
}

impl Route {
    /// The `route` label of the request metrics.
    fn label(self) -> &'static str {
        match self {
            Route::Mcp => "mcp",
            Route::Llm(api) => api.label(),
            Route::NotFound => "not_found",
        }
    }
}

/// What earlier phases learned about a request, for the later ones.
pub struct RequestCtx {
    started: Instant,
    route: Route,
    upstream_time: Option<Duration>,
    /// Set on the subrequests that make LLM attempts, and on a main session that makes them
    /// itself (see [`crate::llm`]).
    attempt: Option<Box<AttemptCtx>>,
    /// An LLM request whose attempts run on this session.
    fast: Option<Box<FastPath>>,
}

fn route(path: &str) -> Route {
    match path {
        "/mcp" | "/mcp/" => Route::Mcp,
        _ => Api::from_path(path).map_or(Route::NotFound, Route::Llm),
    }
}

pub struct Gateway {
    mcp: Arc<McpEndpoint>,
    llm: Arc<LlmEndpoint>,
    limits: Limits,
}

impl Gateway {
    pub fn new(mcp: Arc<McpEndpoint>, llm: Arc<LlmEndpoint>, limits: Limits) -> Self {
        Gateway { mcp, llm, limits }
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
        let too_large = || transport::too_large(limit);
        let body = match read_body(session, limit, self.limits.body_timeout, too_large).await {
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
        // The pipeline reads the head while the connection is watched for the client going
        // away (which drops the pipeline's future and so cancels its upstream call).
        // The head is lent to it (taken, not cloned: a clone costs a map and an allocation
        // per header) and put back before anything else reads it.
        let empty = RequestHeader::from(http::Request::new(()).into_parts().0);
        let head = std::mem::replace(session.req_header_mut(), empty);
        let handled = self.mcp.serve(
            admission,
            Request {
                method: &head.method,
                headers: &head.headers,
                body: &body,
            },
        );
        let answered = tokio::select! {
            response = handled => Some(response),
            _ = session.downstream_session.read_body_or_idle(true) => None,
        };
        *session.req_header_mut() = head;
        let Some(response) = answered else {
            // The client went away: dropping the pipeline cancelled its upstream call.
            session.set_keepalive(None);
            return Ok(());
        };
        ctx.upstream_time = response.upstream_time;
        respond::write(session, response).await
    }
}

/// Why there is no body to serve.
pub(crate) enum NoBody {
    /// Too large or too slow: the answer to send.
    Refused(Response),
    /// The connection broke while the body was being read.
    ClientGone,
}

/// Read a request body of at most `limit` bytes within `timeout`; `too_large` makes the answer
/// to a larger one (only then: building it costs a formatted message).
pub(crate) async fn read_body(
    session: &mut Session,
    limit: usize,
    timeout: Duration,
    too_large: impl FnOnce() -> Response,
) -> std::result::Result<BytesMut, NoBody> {
    let read = async {
        let mut body = BytesMut::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) if body.len() + chunk.len() > limit => {
                    return Err(NoBody::Refused(too_large()));
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
    let line = head.method.as_str().len() + head.raw_path().len() + 12;
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
            attempt: None,
            fast: None,
        }
    }

    /// The LLM routes run their attempts as subrequests.
    fn allow_spawning_subrequest(&self, _session: &Session, _ctx: &Self::CTX) -> bool {
        true
    }

    /// Route by path: `/mcp` and refusals are answered here; an LLM request is answered by
    /// the subrequests it spawns, which go on to the proxy phases below.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        if session.subrequest_ctx.is_some() {
            ctx.attempt = crate::llm::take_attempt(session);
            if ctx.attempt.is_none() {
                return Error::e_explain(
                    ErrorType::InternalError,
                    "a subrequest without an attempt",
                );
            }
            return Ok(false);
        }
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
        // The handlers' futures are boxed: inline, they would make this future (which Pingora
        // boxes and so copies whole for every request) several kilobytes large.
        match ctx.route {
            Route::Mcp => Box::pin(self.serve_mcp(session, ctx)).await?,
            Route::Llm(api) if self.llm.is_configured() => {
                let served = crate::llm::serve(&self.llm, session, api, self.limits.body_timeout);
                match Box::pin(served).await? {
                    Served::Answered(upstream_time) => ctx.upstream_time = upstream_time,
                    Served::Proxy(fast, attempt) => {
                        ctx.fast = Some(fast);
                        ctx.attempt = Some(attempt);
                        return Ok(false);
                    }
                }
            }
            Route::Llm(_) | Route::NotFound => {
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
        if let Some(fast) = ctx.fast.take() {
            ctx.upstream_time = Some(fast.finish(&self.llm, ctx.attempt.as_deref(), status));
        } else if ctx.attempt.is_some() {
            // An LLM attempt's subrequest: the request it serves is counted.
            return;
        }
        self.mcp.metrics().observe_request(
            ctx.route.label(),
            status,
            ctx.started.elapsed(),
            ctx.upstream_time,
        );
    }

    /// An LLM attempt's provider; after a failed attempt on the main session, the next one's.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        if let (Some(fast), Some(current)) = (ctx.fast.as_mut(), ctx.attempt.as_ref())
            && fast.is_falling_back()
        {
            match Box::pin(fast.advance(&self.llm, current)).await {
                Some(next) => ctx.attempt = Some(next),
                None => {
                    return Error::e_explain(
                        ErrorType::ConnectProxyFailure,
                        "no provider of the route could be tried",
                    );
                }
            }
        }
        match &ctx.attempt {
            Some(attempt) => Ok(attempt.peer()),
            None => Error::e_explain(ErrorType::InternalError, "no route proxies this request"),
        }
    }

    /// The provider's path, headers and credentials; never the client's key.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        match &ctx.attempt {
            Some(attempt) => attempt.rewrite_request(upstream_request),
            None => Ok(()),
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(attempt) = &ctx.attempt {
            attempt.request_body(body, end_of_stream);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // On the main session, a failure another target may repair is retried by Pingora,
        // before anything reaches the client.
        let status = upstream_response.status.as_u16();
        if let (Some(fast), Some(attempt)) = (ctx.fast.as_mut(), ctx.attempt.as_ref())
            && attempt.may_fall_back()
            && sluice_filters::llm::retryable(status)
        {
            attempt.failing_over(Some(status), None);
            fast.fall_back();
            let mut e = Error::explain(
                ErrorType::HTTPStatus(status),
                "the provider failed; the next target is tried",
            );
            e.set_retry(true);
            return Err(e);
        }
        match &mut ctx.attempt {
            Some(attempt) => attempt.response_head(upstream_response),
            None => Ok(()),
        }
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        if let Some(attempt) = &mut ctx.attempt {
            attempt.response_body(body, end_of_stream);
        }
        Ok(None)
    }

    /// A connection that could not be made goes to the next target when there is one.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<pingora::Error>,
    ) -> Box<pingora::Error> {
        if let (Some(fast), Some(attempt)) = (ctx.fast.as_mut(), ctx.attempt.as_ref())
            && attempt.may_fall_back()
        {
            attempt.failing_over(None, Some(&e));
            fast.fall_back();
            e.set_retry(true);
        }
        e
    }

    /// An attempt on the main session that failed before its answer started goes to the next
    /// target when there is one; other requests keep Pingora's policy (no retry of a POST).
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<pingora::Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<pingora::Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if let (Some(fast), Some(attempt)) = (ctx.fast.as_mut(), ctx.attempt.as_ref()) {
            let retry = fast.is_falling_back()
                || (attempt.may_fall_back() && session.response_written().is_none());
            if retry && !fast.is_falling_back() {
                attempt.failing_over(None, Some(&e));
                fast.fall_back();
            }
            e.set_retry(retry);
            return e;
        }
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    /// An LLM attempt that failed answers in the client's format, naming the provider.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &pingora::Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let error_code = match &mut ctx.attempt {
            Some(attempt) => attempt.failed(session, e).await,
            None => {
                let _ = session.respond_error(500).await;
                500
            }
        };
        FailToProxy {
            error_code,
            can_reuse_downstream: false,
        }
    }
}
