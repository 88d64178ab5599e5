//! Tests against a real `redis-server`, one per test on a free port; skipped (with a message)
//! when the binary is missing.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::ratelimit::RateLimiter;
use crate::state::test_clock::ManualClock;
use crate::state::{Period, Spend, SpendStore};

const SYNC: Duration = Duration::from_millis(20);
/// 2026-01-31T12:00:20Z: well inside a minute, so a held clock never crosses one.
const NOON_JAN_31_2026: u64 = 1_769_860_820;

/// A `redis-server` of one test, killed when dropped.
struct Server {
    port: u16,
    child: Option<Child>,
}

impl Server {
    /// `None` (and a message) when `redis-server` is not installed.
    fn start() -> Option<Server> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !installed {
            eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut server = Server { port, child: None };
        server.restart();
        Some(server)
    }

    /// Starts (again) on the same port, with nothing saved, and waits until it listens.
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn config(&self) -> sluice_conf::Redis {
        config(&format!("redis://127.0.0.1:{}/", self.port))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config(url: &str) -> sluice_conf::Redis {
    sluice_conf::Redis {
        url: sluice_conf::Secret::new(url),
        sync_interval: SYNC,
        key_prefix: "test".into(),
    }
}

fn start(server: &Server) -> Arc<RedisShared> {
    RedisShared::start(&server.config()).expect("start")
}

/// Polls `condition` for up to 20 seconds (reconnecting backs off to 5 s).
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn tokens(n: u64) -> Spend {
    Spend {
        requests: 1,
        tokens: n,
        cost_micros: 2 * n,
    }
}

fn nonce(n: u8) -> Nonce {
    [n; NONCE_LEN]
}

/// The ended sessions an instance heard of.
type Heard = Arc<Mutex<Vec<(Nonce, u64)>>>;

fn recorder() -> (Heard, OnEnded) {
    let heard = Arc::new(Mutex::new(Vec::new()));
    let sink = heard.clone();
    let on_ended: OnEnded = Arc::new(move |nonce, expires_at| {
        sink.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((nonce, expires_at))
    });
    (heard, on_ended)
}

fn has(heard: &Mutex<Vec<(Nonce, u64)>>, wanted: Nonce) -> bool {
    heard
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|(nonce, _)| *nonce == wanted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_is_shared_between_instances() {
    let Some(server) = Server::start() else {
        return;
    };
    let (a, b) = (start(&server), start(&server));
    let (spend_a, spend_b) = (RedisSpend::new(a.clone()), RedisSpend::new(b.clone()));
    spend_a.add("alice", tokens(10));
    spend_b.add("alice", tokens(5));
    // Counted here at once, before any exchange.
    assert_eq!(spend_a.spent("alice", Period::Day).tokens, 10);
    let both = Spend {
        requests: 2,
        tokens: 15,
        cost_micros: 30,
    };
    for period in Period::ALL {
        eventually("A sees B's spend", || {
            spend_a.spent("alice", period) == both
        })
        .await;
        eventually("B sees A's spend", || {
            spend_b.spent("alice", period) == both
        })
        .await;
    }
    // A key B only reads is read back too.
    spend_a.add("bob", tokens(7));
    eventually("B reads a key it never added to", || {
        spend_b.spent("bob", Period::Month).tokens == 7
    })
    .await;
    assert_eq!(spend_a.trouble(), None);
    assert!(a.is_up() && b.is_up());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_shared_between_instances() {
    let Some(server) = Server::start() else {
        return;
    };
    let time = ManualClock::at(NOON_JAN_31_2026);
    let (a, b) = (start(&server), start(&server));
    let limiters = [
        RedisRateLimiter::with_clock(a.clone(), time.clock()),
        RedisRateLimiter::with_clock(b.clone(), time.clock()),
    ];
    eventually("both are connected", || a.is_up() && b.is_up()).await;
    const LIMIT: u32 = 10;
    let mut allowed = 0;
    let mut refused = None;
    for i in 0..3 * LIMIT {
        match limiters[i as usize % 2].check("alice", LIMIT) {
            Ok(()) => allowed += 1,
            Err(wait) => refused = Some(wait),
        }
        // Sequential requests a few sync intervals apart.
        tokio::time::sleep(4 * SYNC).await;
    }
    // Each instance may let through one request the other's count had not reached it for.
    assert!(
        (LIMIT..=LIMIT + 2).contains(&allowed),
        "{allowed} allowed for a limit of {LIMIT}"
    );
    let wait = refused.expect("refused past the limit");
    // The held clock is 20 s into its minute.
    assert_eq!(wait, Duration::from_secs(40));
    // Another key is unaffected; the next minute starts afresh.
    assert!(limiters[0].check("bob", LIMIT).is_ok());
    time.advance(Duration::from_secs(40));
    assert!(limiters[1].check("alice", LIMIT).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_sessions_reach_every_instance() {
    let Some(server) = Server::start() else {
        return;
    };
    let (heard_a, on_a) = recorder();
    let (heard_b, on_b) = recorder();
    let a = EndedSessions::new(start(&server), on_a);
    let _b = EndedSessions::new(start(&server), on_b);
    let expires_at = unix_now() + 3600;
    a.end(nonce(1), expires_at);
    eventually("B hears of the session A ended", || has(&heard_b, nonce(1))).await;
    eventually("A hears its own", || has(&heard_a, nonce(1))).await;
    // One that expired meanwhile is neither passed on nor kept.
    let client = ::redis::Client::open(server.config().url.expose()).expect("client");
    let mut raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let expired = "02".repeat(NONCE_LEN);
    let () = ::redis::cmd("ZADD")
        .arg("test:ended")
        .arg(unix_now() - 10)
        .arg(&expired)
        .query_async(&mut raw)
        .await
        .expect("zadd");

    // An instance started later loads what was ended before.
    let (heard_c, on_c) = recorder();
    let _c = EndedSessions::new(start(&server), on_c);
    eventually("C loads it on connecting", || has(&heard_c, nonce(1))).await;
    let heard = heard_c.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(heard.contains(&(nonce(1), expires_at)), "{heard:?}");
    assert!(!has(&heard_c, nonce(2)), "{heard:?}");
    let kept: Option<u64> = ::redis::cmd("ZSCORE")
        .arg("test:ended")
        .arg(&expired)
        .query_async(&mut raw)
        .await
        .expect("zscore");
    assert_eq!(kept, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_counts_locally_and_sharing_resumes() {
    let Some(mut server) = Server::start() else {
        return;
    };
    let (a, b) = (start(&server), start(&server));
    let (spend_a, spend_b) = (RedisSpend::new(a.clone()), RedisSpend::new(b.clone()));
    let time = ManualClock::at(NOON_JAN_31_2026);
    let limiter = RedisRateLimiter::with_clock(a.clone(), time.clock());
    let (heard_b, on_b) = recorder();
    let ended_a = EndedSessions::new(a.clone(), recorder().1);
    let _ended_b = EndedSessions::new(b.clone(), on_b);
    spend_a.add("alice", tokens(1));
    eventually("B sees A's spend", || {
        spend_b.spent("alice", Period::Month).tokens == 1
    })
    .await;

    server.kill();
    eventually("A knows Redis is gone", || !a.is_up()).await;
    let trouble = spend_a.trouble().unwrap_or_default();
    assert!(trouble.contains("unreachable"), "{trouble}");
    assert!(trouble.contains(&server.port.to_string()), "{trouble}");
    // Everything goes on locally.
    spend_a.add("alice", tokens(100));
    assert_eq!(spend_a.spent("alice", Period::Month).tokens, 101);
    for _ in 0..5 {
        assert!(limiter.check("alice", 5).is_ok());
    }
    assert!(limiter.check("alice", 5).is_err());
    ended_a.end(nonce(3), unix_now() + 3600);
    tokio::time::sleep(5 * SYNC).await;

    // Back, empty (nothing was saved): what A counted meanwhile arrives and B sees it.
    server.restart();
    eventually("A is connected again", || {
        a.is_up() && spend_a.trouble().is_none()
    })
    .await;
    eventually("B sees the spend of the outage", || {
        spend_b.spent("alice", Period::Month).tokens == 100
    })
    .await;
    eventually("B hears of the session ended in the outage", || {
        has(&heard_b, nonce(3))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_without_redis_counts_locally_until_it_comes() {
    let Some(mut server) = Server::start() else {
        return;
    };
    server.kill();
    let shared = start(&server);
    let spend = RedisSpend::new(shared.clone());
    spend.add("alice", tokens(4));
    assert_eq!(spend.spent("alice", Period::Day).tokens, 4);
    assert!(spend.trouble().is_some());
    eventually("the first attempt fails", || {
        spend.trouble().is_some_and(|t| t.contains("unreachable"))
    })
    .await;
    server.restart();
    eventually("connected", || shared.is_up()).await;
    let other = RedisSpend::new(start(&server));
    eventually("the spend counted before arrives", || {
        other.spent("alice", Period::Day).tokens == 4
    })
    .await;
}

#[tokio::test]
async fn a_malformed_url_is_a_clear_error() {
    for url in [
        "not a url",
        "http://user:hunter2@host:6379/",
        "redis://user:hunter2@host:notaport/",
    ] {
        let error = RedisShared::start(&config(url))
            .err()
            .expect("a malformed URL is refused");
        let message = error.to_string();
        assert!(matches!(error, RedisError::Url { .. }), "{message}");
        assert!(
            message.contains("redis://[user:password@]host"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
    }
}

#[test]
fn starting_outside_a_runtime_is_a_clear_error() {
    let error = RedisShared::start(&config("redis://127.0.0.1:1/"))
        .err()
        .expect("no runtime");
    assert!(matches!(error, RedisError::NoRuntime), "{error}");
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0)
}
