//! Limits below HTTP, on each client connection: at most `limits.max_connections` open at once,
//! and a request head that must arrive whole within `limits.header_timeout` of its first byte.
//!
//! Pingora times out each read, not a whole request head, so a client that trickles one byte
//! every few seconds (slowloris) would hold its connection for ever; with a connection cap,
//! a few hundred such clients would lock everyone else out. [`Guarded`] wraps the proxy
//! application and every new connection's stream: it counts the connection while it lives,
//! and watches HTTP/1 request heads for their end (`\r\n\r\n`), failing the read with a timeout
//! when the head is late. HTTP/2 heads are framed and are left to Pingora's own limits.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The connection limits, from `limits:` in the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// The gauge and counter the guard keeps up to date.
#[derive(Clone)]
pub struct Gauges {
    pub open: IntGauge,
    pub refused: IntCounter,
}

/// A `ServerApp` whose connections are counted and whose request heads are timed.
pub struct Guarded<A> {
    inner: Arc<A>,
    limits: Limits,
    open: Arc<AtomicUsize>,
    gauges: Gauges,
}

impl<A> Guarded<A> {
    pub fn new(inner: A, limits: Limits, gauges: Gauges) -> Self {
        Guarded {
            inner: Arc::new(inner),
            limits,
            open: Arc::default(),
            gauges,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A kept-alive connection comes back already counted.
        if stream.as_any().is::<Counted>() {
            return self.inner.process_new(stream, shutdown).await;
        }
        let Some(slot) = Slot::take(&self.open, self.limits.max_connections, &self.gauges) else {
            self.gauges.refused.inc();
            refuse(stream).await;
            return None;
        };
        let http1 = stream.selected_alpn_proto() != Some(ALPN::H2);
        let head_timeout = http1.then_some(self.limits.header_timeout);
        let counted: Stream = Box::new(Counted::new(stream, slot, head_timeout));
        self.inner.process_new(counted, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Tell a client over the limit why it is turned away (on HTTP/1; an HTTP/2 client, which
/// would need frames, is closed).
async fn refuse(mut stream: Stream) {
    if stream.selected_alpn_proto() == Some(ALPN::H2) {
        return;
    }
    const BODY: &str = "the gateway is at its maximum of open connections (`limits.max_connections`); retry shortly\n";
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = AsyncWriteExt::shutdown(&mut stream).await;
    })
    .await;
}

/// One of the `max_connections` places, given back when dropped.
struct Slot {
    open: Arc<AtomicUsize>,
    gauge: IntGauge,
}

impl Slot {
    fn take(open: &Arc<AtomicUsize>, max: usize, gauges: &Gauges) -> Option<Slot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()?;
        gauges.open.inc();
        Some(Slot {
            open: open.clone(),
            gauge: gauges.open.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

/// Where an HTTP/1 connection is in its current request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request head; `started` once its first byte came.
    Head { started: bool },
    /// The head is complete: the body and the response follow.
    Rest,
}

/// A client connection that holds its [`Slot`] and watches its request heads.
struct Counted {
    inner: Stream,
    _slot: Slot,
    /// `None` on HTTP/2.
    head_timeout: Option<Duration>,
    phase: Phase,
    /// The last three bytes read, to find `\r\n\r\n` across reads.
    tail: [u8; 3],
    deadline: Pin<Box<Sleep>>,
}

/// What ends a request head.
const HEAD_END: &[u8] = b"\r\n\r\n";

/// A searcher for [`HEAD_END`], built once: `memmem::find` builds one on every call.
static HEAD_END_FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(HEAD_END));

impl Counted {
    fn new(inner: Stream, slot: Slot, head_timeout: Option<Duration>) -> Self {
        Counted {
            inner,
            _slot: slot,
            head_timeout,
            phase: Phase::Head { started: false },
            tail: [0; 3],
            deadline: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    /// Follow the request head through the bytes just read.
    fn saw(&mut self, bytes: &[u8]) {
        let (Some(timeout), Phase::Head { started }) = (self.head_timeout, self.phase) else {
            return;
        };
        if bytes.is_empty() {
            return;
        }
        if !started {
            self.deadline.as_mut().reset(Instant::now() + timeout);
            self.phase = Phase::Head { started: true };
        }
        // The end of the head may straddle the previous read.
        let mut seam = [0u8; 6];
        let head = bytes.len().min(3);
        seam[..3].copy_from_slice(&self.tail);
        seam[3..3 + head].copy_from_slice(&bytes[..head]);
        if seam[..3 + head].windows(4).any(|w| w == HEAD_END)
            || HEAD_END_FINDER.find(bytes).is_some()
        {
            self.phase = Phase::Rest;
        }
        let keep = bytes.len().min(3);
        self.tail.rotate_left(keep);
        self.tail[3 - keep..].copy_from_slice(&bytes[bytes.len() - keep..]);
    }
}

impl fmt::Debug for Counted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counted")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.phase == (Phase::Head { started: true })
            && let Some(timeout) = this.head_timeout
            && this.deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("request head not received within {timeout:?} (`limits.header_timeout`)"),
            )));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            this.saw(&buf.filled()[before..]);
        }
        read
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // An answer is going out: the next bytes read start the next request.
        if this.phase == Phase::Rest {
            this.phase = Phase::Head { started: false };
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.phase == Phase::Rest {
            this.phase = Phase::Head { started: false };
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Counted {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(self.inner.as_mut()).await
    }
}

impl UniqueID for Counted {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Counted {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Counted {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Counted {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Counted {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Counted {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
