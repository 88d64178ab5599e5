//! How a message is POSTed to an HTTP upstream, and its reply, whichever client carried it.
//!
//! Plain HTTP to an IP address (the usual case: a tool server beside the gateway) goes out on
//! Pingora's own connector and connection pool, written and read by the calling task itself.
//! reqwest's pooled client (hyper) hands each request to a connection task over a channel and
//! the answer back over another: two task wake-ups per call, the largest single part of
//! what Sluice cost over the bare Pingora floor (perf/RESULTS.md, 2026-12-02). HTTPS, host
//! names and URLs with credentials in them stay on reqwest, which verifies certificates against
//! the system roots and `ca_file`, resolves names per connection and sends userinfo.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use pingora_core::connectors::ConnectorOptions;
use pingora_core::connectors::http::v1::Connector;
use pingora_core::protocols::http::v1::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue};

use super::http::error_chain;
use crate::protocol::SESSION_HEADER;

/// How long an idle pooled connection is kept.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long opening a connection may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pooled connections that may turn out closed (the upstream timed them out) before the
/// request is sent on a new one.
const STALE_TRIES: usize = 3;
/// Bounds on reading what is left of a body for its connection's sake (see [`drain`]).
const DRAIN_CHUNKS: usize = 8;
const DRAIN_BYTES: usize = 64 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(1);

tokio::task_local! {
    /// Set while a client's request is served (see [`serve_request`]).
    static SERVING_A_REQUEST: ();
}

/// Run `request` as the serving of a client's request: its upstream connections come from, and
/// go back to, the pool of the runtime that serves requests. A connection stays registered with
/// the runtime that opened it: one that a background sync opened (on Pingora's background
/// runtime) and that a request then reused would have that runtime's thread woken for every
/// read and then wake a request thread in turn, two thread wake-ups per call (at a low rate,
/// every call used such a connection; perf/RESULTS.md, 2026-12-02).
///
/// Not an `async fn`: that would hold `request` twice (as its argument and inside the scope),
/// doubling the future that every request's is built from.
pub fn serve_request<F: std::future::Future>(
    request: F,
) -> impl std::future::Future<Output = F::Output> {
    SERVING_A_REQUEST.scope((), request)
}

fn serving_a_request() -> bool {
    SERVING_A_REQUEST.try_with(|_| ()).is_ok()
}

/// What Sluice reads of an upstream's reply: the head's few facts, and the body as it arrives.
pub(crate) struct Reply {
    pub status: u16,
    /// `Content-Type: text/event-stream`.
    pub event_stream: bool,
    pub content_length: Option<u64>,
    pub session_id: Option<HeaderValue>,
    /// Errors are messages without the upstream's URL.
    pub body: BoxStream<'static, Result<Bytes, String>>,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn from_reqwest(mut response: reqwest::Response) -> Reply {
        let headers = std::mem::take(response.headers_mut());
        Reply {
            status: response.status().as_u16(),
            event_stream: is_event_stream(&headers),
            content_length: response.content_length(),
            session_id: headers.get(SESSION_HEADER).cloned(),
            body: response
                .bytes_stream()
                .map(|chunk| chunk.map_err(error_chain))
                .boxed(),
        }
    }
}

/// Read what is left of a body whose reader has what it needed, so that its connection can be
/// reused: at once when it has arrived (the usual case: an upstream ends its event stream right
/// after the answer), else in the background for at most a second and 64 KB.
pub(crate) fn drain(mut body: BoxStream<'static, Result<Bytes, String>>) {
    for _ in 0..DRAIN_CHUNKS {
        match body.next().now_or_never() {
            Some(Some(Ok(_))) => {}
            Some(_) => return,
            None => break,
        }
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let drained = async {
            let mut left = DRAIN_BYTES;
            while let Some(Ok(chunk)) = body.next().await {
                left = left.checked_sub(chunk.len())?;
            }
            Some(())
        };
        let _ = tokio::time::timeout(DRAIN_TIME, drained).await;
    });
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"))
}

/// The client that carries an upstream's POSTs.
pub(crate) enum Poster {
    Pingora(Arc<PingoraPoster>),
    Reqwest {
        client: reqwest::Client,
        url: reqwest::Url,
    },
}

