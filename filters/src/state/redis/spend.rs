//! Spend shared through Redis.
//!
//! Reads and adds touch only memory: what a key spent is the last total Redis told this
//! instance, plus what this instance added since. Within 25 ms of an addition, and at least
//! every sync interval, one transaction adds the pending deltas (`HINCRBY` on
//! `{prefix}:spend:{key}:{period}:{index}`, fields `requests`, `tokens`, `cost_micros`,
//! expiring a while after the period ends) and reads back the totals of every key in use, so
//! other instances' spend shows here within one interval (about 25 ms while this one adds too).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ::redis::{Pipeline, Value};

use super::shared::{RedisShared, lock};
use super::sync::{Counter, Outcome, count, to_redis};
use crate::state::counts::Counts;
use crate::state::{Clock, Period, Spend, SpendStore, system_clock};

/// Hash fields of a spend key, in the order of [`Spend`].
const FIELDS: [&str; 3] = ["requests", "tokens", "cost_micros"];
/// How long a period's key outlives the period (other instances' clocks may lag a little).
const EXPIRE_AFTER_END: Duration = Duration::from_secs(300);
/// Keys whose totals are read back: those read or added within this many minutes.
const IN_USE_MINUTES: i64 = 2;
/// At most this many keys are read back, and this many key-period deltas wait to be sent;
/// beyond that, spend is counted on this instance only (keys are configured, so this is a
/// safety net, not a limit anyone should meet).
const MAX_IN_USE: usize = 10_000;
const MAX_PENDING: usize = 3 * MAX_IN_USE;

/// Counted spend in memory, shared with the other instances through Redis.
pub struct RedisSpend {
    inner: Arc<Spending>,
}

struct Spending {
    shared: Arc<RedisShared>,
    clock: Clock,
    /// The last totals from Redis plus this instance's deltas not yet acknowledged.
    counts: Counts,
    book: Mutex<Book>,
}

#[derive(Default)]
struct Book {
    /// Added here, not yet sent (coalesced per key and period: deltas add up).
    pending: HashMap<Slot, Spend>,
    /// Keys read or added recently, with the minute index they were last used in.
    in_use: HashMap<String, i64>,
    /// Whether the bounds were met (logged once).
    full: bool,
}

/// One key's spend in one period.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Slot {
    key: String,
    period: Period,
    index: i64,
}

/// What one exchange sent and read, in the order of the replies.
pub(super) struct Batch(Vec<(Slot, Spend)>);

impl RedisSpend {
    /// Shares spend through `shared`; exchanges run in the background until this is dropped.
    pub fn new(shared: Arc<RedisShared>) -> Self {
        Self::with_clock(shared, system_clock())
    }

    /// Like [`RedisSpend::new`], reading the time from `clock` (tests move it).
    pub fn with_clock(shared: Arc<RedisShared>, clock: Clock) -> Self {
        let inner = Arc::new(Spending {
            shared: shared.clone(),
            clock,
            counts: Counts::default(),
            book: Mutex::new(Book::default()),
        });
        shared.exchange().register(&inner);
        RedisSpend { inner }
    }
}

impl SpendStore for RedisSpend {
    fn spent(&self, key: &str, period: Period) -> Spend {
        let now = (self.inner.clock)();
        lock(&self.inner.book).use_key(key, now);
        self.inner.counts.spent(key, period, now)
    }

    fn add(&self, key: &str, spend: Spend) {
        let now = (self.inner.clock)();
        // Under the book's lock, so an exchange settling meanwhile sees this delta pending.
        let mut book = lock(&self.inner.book);
        let counted = self.inner.counts.add(key, spend, now);
        book.use_key(key, now);
        for (period, index) in Period::ALL.into_iter().zip(counted) {
            book.queue(
                Slot {
                    key: key.to_string(),
                    period,
                    index,
                },
                spend,
            );
        }
        drop(book);
        self.inner.shared.exchange().counted();
    }

    fn trouble(&self) -> Option<String> {
        self.inner.shared.trouble()
    }
}

