//! Providers' addresses, resolved at most every [`FRESH_FOR`] per host rather than per attempt.
//!
//! A provider is a host name (`api.anthropic.com`); looking it up is a call into the system
//! resolver on tokio's blocking pool, and without a cache every LLM attempt paid it (a thread
//! hop, and a DNS query when the system does not cache). The last good address is kept for
//! [`FRESH_FOR`]; after that the name is looked up again, and if the lookup fails an address up
//! to [`STALE_FOR`] old is used rather than failing the attempt. IP addresses are not looked up.
//! One entry per configured provider host: the map is bounded by the configuration.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a looked-up address is used without asking again.
pub const FRESH_FOR: Duration = Duration::from_secs(30);
/// How long an address may still be used when looking it up again fails.
pub const STALE_FOR: Duration = Duration::from_secs(300);

type Lookup = Arc<
    dyn Fn(String, u16) -> Pin<Box<dyn Future<Output = io::Result<SocketAddr>> + Send>>
        + Send
        + Sync,
>;

/// Host names to addresses, cached.
pub struct Resolver {
    lookup: Lookup,
    known: Mutex<HashMap<(String, u16), (SocketAddr, Instant)>>,
}

impl Default for Resolver {
    /// The system resolver (`getaddrinfo`), through tokio.
    fn default() -> Self {
        Resolver::with_lookup(|host, port| async move {
            tokio::net::lookup_host((host.as_str(), port))
                .await?
                .next()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the name has no address"))
        })
    }
}

impl Resolver {
    /// A resolver that looks names up with `lookup`.
    pub fn with_lookup<F, Fut>(lookup: F) -> Self
    where
        F: Fn(String, u16) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<SocketAddr>> + Send + 'static,
    {
        Resolver {
            lookup: Arc::new(move |host, port| Box::pin(lookup(host, port))),
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The address of `host:port`.
    pub async fn resolve(&self, host: &str, port: u16) -> io::Result<SocketAddr> {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let key = (host.to_string(), port);
        let known = self.lock().get(&key).copied();
        if let Some((address, at)) = known
            && at.elapsed() < FRESH_FOR
        {
            return Ok(address);
        }
        match (self.lookup)(host.to_string(), port).await {
            Ok(address) => {
                self.lock().insert(key, (address, Instant::now()));
                Ok(address)
            }
            Err(e) => match known {
                Some((address, at)) if at.elapsed() < STALE_FOR => {
                    tracing::warn!(
                        host,
                        "looking the provider up again failed ({e}); using its last address"
                    );
                    Ok(address)
                }
                _ => Err(e),
            },
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u16), (SocketAddr, Instant)>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting(fail: Arc<std::sync::atomic::AtomicBool>) -> (Resolver, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let resolver = Resolver::with_lookup(move |_host, port| {
            seen.fetch_add(1, Ordering::SeqCst);
            let failed = fail.load(Ordering::SeqCst);
            async move {
                if failed {
                    Err(io::Error::other("no DNS"))
                } else {
                    Ok(SocketAddr::from(([10, 0, 0, 1], port)))
                }
            }
        });
        (resolver, calls)
    }

    #[tokio::test]
    async fn a_name_is_looked_up_once_while_fresh() {
        let (resolver, calls) = counting(Arc::default());
        for _ in 0..3 {
            let address = resolver.resolve("api.example.com", 443).await.unwrap();
            assert_eq!(address, SocketAddr::from(([10, 0, 0, 1], 443)));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        resolver.resolve("api.example.com", 8443).await.unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "another port is another entry"
        );
    }

    #[tokio::test]
    async fn addresses_are_not_looked_up() {
        let (resolver, calls) = counting(Arc::default());
        let v4 = resolver.resolve("127.0.0.1", 80).await.unwrap();
        let v6 = resolver.resolve("[::1]", 80).await.unwrap();
        assert_eq!(v4, SocketAddr::from(([127, 0, 0, 1], 80)));
        assert!(v6.is_ipv6());
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_failed_lookup_uses_a_recent_address_and_fails_without_one() {
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (resolver, calls) = counting(fail.clone());
        resolver.resolve("api.example.com", 443).await.unwrap();
        // Age the entry past freshness, then let the lookup fail.
        {
            let mut known = resolver.lock();
            let entry = known
                .get_mut(&("api.example.com".to_string(), 443))
                .unwrap();
            entry.1 = Instant::now() - FRESH_FOR - Duration::from_secs(1);
        }
        fail.store(true, Ordering::SeqCst);
        let stale = resolver.resolve("api.example.com", 443).await.unwrap();
        assert_eq!(stale, SocketAddr::from(([10, 0, 0, 1], 443)));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "looked up again once stale"
        );
        assert!(resolver.resolve("other.example.com", 443).await.is_err());
    }
}