impl Poster {
    /// Pingora's connector where the URL allows it (see the module's note), reqwest otherwise.
    /// `headers` are the configured ones, sent with every request.
    pub fn new(
        client: reqwest::Client,
        url: reqwest::Url,
        headers: &HeaderMap,
        pool_size: usize,
    ) -> Poster {
        match PingoraPoster::for_url(&url, headers, pool_size) {
            Some(poster) => Poster::Pingora(Arc::new(poster)),
            None => Poster::Reqwest { client, url },
        }
    }

    /// POST `body` (JSON) with `headers` besides the configured ones.
    pub async fn post(
        &self,
        headers: &[(HeaderName, HeaderValue)],
        body: Vec<u8>,
    ) -> Result<Reply, String> {
        match self {
            // Boxed: Pingora's connector nests deep enough that the callers' futures
            // would otherwise pass the compiler's recursion limit.
            Poster::Pingora(poster) => poster.post(headers, body).boxed().await,
            Poster::Reqwest { client, url } => {
                let mut request = client
                    .post(url.clone())
                    .header(reqwest::header::ACCEPT, super::http::ACCEPT_BOTH)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body);
                for (name, value) in headers {
                    request = request.header(name.clone(), value.clone());
                }
                let response = request.send().await.map_err(error_chain)?;
                Ok(Reply::from_reqwest(response))
            }
        }
    }
}

/// POSTs on Pingora's HTTP/1.1 connector and pool.
pub(crate) struct PingoraPoster {
    connector: Connector,
    /// The upstream as requests reach it; `background` is the same upstream in another pool
    /// (see [`serve_request`]).
    peer: HttpPeer,
    background: HttpPeer,
    /// Path and query, parsed once.
    uri: http::Uri,
    /// `Host`, then the configured headers and the fixed ones, sent with every request.
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl PingoraPoster {
    /// `None` unless the URL is `http://` to an IP address without userinfo.
    fn for_url(url: &reqwest::Url, configured: &HeaderMap, pool_size: usize) -> Option<Self> {
        if url.scheme() != "http" || !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        let host = url.host_str()?;
        let ip: IpAddr = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?;
        let address = SocketAddr::new(ip, url.port_or_known_default()?);
        let mut peer = HttpPeer::new(address, false, String::new());
        peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
        let mut background = peer.clone();
        background.group_key = 1;
        let host = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let mut headers = vec![(HOST, HeaderValue::try_from(host).ok()?)];
        headers.extend(configured.iter().map(|(n, v)| (n.clone(), v.clone())));
        headers.push((
            reqwest::header::ACCEPT,
            HeaderValue::from_static(super::http::ACCEPT_BOTH),
        ));
        headers.push((CONTENT_TYPE, HeaderValue::from_static("application/json")));
        let path = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        };
        let uri = http::Uri::try_from(path).ok()?;
        Some(PingoraPoster {
            connector: Connector::new(Some(ConnectorOptions::new(pool_size.max(1)))),
            peer,
            background,
            uri,
            headers,
        })
    }