impl Book {
    fn use_key(&mut self, key: &str, now: SystemTime) {
        let minute = Period::Minute.index(now);
        if let Some(last) = self.in_use.get_mut(key) {
            *last = minute;
        } else if self.in_use.len() < MAX_IN_USE {
            self.in_use.insert(key.to_string(), minute);
        } else {
            self.bounds_met();
        }
    }

    fn queue(&mut self, slot: Slot, spend: Spend) {
        if let Some(pending) = self.pending.get_mut(&slot) {
            *pending += spend;
        } else if self.pending.len() < MAX_PENDING {
            self.pending.insert(slot, spend);
        } else {
            self.bounds_met();
        }
    }

    fn bounds_met(&mut self) {
        if !self.full {
            self.full = true;
            tracing::warn!(
                "more than {MAX_IN_USE} keys spend at once; the spend of further keys is counted \
                 on this instance only"
            );
        }
    }
}

impl Counter for Spending {
    type Batch = Batch;
    const WHAT: &'static str = "add spend";

    fn take(&self, pipe: &mut Pipeline) -> Option<(Batch, usize)> {
        let now = (self.clock)();
        let current = Period::ALL.map(|period| period.index(now));
        let mut book = lock(&self.book);
        let minute = current[Period::Minute.slot()];
        book.in_use
            .retain(|_, last| minute - *last < IN_USE_MINUTES);
        let mut slots: HashMap<Slot, Spend> = book.pending.drain().collect();
        for key in book.in_use.keys() {
            for (period, index) in Period::ALL.into_iter().zip(current) {
                let slot = Slot {
                    key: key.clone(),
                    period,
                    index,
                };
                slots.entry(slot).or_default();
            }
        }
        drop(book);
        if slots.is_empty() {
            return None;
        }
        let slots: Vec<(Slot, Spend)> = slots.into_iter().collect();
        let prefix = self.shared.prefix();
        for (slot, delta) in &slots {
            let name = format!(
                "{prefix}:spend:{}:{}:{}",
                slot.key,
                slot.period.as_str(),
                slot.index
            );
            if *delta != Spend::default() {
                let values = [delta.requests, delta.tokens, delta.cost_micros];
                for (field, value) in FIELDS.into_iter().zip(values) {
                    if value > 0 {
                        pipe.hincr(&name, field, to_redis(value)).ignore();
                    }
                }
                let left = slot.period.end(now).duration_since(now).unwrap_or_default();
                pipe.expire(&name, (left + EXPIRE_AFTER_END).as_secs() as i64)
                    .ignore();
            }
            pipe.cmd("HMGET").arg(&name).arg(&FIELDS[..]);
        }
        let replies = slots.len();
        Some((Batch(slots), replies))
    }

    fn settle(&self, batch: Batch, outcome: Outcome) {
        let mut book = lock(&self.book);
        match outcome {
            Outcome::Done(replies) => {
                let now = (self.clock)();
                for ((slot, _), reply) in batch.0.into_iter().zip(replies) {
                    // A period over by now is not read any more; loading it would push the
                    // current one out of memory.
                    if slot.index != slot.period.index(now) {
                        continue;
                    }
                    let mut total = totals(&reply);
                    if let Some(pending) = book.pending.get(&slot) {
                        total += *pending;
                    }
                    self.counts.load(&slot.key, slot.period, slot.index, total);
                }
            }
            Outcome::Resend => {
                for (slot, delta) in batch.0 {
                    if delta != Spend::default() {
                        book.queue(slot, delta);
                    }
                }
            }
            Outcome::Lost => {}
        }
    }

    fn prune(&self) {
        let now = (self.clock)();
        lock(&self.book)
            .pending
            .retain(|slot, _| slot.index >= slot.period.index(now));
    }
}

/// The totals in an `HMGET` reply of [`FIELDS`].
fn totals(reply: &Value) -> Spend {
    let Value::Array(values) = reply else {
        return Spend::default();
    };
    let field = |i: usize| values.get(i).map(count).unwrap_or(0);
    Spend {
        requests: field(0),
        tokens: field(1),
        cost_micros: field(2),
    }
}
