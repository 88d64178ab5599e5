//! A store in memory only: for tests, and when no state file is wanted.

use super::counts::Counts;
use super::{Clock, Period, Spend, SpendStore, system_clock};

/// Counted spend in this process only; lost on restart.
pub struct MemoryStore {
    counts: Counts,
    clock: Clock,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::with_clock(system_clock())
    }

    /// Reads the time from `clock` (tests move it between periods).
    pub fn with_clock(clock: Clock) -> Self {
        MemoryStore {
            counts: Counts::default(),
            clock,
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl SpendStore for MemoryStore {
    fn spent(&self, key: &str, period: Period) -> Spend {
        self.counts.spent(key, period, (self.clock)())
    }

    fn add(&self, key: &str, spend: Spend) {
        self.counts.add(key, spend, (self.clock)());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_clock::ManualClock;
    use super::*;

    const LAST_MINUTE_2026: u64 = 1_798_761_540; // 2026-12-31T23:59:00Z

    fn tokens(n: u64) -> Spend {
        Spend {
            requests: 1,
            tokens: n,
            cost_micros: n * 3,
        }
    }

    #[test]
    fn counts_per_period_and_key() {
        let time = ManualClock::at(LAST_MINUTE_2026 - 3600);
        let store = MemoryStore::with_clock(time.clock());
        store.add("a", tokens(10));
        store.add("a", tokens(5));
        store.add("b", tokens(1));
        for period in Period::ALL {
            assert_eq!(
                store.spent("a", period),
                Spend {
                    requests: 2,
                    tokens: 15,
                    cost_micros: 45
                }
            );
            assert_eq!(store.spent("b", period).tokens, 1);
            assert_eq!(store.spent("c", period), Spend::default());
        }
        assert_eq!(store.trouble(), None);
    }

    #[test]
    fn the_next_minute_resets_the_minute_only() {
        let time = ManualClock::at(LAST_MINUTE_2026 - 3600);
        let store = MemoryStore::with_clock(time.clock());
        store.add("a", tokens(10));
        time.advance(Duration::from_secs(60));
        assert_eq!(store.spent("a", Period::Minute), Spend::default());
        assert_eq!(store.spent("a", Period::Day).tokens, 10);
        assert_eq!(store.spent("a", Period::Month).tokens, 10);
        store.add("a", tokens(1));
        assert_eq!(store.spent("a", Period::Minute).tokens, 1);
        assert_eq!(store.spent("a", Period::Day).tokens, 11);
    }

    #[test]
    fn the_new_year_resets_everything() {
        let time = ManualClock::at(LAST_MINUTE_2026 + 30);
        let store = MemoryStore::with_clock(time.clock());
        store.add("a", tokens(10));
        time.advance(Duration::from_secs(30));
        for period in Period::ALL {
            assert_eq!(store.spent("a", period), Spend::default(), "{period:?}");
        }
    }
}