    async fn post(
        self: &Arc<Self>,
        headers: &[(HeaderName, HeaderValue)],
        body: Vec<u8>,
    ) -> Result<Reply, String> {
        let pool = if serving_a_request() {
            Pool::Requests
        } else {
            Pool::Background
        };
        let mut tries = 0;
        loop {
            tries += 1;
            let (mut session, reused) = self
                .connector
                .get_http_session(self.peer(pool))
                .await
                .map_err(|e| format!("cannot connect: {e}"))?;
            match self.exchange(&mut session, headers, &body).await {
                Ok(()) => return Ok(self.reply(session, pool).await),
                // A pooled connection the upstream has closed meanwhile: nothing was read, so
                // the request is sent again on another one (as Pingora's proxy does).
                Err(_) if reused && tries < STALE_TRIES => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Write the request and read the reply's head.
    async fn exchange(
        &self,
        session: &mut HttpSession,
        headers: &[(HeaderName, HeaderValue)],
        body: &[u8],
    ) -> Result<(), String> {
        // Built as `http` parts: Pingora's `append_header` would parse every name again.
        let (mut request, ()) = http::Request::new(()).into_parts();
        request.method = http::Method::POST;
        request.uri = self.uri.clone();
        request
            .headers
            .reserve(self.headers.len() + headers.len() + 1);
        for (name, value) in self.headers.iter().chain(headers) {
            request.headers.append(name.clone(), value.clone());
        }
        request
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        session
            .write_request_header(Box::new(RequestHeader::from(request)))
            .await
            .map_err(|e| format!("sending the request failed: {e}"))?;
        session
            .write_body(body)
            .await
            .map_err(|e| format!("sending the request failed: {e}"))?;
        session
            .finish_body()
            .await
            .map_err(|e| format!("sending the request failed: {e}"))?;
        // Informational answers (`100 Continue`) come before the real one.
        loop {
            session
                .read_response()
                .await
                .map_err(|e| format!("reading the answer failed: {e}"))?;
            match session.get_status() {
                Some(status) if status.is_informational() => continue,
                _ => return Ok(()),
            }
        }
    }

    /// The reply, its body read as it is asked for; the connection goes back to the pool as
    /// soon as the body is complete, even if the reader stops before the end.
    async fn reply(self: &Arc<Self>, mut session: HttpSession, pool: Pool) -> Reply {
        let (status, event_stream, content_length, session_id) = match session.resp_header() {
            Some(head) => (
                head.status.as_u16(),
                is_event_stream(&head.headers),
                head.headers
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok()),
                head.headers.get(SESSION_HEADER).cloned(),
            ),
            None => (502, false, None, None),
        };
        let body = if session.is_body_done() {
            self.release(session, pool).await;
            futures::stream::empty().boxed()
        } else {
            let poster = self.clone();
            futures::stream::unfold(Some(session), move |state| {
                let poster = poster.clone();
                async move {
                    let mut session = state?;
                    match session.read_body_bytes().await {
                        Ok(Some(chunk)) if session.is_body_done() => {
                            poster.release(session, pool).await;
                            Some((Ok(chunk), None))
                        }
                        Ok(Some(chunk)) => Some((Ok(chunk), Some(session))),
                        Ok(None) => {
                            poster.release(session, pool).await;
                            None
                        }
                        Err(e) => Some((Err(format!("reading the answer failed: {e}")), None)),
                    }
                }
            })
            .boxed()
        };
        Reply {
            status,
            event_stream,
            content_length,
            session_id,
            body,
        }
    }

    async fn release(&self, session: HttpSession, pool: Pool) {
        self.connector
            .release_http_session(session, self.peer(pool), Some(IDLE_TIMEOUT))
            .await;
    }

    fn peer(&self, pool: Pool) -> &HttpPeer {
        match pool {
            Pool::Requests => &self.peer,
            Pool::Background => &self.background,
        }
    }
}

/// Which of an upstream's connection pools a POST uses (see [`serve_request`]).
#[derive(Debug, Clone, Copy)]
enum Pool {
    Requests,
    Background,
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_core::upstreams::peer::Peer;

    fn poster(url: &str) -> Option<PingoraPoster> {
        let url = reqwest::Url::parse(url).expect("url");
        PingoraPoster::for_url(&url, &HeaderMap::new(), 8)
    }

    #[test]
    fn plain_http_to_an_address_goes_on_pingora() {
        let p = poster("http://127.0.0.1:8080/mcp?token=x").expect("pingora");
        assert_eq!(p.uri, "/mcp?token=x");
        assert_eq!(p.headers[0].1, "127.0.0.1:8080");
        let p = poster("http://[::1]/mcp").expect("pingora");
        assert_eq!(p.headers[0].1, "[::1]");
    }

    #[tokio::test]
    async fn requests_and_background_work_use_separate_pools() {
        assert!(!serving_a_request());
        assert!(serve_request(async { serving_a_request() }).await);
        let p = poster("http://127.0.0.1:8080/mcp").expect("pingora");
        assert_ne!(
            p.peer(Pool::Requests).reuse_hash(),
            p.peer(Pool::Background).reuse_hash()
        );
    }

    #[test]
    fn tls_names_and_credentials_stay_on_reqwest() {
        assert!(poster("https://127.0.0.1:8443/mcp").is_none());
        assert!(poster("http://localhost:8080/mcp").is_none());
        assert!(poster("http://user:pw@127.0.0.1:8080/mcp").is_none());
    }
}
