//! Request rate limits shared through Redis, in fixed one-minute windows.
//!
//! A check only touches memory: it allows when the last count Redis told this instance for the
//! key's current window, plus the requests this instance allowed since, is under the limit.
//! Within 25 ms of a request (1 ms once the key's count reaches a quarter of its limit), and at
//! least every sync interval, one transaction adds this instance's requests (`INCRBY` on
//! `{prefix}:rpm:{key}:{minute index}`, whose reply is the count of all instances) and reads
//! the count of every other key in use. While Redis is unreachable, each instance counts only
//! its own requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redis::Pipeline;

use super::shared::{RedisShared, lock};
use super::sync::{Counter, Outcome, count, to_redis};
use crate::ratelimit::RateLimiter;
use crate::state::{Clock, Period, system_clock};

/// How long a window's key outlives the window (other instances' clocks may lag a little).
const EXPIRE_AFTER_END: Duration = Duration::from_secs(120);

/// A key's count is urgent (exchanged 1 ms apart, not 25) from a quarter of its limit on: a
/// count that can wait 25 ms must leave room for what the other instances admit meanwhile.
const URGENT_SHARE: u64 = 4;

/// Requests per key and minute, counted across instances.
pub struct RedisRateLimiter {
    inner: Arc<Limits>,
}

struct Limits {
    shared: Arc<RedisShared>,
    clock: Clock,
    windows: Mutex<Windows>,
}

/// The current window of each key checked in it: one entry per key in use, no more.
#[derive(Default)]
struct Windows {
    by_key: HashMap<String, Window>,
    /// The minute index windows of earlier minutes were last dropped in.
    pruned_minute: i64,
}

struct Window {
    /// The minute index.
    index: i64,
    /// The last count of all instances from Redis plus this instance's requests since.
    count: u64,
    /// This instance's requests not yet sent.
    pending: u64,
}

/// What one exchange sent (or, when zero, only read), in the order of the replies.
pub(super) struct Batch(Vec<(String, i64, u64)>);

impl RedisRateLimiter {
    /// Shares counts through `shared`; exchanges run in the background until this is dropped.
    pub fn new(shared: Arc<RedisShared>) -> Self {
        Self::with_clock(shared, system_clock())
    }

    /// Like [`RedisRateLimiter::new`], reading the time from `clock` (tests hold it still).
    pub fn with_clock(shared: Arc<RedisShared>, clock: Clock) -> Self {
        let inner = Arc::new(Limits {
            shared: shared.clone(),
            clock,
            windows: Mutex::new(Windows::default()),
        });
        shared.exchange().register(&inner);
        RedisRateLimiter { inner }
    }

    /// Why limits are not shared right now, if they are not.
    pub fn trouble(&self) -> Option<String> {
        self.inner.shared.trouble()
    }
}

impl RateLimiter for RedisRateLimiter {
    fn check(&self, key: &str, requests_per_minute: u32) -> Result<(), Duration> {
        let now = (self.inner.clock)();
        let minute = Period::Minute.index(now);
        let mut windows = lock(&self.inner.windows);
        windows.prune(minute);
        let window = match windows.by_key.get_mut(key) {
            Some(window) => window,
            None => windows.by_key.entry(key.to_string()).or_insert(Window {
                index: minute,
                count: 0,
                pending: 0,
            }),
        };
        // A later window than now's: the clock stepped back; keep counting in the latest.
        if window.index < minute {
            *window = Window {
                index: minute,
                count: 0,
                pending: 0,
            };
        }
        if window.count >= u64::from(requests_per_minute) {
            return Err(until_end_of(window.index, now));
        }
        window.count += 1;
        window.pending += 1;
        let urgent = window.count.saturating_mul(URGENT_SHARE) >= u64::from(requests_per_minute);
        drop(windows);
        let exchange = self.inner.shared.exchange();
        if urgent {
            exchange.urgent();
        } else {
            exchange.counted();
        }
        Ok(())
    }
}

impl Windows {
    /// Once a minute, drops the windows of earlier minutes (requests not yet sent with them:
    /// nobody reads a window that is over).
    fn prune(&mut self, minute: i64) {
        if self.pruned_minute != minute {
            self.pruned_minute = minute;
            self.by_key.retain(|_, window| window.index >= minute);
        }
    }
}

/// How long from `now` until the minute `index` ends.
fn until_end_of(index: i64, now: SystemTime) -> Duration {
    let end_secs = u64::try_from(index.saturating_add(1).saturating_mul(60)).unwrap_or(0);
    (UNIX_EPOCH + Duration::from_secs(end_secs))
        .duration_since(now)
        .unwrap_or_default()
}

impl Counter for Limits {
    type Batch = Batch;
    const WHAT: &'static str = "count requests";

    fn take(&self, pipe: &mut Pipeline) -> Option<(Batch, usize)> {
        let now = (self.clock)();
        let minute = Period::Minute.index(now);
        let mut windows = lock(&self.windows);
        windows.prune(minute);
        let batch: Vec<(String, i64, u64)> = windows
            .by_key
            .iter_mut()
            .map(|(key, window)| {
                (
                    key.clone(),
                    window.index,
                    std::mem::take(&mut window.pending),
                )
            })
            .collect();
        drop(windows);
        if batch.is_empty() {
            return None;
        }
        let prefix = self.shared.prefix();
        for (key, index, sent) in &batch {
            let name = format!("{prefix}:rpm:{key}:{index}");
            if *sent > 0 {
                pipe.incr(&name, to_redis(*sent));
                let left = until_end_of(*index, now) + EXPIRE_AFTER_END;
                pipe.expire(&name, left.as_secs() as i64).ignore();
            } else {
                pipe.get(&name);
            }
        }
        let replies = batch.len();
        Some((Batch(batch), replies))
    }

    fn settle(&self, batch: Batch, outcome: Outcome) {
        let mut windows = lock(&self.windows);
        match outcome {
            Outcome::Done(replies) => {
                for ((key, index, _), reply) in batch.0.into_iter().zip(replies) {
                    if let Some(window) = windows.by_key.get_mut(&key)
                        && window.index == index
                    {
                        window.count = count(&reply).saturating_add(window.pending);
                    }
                }
            }
            Outcome::Resend => {
                for (key, index, sent) in batch.0 {
                    if let Some(window) = windows.by_key.get_mut(&key)
                        && window.index == index
                    {
                        window.pending += sent;
                    }
                }
            }
            Outcome::Lost => {}
        }
    }

    fn prune(&self) {
        let minute = Period::Minute.index((self.clock)());
        lock(&self.windows).prune(minute);
    }
}
