//! Ended sessions shared through Redis, so that a session a client ended on one instance is
//! refused by all.
//!
//! Sessions are sealed tokens any instance opens; what is shared is only which were ended. An
//! ended session goes into the sorted set `{prefix}:ended` (member: the nonce in hex, score: when
//! the session expires anyway, so expired ones are pruned) and is published on the channel
//! `{prefix}:ended` at once, not at the next sync. Every instance subscribes, and on each
//! (re)connection loads the set, so one that was away misses nothing still valid.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::shared::{RedisShared, lock};

/// The length of a session nonce (`session::NONCE_LEN`).
pub const NONCE_LEN: usize = 16;
pub type Nonce = [u8; NONCE_LEN];

/// Called with each ended session heard of (including those this instance ended).
pub type OnEnded = Arc<dyn Fn(Nonce, u64) + Send + Sync>;

/// At most this many ended sessions wait to be sent while Redis is unreachable; beyond that,
/// those expiring soonest are forgotten (logged once).
const MAX_PENDING: usize = 100_000;
/// How often unsent ended sessions are tried again without being woken.
const RESEND_EVERY: Duration = Duration::from_secs(1);
/// How long subscribing may take before the attempt is given up.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The wait between failed attempts to subscribe while Redis otherwise answers.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(500);

/// The set of ended sessions, shared with the other instances.
pub struct EndedSessions {
    inner: Arc<Ending>,
    _stop: DropGuard,
}

struct Ending {
    shared: Arc<RedisShared>,
    on_ended: OnEnded,
    /// Ended here, not yet in Redis: nonce to expiry.
    pending: Mutex<Pending>,
    wake: Notify,
    key: String,
}

#[derive(Default)]
struct Pending {
    by_nonce: HashMap<Nonce, u64>,
    full: bool,
    /// Told when the next batch is recorded and published.
    waiters: Vec<oneshot::Sender<()>>,
}

/// At most this many callers wait for one batch; more get no acknowledgement.
const MAX_WAITERS: usize = 4096;

impl EndedSessions {
    /// Subscribes in the background and calls `on_ended` for every ended session heard of,
    /// until dropped. The caller ends sessions locally itself: `on_ended` only brings news from
    /// other instances (and echoes this one's).
    pub fn new(shared: Arc<RedisShared>, on_ended: OnEnded) -> Self {
        let key = format!("{}:ended", shared.prefix());
        let inner = Arc::new(Ending {
            shared: shared.clone(),
            on_ended,
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            key,
        });
        let stop = CancellationToken::new();
        let runtime = shared.runtime();
        runtime.spawn(listen(inner.clone(), stop.clone()));
        runtime.spawn(send(inner.clone(), stop.clone()));
        EndedSessions {
            inner,
            _stop: stop.drop_guard(),
        }
    }

    /// Records that a session ended; sent to Redis at once in the background (kept and sent
    /// when Redis is back if it is unreachable). Never waits. A session already expired is
    /// refused everywhere anyway, so it is not sent.
    ///
    /// While Redis is up, the answer is told when the end has been recorded and published, so
    /// that a caller may wait for it (a `DELETE` answered after that is seen by every
    /// instance); `None` when there is nothing to wait for.
    pub fn end(&self, nonce: Nonce, expires_at: u64) -> Option<oneshot::Receiver<()>> {
        if expires_at < unix_now() {
            return None;
        }
        let mut pending = lock(&self.inner.pending);
        pending.insert(nonce, expires_at);
        let ack = (self.inner.shared.is_up() && pending.waiters.len() < MAX_WAITERS).then(|| {
            let (tell, told) = oneshot::channel();
            pending.waiters.push(tell);
            told
        });
        drop(pending);
        self.inner.wake.notify_one();
        ack
    }

    /// Why ended sessions are not shared right now, if they are not.
    pub fn trouble(&self) -> Option<String> {
        self.inner.shared.trouble()
    }
}

impl Pending {
    fn insert(&mut self, nonce: Nonce, expires_at: u64) {
        if self.by_nonce.len() >= MAX_PENDING && !self.by_nonce.contains_key(&nonce) {
            let now = unix_now();
            self.by_nonce.retain(|_, expires| *expires >= now);
            if self.by_nonce.len() >= MAX_PENDING {
                if !self.full {
                    self.full = true;
                    tracing::warn!(
                        "more than {MAX_PENDING} ended sessions wait for Redis; those expiring \
                         soonest are no longer shared"
                    );
                }
                let soonest = self.by_nonce.iter().min_by_key(|(_, expires)| **expires);
                if let Some((&soonest, _)) = soonest {
                    self.by_nonce.remove(&soonest);
                }
            }
        }
        self.by_nonce.insert(nonce, expires_at);
    }
}

