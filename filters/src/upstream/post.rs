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
use pingora_core::connectors::{ConnectorOptions, TransportConnector};
use pingora_core::protocols::Stream;
use pingora_core::protocols::http::v1::client::HttpSession;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue};
use tokio::io::AsyncWriteExt;

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

/// `name: value\r\n`. Both are valid on the wire as they are: `HeaderValue` holds no CR or LF.
fn write_header(wire: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    wire.extend_from_slice(name.as_str().as_bytes());
    wire.extend_from_slice(b": ");
    wire.extend_from_slice(value.as_bytes());
    wire.extend_from_slice(b"\r\n");
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

/// POSTs on Pingora's connection pool, read by its HTTP/1.1 client.
///
/// The request is written by Sluice itself, head and body in one write: Pingora's client writes
/// and flushes the head before the body, two sends and two packets, and an upstream that reads
/// the head first has to wait for the second.
pub(crate) struct PingoraPoster {
    transport: TransportConnector,
    /// The upstream as requests reach it; `background` is the same upstream in another pool
    /// (see [`serve_request`]).
    peer: HttpPeer,
    background: HttpPeer,
    /// The request line, `Host`, the configured headers and the fixed ones: the beginning of
    /// every request's head, made once.
    head: Vec<u8>,
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
        let path = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        };
        // Parsed to be sure it is a request target: the URL parser escapes what a target
        // may not hold, and this is the check.
        let target = http::Uri::try_from(path).ok()?;
        let mut head = format!("POST {target} HTTP/1.1\r\n").into_bytes();
        let host = HeaderValue::try_from(host).ok()?;
        let fixed = [
            (
                reqwest::header::ACCEPT,
                HeaderValue::from_static(super::http::ACCEPT_BOTH),
            ),
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
        ];
        let all = std::iter::once((&HOST, &host))
            .chain(configured)
            .chain(fixed.iter().map(|(n, v)| (n, v)));
        for (name, value) in all {
            write_header(&mut head, name, value);
        }
        Some(PingoraPoster {
            transport: TransportConnector::new(Some(ConnectorOptions::new(pool_size.max(1)))),
            peer,
            background,
            head,
        })
    }

    /// The whole request: the fixed beginning of the head, `headers`, the length, `body`.
    fn request_bytes(&self, headers: &[(HeaderName, HeaderValue)], body: &[u8]) -> Vec<u8> {
        let mut wire = Vec::with_capacity(self.head.len() + 128 + body.len());
        wire.extend_from_slice(&self.head);
        for (name, value) in headers {
            write_header(&mut wire, name, value);
        }
        wire.extend_from_slice(b"content-length: ");
        wire.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        wire.extend_from_slice(b"\r\n\r\n");
        wire.extend_from_slice(body);
        wire
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
            let peer = self.peer(pool);
            let (stream, reused) = self
                .transport
                .get_stream(peer)
                .await
                .map_err(|e| format!("cannot connect: {e}"))?;
            match self.exchange(stream, peer, headers, &body).await {
                Ok(session) => return Ok(self.reply(session, pool).await),
                // A pooled connection the upstream has closed meanwhile: nothing was read, so
                // the request is sent again on another one (as Pingora's proxy does).
                Err(_) if reused && tries < STALE_TRIES => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Write the request and read the reply's head with Pingora's client.
    async fn exchange(
        &self,
        mut stream: Stream,
        peer: &HttpPeer,
        headers: &[(HeaderName, HeaderValue)],
        body: &[u8],
    ) -> Result<HttpSession, String> {
        let request = self.request_bytes(headers, body);
        async {
            stream.write_all(&request).await?;
            stream.flush().await
        }
        .await
        .map_err(|e| format!("sending the request failed: {e}"))?;
        let mut session = HttpSession::new_with_options(stream, peer);
        // Informational answers (`100 Continue`) come before the real one.
        loop {
            session
                .read_response()
                .await
                .map_err(|e| format!("reading the answer failed: {e}"))?;
            match session.get_status() {
                Some(status) if status.is_informational() => continue,
                _ => return Ok(session),
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

    /// Back to the pool if the connection may be used again (as Pingora's connector does).
    async fn release(&self, mut session: HttpSession, pool: Pool) {
        session.respect_keepalive();
        if let Some(stream) = session.reuse().await {
            let key = self.peer(pool).reuse_hash();
            self.transport
                .release_stream(stream, key, Some(IDLE_TIMEOUT));
        }
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
        assert!(
            p.head
                .starts_with(b"POST /mcp?token=x HTTP/1.1\r\nhost: 127.0.0.1:8080\r\n")
        );
        let p = poster("http://[::1]/mcp").expect("pingora");
        assert!(p.head.starts_with(b"POST /mcp HTTP/1.1\r\nhost: [::1]\r\n"));
    }

    #[test]
    fn a_request_is_its_head_then_its_body() {
        let url = reqwest::Url::parse("http://127.0.0.1:8080/mcp").expect("url");
        let mut configured = HeaderMap::new();
        configured.insert("x-team", HeaderValue::from_static("blue"));
        let p = PingoraPoster::for_url(&url, &configured, 8).expect("pingora");
        let session = (
            HeaderName::from_static("mcp-session-id"),
            HeaderValue::from_static("s-1"),
        );
        let wire = p.request_bytes(&[session], b"{\"jsonrpc\":\"2.0\"}");
        assert_eq!(
            String::from_utf8(wire).expect("utf-8"),
            "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1:8080\r\nx-team: blue\r\n\
             accept: application/json, text/event-stream\r\ncontent-type: application/json\r\n\
             mcp-session-id: s-1\r\ncontent-length: 17\r\n\r\n{\"jsonrpc\":\"2.0\"}"
        );
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
