//! The background loop that exchanges counters with Redis: one transaction that adds what this
//! instance counted and reads the totals back, once something was counted and the counter's gap
//! since the last exchange has passed (one exchange in flight at a time, so a busy instance
//! batches), and at least every sync interval.

use std::sync::{Arc, Weak};
use std::time::Duration;

use ::redis::{Pipeline, Value};
use tokio::sync::Notify;

use super::shared::{RedisShared, resend_safe};

/// The gap once a count is urgent (see [`Counter::urgent`]): near a limit, requests are
/// admitted on these counts one at a time, and back-to-back requests spread over instances are
/// counted exactly only if each count goes out at once.
const URGENT_GAP: Duration = Duration::from_millis(1);

/// Counters kept in memory and shared through Redis.
pub(super) trait Counter: Send + Sync + 'static {
    /// What is pending at one exchange, to settle when its reply comes.
    type Batch: Send;
    /// What the counter does, for messages ("add spend").
    const WHAT: &'static str;
    /// The time between two of this counter's exchanges under load (capped by the sync
    /// interval): counts made within it go together in one exchange. The longer it is, the
    /// fewer round trips a busy instance makes, and the later the others see its counts.
    const GAP: Duration;

    /// Takes what is pending and the totals to read, with the commands that do it (each
    /// command whose reply matters not ignored); `None` when there is nothing to exchange.
    fn take(&self) -> Option<(Self::Batch, Pipeline)>;
    /// Settles an exchange: Redis replied (`Done`, the replies of the commands not ignored),
    /// or the batch must be sent again, or it is lost.
    fn settle(&self, batch: Self::Batch, outcome: Outcome);
    /// While Redis is unreachable: drops pending counts that can no longer matter, so memory
    /// stays bounded however long the outage.
    fn prune(&self);
    /// Notified when something is counted: it is sent once the gap has passed rather than at
    /// the next tick (counts made meanwhile go together in the next exchange).
    fn counted(&self) -> &Notify;
    /// Notified when a count comes close to its limit, where the other instances' counts
    /// decide: from then on exchanges are [`URGENT_GAP`] apart. `None`: no count is urgent.
    fn urgent(&self) -> Option<&Notify>;
}

pub(super) enum Outcome {
    Done(Vec<Value>),
    Resend,
    Lost,
}

/// Runs `counter`'s exchanges every sync interval until it is dropped.
pub(super) fn spawn<C: Counter>(shared: Arc<RedisShared>, counter: Weak<C>) {
    let runtime = shared.runtime().clone();
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(shared.sync_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Under load, counts wait a little to go together: one exchange per counter every
        // `GAP` at most (`URGENT_GAP` near a limit), not one per request (that cost the
        // request threads CPU, and Redis a round trip per request and instance).
        let gap = C::GAP.min(shared.sync_interval());
        let urgent_gap = URGENT_GAP.min(gap);
        let mut last = tokio::time::Instant::now();
        loop {
            let Some(counter) = counter.upgrade() else {
                return;
            };
            match counter.urgent() {
                Some(urgent) => tokio::select! {
                    () = tokio::time::sleep_until(last + gap) => {}
                    () = urgent.notified() => tokio::time::sleep_until(last + urgent_gap).await,
                },
                None => tokio::time::sleep_until(last + gap).await,
            }
            tokio::select! {
                _ = tick.tick() => {}
                () = counter.counted().notified() => {}
            }
            if !shared.is_up() {
                counter.prune();
                continue;
            }
            let Some((batch, pipe)) = counter.take() else {
                continue;
            };
            last = tokio::time::Instant::now();
            let mut connection = shared.connection();
            match pipe.query_async::<Vec<Value>>(&mut connection).await {
                Ok(replies) => {
                    counter.settle(batch, Outcome::Done(replies));
                    shared.succeeded();
                }
                Err(e) => {
                    if resend_safe(&e) {
                        counter.settle(batch, Outcome::Resend);
                    } else {
                        // Redis may have run part of it: sending again could count twice.
                        tracing::error!(
                            "Redis failed to {}: {e}; the counts of this exchange are dropped",
                            C::WHAT
                        );
                        counter.settle(batch, Outcome::Lost);
                    }
                    shared.failed(C::WHAT, &e);
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