/// Sends ended sessions as soon as they are ended, and again while Redis fails.
async fn send(ending: Arc<Ending>, stop: CancellationToken) {
    let mut up = ending.shared.watch_up();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = ending.wake.notified() => {}
            _ = up.changed() => {}
            () = tokio::time::sleep(RESEND_EVERY) => {}
        }
        if !ending.shared.is_up() {
            continue;
        }
        let (batch, waiters): (Vec<(Nonce, u64)>, Vec<oneshot::Sender<()>>) = {
            let mut pending = lock(&ending.pending);
            let batch = pending
                .by_nonce
                .iter()
                .map(|(nonce, expires)| (*nonce, *expires))
                .collect();
            (batch, std::mem::take(&mut pending.waiters))
        };
        if batch.is_empty() {
            continue;
        }
        let now = unix_now();
        let mut pipe = ::redis::pipe();
        for (nonce, expires_at) in &batch {
            let member = hex(nonce);
            pipe.zadd(&ending.key, &member, *expires_at).ignore();
            pipe.publish(&ending.key, format!("{member} {expires_at}"))
                .ignore();
        }
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&ending.key)
            .arg("-inf")
            .arg(format!("({now}"))
            .ignore();
        let mut connection = ending.shared.connection();
        match pipe.query_async::<()>(&mut connection).await {
            Ok(()) => {
                let mut pending = lock(&ending.pending);
                for (nonce, expires_at) in batch {
                    if pending.by_nonce.get(&nonce) == Some(&expires_at) {
                        pending.by_nonce.remove(&nonce);
                    }
                }
                pending.full = false;
                drop(pending);
                for waiter in waiters {
                    let _ = waiter.send(());
                }
                ending.shared.succeeded();
            }
            // Kept: adding and publishing again does no harm.
            Err(e) => ending.shared.failed("record ended sessions", &e),
        }
    }
}

/// While Redis is up: subscribes, loads the set, and hears of sessions ended anywhere; starts
/// over whenever the subscription or Redis goes.
async fn listen(ending: Arc<Ending>, stop: CancellationToken) {
    let mut up = ending.shared.watch_up();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            ready = up.wait_for(|up| *up) => if ready.is_err() { return },
        }
        match subscribe(&ending).await {
            Ok((sink, mut messages)) => {
                let went_down = async { up.wait_for(|up| !*up).await.is_ok() };
                tokio::pin!(went_down);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = &mut went_down => break,
                        message = messages.next() => match message {
                            Some(message) => ending.heard(message.get_payload_bytes()),
                            None => break,
                        },
                    }
                }
                drop(sink);
            }
            Err(e) => ending.shared.failed("subscribe to ended sessions", &e),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RESUBSCRIBE_AFTER) => {}
        }
    }
}

/// Subscribes first, then loads the set: a session ended in between is heard of either way.
async fn subscribe(
    ending: &Ending,
) -> ::redis::RedisResult<(::redis::aio::PubSubSink, ::redis::aio::PubSubStream)> {
    let timed_out =
        || ::redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
    let mut pubsub =
        tokio::time::timeout(SUBSCRIBE_TIMEOUT, ending.shared.client().get_async_pubsub())
            .await
            .map_err(|_| timed_out())??;
    tokio::time::timeout(SUBSCRIBE_TIMEOUT, pubsub.subscribe(&ending.key))
        .await
        .map_err(|_| timed_out())??;
    let now = unix_now();
    let mut pipe = ::redis::pipe();
    pipe.cmd("ZREMRANGEBYSCORE")
        .arg(&ending.key)
        .arg("-inf")
        .arg(format!("({now}"))
        .ignore();
    pipe.cmd("ZRANGEBYSCORE")
        .arg(&ending.key)
        .arg(now)
        .arg("+inf")
        .arg("WITHSCORES");
    let (ended,): (Vec<(String, u64)>,) = pipe.query_async(&mut ending.shared.connection()).await?;
    for (member, expires_at) in ended {
        ending.heard_one(&member, expires_at);
    }
    Ok(pubsub.split())
}

impl Ending {
    /// A message on the channel: `<nonce in hex> <expires_at>`.
    fn heard(&self, payload: &[u8]) {
        let parsed = std::str::from_utf8(payload).ok().and_then(|text| {
            let (member, expires_at) = text.split_once(' ')?;
            Some((member, expires_at.parse().ok()?))
        });
        match parsed {
            Some((member, expires_at)) => self.heard_one(member, expires_at),
            None => {
                tracing::debug!(channel = %self.key, "ignored a malformed ended-session message")
            }
        }
    }

    /// Passes on an ended session unless it has expired meanwhile.
    fn heard_one(&self, member: &str, expires_at: u64) {
        if expires_at < unix_now() {
            return;
        }
        match unhex(member) {
            Some(nonce) => (self.on_ended)(nonce, expires_at),
            None => tracing::debug!(key = %self.key, "ignored a malformed ended session"),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0)
}

fn hex(nonce: &Nonce) -> String {
    let mut text = String::with_capacity(2 * NONCE_LEN);
    for byte in nonce {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

fn unhex(text: &str) -> Option<Nonce> {
    if text.len() != 2 * NONCE_LEN || !text.is_ascii() {
        return None;
    }
    let mut nonce = [0u8; NONCE_LEN];
    for (byte, pair) in nonce.iter_mut().zip(text.as_bytes().chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(nonce)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_round_trip_through_hex() {
        let nonce: Nonce = std::array::from_fn(|i| (i * 17) as u8);
        let text = hex(&nonce);
        assert_eq!(text.len(), 32);
        assert_eq!(unhex(&text), Some(nonce));
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex(&"g".repeat(32)), None);
        assert_eq!(unhex(&"é".repeat(16)), None);
    }

    #[test]
    fn pending_ends_stay_bounded() {
        let mut pending = Pending::default();
        let later = unix_now() + 3600;
        for i in 0..MAX_PENDING + 10 {
            let mut nonce = [0u8; NONCE_LEN];
            nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
            pending.insert(nonce, later + i as u64);
        }
        assert_eq!(pending.by_nonce.len(), MAX_PENDING);
        // The soonest to expire went first.
        assert!(
            pending
                .by_nonce
                .values()
                .all(|expires| *expires >= later + 10)
        );
    }
}
