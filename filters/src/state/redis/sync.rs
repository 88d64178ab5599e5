//! The background loop that exchanges this instance's counters with Redis: one transaction
//! holds every counter's commands (each adds what this instance counted and reads the totals
//! back), sent once something was counted and [`GAP`] has passed since the last exchange (one
//! exchange in flight at a time, so a busy instance batches), and at least every sync interval.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ::redis::{Pipeline, Value};
use tokio::sync::Notify;

use super::shared::{RedisShared, lock, resend_safe};

/// The time between two exchanges under load (capped by the sync interval): counts made within
/// it go together in one exchange. Each exchange wakes this instance's Redis thread twice (to
/// send, for the reply), which on a 2-core VM cost about 70 µs of CPU each time; the longer the
/// gap, the fewer wake-ups and round trips a busy instance makes, and the later the others see
/// its counts (far from a limit that decides nothing; near one, [`URGENT_GAP`] applies).
const GAP: Duration = Duration::from_millis(25);

/// The gap once a count is urgent (see [`Exchange::urgent`]): near a limit, requests are
/// admitted on these counts one at a time, and back-to-back requests spread over instances are
/// counted exactly only if each count goes out at once.
const URGENT_GAP: Duration = Duration::from_millis(1);

/// Counters kept in memory and shared through Redis.
pub(super) trait Counter: Send + Sync + 'static {
    /// What is pending at one exchange, to settle when its reply comes.
    type Batch: Send + 'static;
    /// What the counter does, for messages ("add spend").
    const WHAT: &'static str;

    /// Takes what is pending and adds to `pipe` the commands that send it and read the totals
    /// back; returns the batch and how many replies those commands give (the ones not
    /// ignored). `None`, with nothing added, when there is nothing to exchange.
    fn take(&self, pipe: &mut Pipeline) -> Option<(Self::Batch, usize)>;
    /// Settles an exchange: Redis replied (`Done`, this counter's replies in order), or the
    /// batch must be sent again, or it is lost.
    fn settle(&self, batch: Self::Batch, outcome: Outcome);
    /// While Redis is unreachable: drops pending counts that can no longer matter, so memory
    /// stays bounded however long the outage.
    fn prune(&self);
}

pub(super) enum Outcome {
    Done(Vec<Value>),
    Resend,
    Lost,
}

/// The counters of one instance and what wakes their exchange. They all go in one transaction:
/// one wake-up and one round trip per exchange, however many counters there are.
#[derive(Default)]
pub(super) struct Exchange {
    counters: Mutex<Vec<Box<dyn Exchanged>>>,
    counted: Notify,
    urgent: Notify,
}

impl Exchange {
    /// Exchanges `counter` from now on, until it is dropped.
    pub(super) fn register<C: Counter>(&self, counter: &Arc<C>) {
        lock(&self.counters).push(Box::new(Arc::downgrade(counter)));
    }

    /// Something was counted: it goes out once the gap has passed rather than at the next tick
    /// (counts made meanwhile go together in the next exchange).
    pub(super) fn counted(&self) {
        self.counted.notify_one();
    }

    /// A count came close to its limit, where the other instances' counts decide: the next
    /// exchange goes [`URGENT_GAP`] after the last one.
    pub(super) fn urgent(&self) {
        self.urgent.notify_one();
        self.counted.notify_one();
    }

    /// Every live counter's pending counts, in one pipeline.
    fn take(&self, pipe: &mut Pipeline) -> Vec<Taken> {
        let mut counters = lock(&self.counters);
        counters.retain(|counter| counter.alive());
        counters
            .iter()
            .filter_map(|counter| counter.take(pipe))
            .collect()
    }

    fn prune(&self) {
        for counter in lock(&self.counters).iter() {
            counter.prune();
        }
    }
}

/// A counter with its batch type hidden, so that counters of different kinds share an exchange.
trait Exchanged: Send + Sync {
    fn alive(&self) -> bool;
    fn take(&self, pipe: &mut Pipeline) -> Option<Taken>;
    fn prune(&self);
}

/// One counter's part of an exchange.
struct Taken {
    what: &'static str,
    /// How many of the exchange's replies are this counter's (they come in the order taken).
    replies: usize,
    settle: Box<dyn FnOnce(Outcome) + Send>,
}

impl<C: Counter> Exchanged for Weak<C> {
    fn alive(&self) -> bool {
        self.strong_count() > 0
    }

    fn take(&self, pipe: &mut Pipeline) -> Option<Taken> {
        let counter = self.upgrade()?;
        let (batch, replies) = counter.take(pipe)?;
        Some(Taken {
            what: C::WHAT,
            replies,
            settle: Box::new(move |outcome| counter.settle(batch, outcome)),
        })
    }

    fn prune(&self) {
        if let Some(counter) = self.upgrade() {
            counter.prune();
        }
    }
}

/// Runs the exchanges of `shared`'s counters until it is dropped.
pub(super) fn spawn(shared: &Arc<RedisShared>) {
    let sync_interval = shared.sync_interval();
    let runtime = shared.runtime().clone();
    let shared = Arc::downgrade(shared);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(sync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Under load, counts wait a little to go together: one exchange every `GAP` at most
        // (`URGENT_GAP` near a limit), not one per request (that cost the request threads CPU,
        // and Redis a round trip per request and instance).
        let gap = GAP.min(sync_interval);
        let urgent_gap = URGENT_GAP.min(gap);
        let mut last = tokio::time::Instant::now();
        loop {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let exchange = shared.exchange();
            tokio::select! {
                () = tokio::time::sleep_until(last + gap) => {}
                () = exchange.urgent.notified() => tokio::time::sleep_until(last + urgent_gap).await,
            }
            tokio::select! {
                _ = tick.tick() => {}
                () = exchange.counted.notified() => {}
            }
            if !shared.is_up() {
                exchange.prune();
                continue;
            }
            let mut pipe = ::redis::pipe();
            pipe.atomic();
            let taken = exchange.take(&mut pipe);
            if taken.is_empty() {
                continue;
            }
            last = tokio::time::Instant::now();
            let mut connection = shared.connection();
            match pipe.query_async::<Vec<Value>>(&mut connection).await {
                Ok(mut replies) => {
                    for part in taken {
                        let rest = replies.split_off(part.replies.min(replies.len()));
                        (part.settle)(Outcome::Done(replies));
                        replies = rest;
                    }
                    shared.succeeded();
                }
                Err(e) => {
                    let what = taken.iter().map(|part| part.what).collect::<Vec<_>>().join(" and ");
                    // Redis may have run part of it: sending again could count twice.
                    let resend = resend_safe(&e);
                    if !resend {
                        tracing::error!(
                            "Redis failed to {what}: {e}; the counts of this exchange are dropped"
                        );
                    }
                    for part in taken {
                        (part.settle)(if resend { Outcome::Resend } else { Outcome::Lost });
                    }
                    shared.failed(&what, &e);
                }
            }
        }
    });
}

/// A counter value from a reply; missing or unreadable counts as zero (Redis counters are
/// signed, a negative one can only come from someone editing it).
pub(super) fn count(value: &Value) -> u64 {
    match value {
        Value::Int(n) => u64::try_from(*n).unwrap_or(0),
        Value::BulkString(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or(0),
        Value::SimpleString(text) => text.parse().unwrap_or(0),
        _ => 0,
    }
}

/// A count as Redis takes it (signed), saturating.
pub(super) fn to_redis(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}
