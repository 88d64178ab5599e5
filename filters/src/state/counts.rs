//! The current periods' spend of every key, in memory: what both stores answer reads from.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use super::{Period, Spend};

/// The period indexes an add was counted in, by [`Period::slot`].
pub(crate) type Indexes = [i64; 3];

/// Spend per key, one slot per period. A slot holds only its latest period: moving into a new
/// one replaces it, so memory stays at one entry per key and period.
#[derive(Default)]
pub(crate) struct Counts {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    by_key: HashMap<String, [Slot; 3]>,
    /// The minute keys without spend this month were last dropped in.
    pruned_minute: i64,
}

#[derive(Clone, Copy)]
struct Slot {
    index: i64,
    spend: Spend,
}

const EMPTY: Slot = Slot {
    index: i64::MIN,
    spend: Spend {
        requests: 0,
        tokens: 0,
        cost_micros: 0,
    },
};

impl Counts {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spent by `key` in the period of `period` containing `now`.
    pub fn spent(&self, key: &str, period: Period, now: SystemTime) -> Spend {
        let index = period.index(now);
        match self.table().by_key.get(key) {
            // A later index than now's: the clock stepped back; keep the latest period.
            Some(slots) if slots[period.slot()].index >= index => slots[period.slot()].spend,
            _ => Spend::default(),
        }
    }

    /// Adds to the periods of `key` containing `now`; returns the indexes counted in.
    pub fn add(&self, key: &str, spend: Spend, now: SystemTime) -> Indexes {
        let current = Period::ALL.map(|period| period.index(now));
        let mut table = self.table();
        table.prune(current);
        if !table.by_key.contains_key(key) {
            table.by_key.insert(key.to_string(), [EMPTY; 3]);
        }
        let mut counted = current;
        if let Some(slots) = table.by_key.get_mut(key) {
            for (slot, (index, counted)) in slots.iter_mut().zip(current.iter().zip(&mut counted)) {
                if slot.index < *index {
                    *slot = Slot {
                        index: *index,
                        spend: Spend::default(),
                    };
                }
                slot.spend += spend;
                *counted = slot.index;
            }
        }
        counted
    }

    /// Sets what `key` spent in the given period (reading persisted spend back).
    pub fn load(&self, key: &str, period: Period, index: i64, spend: Spend) {
        let mut table = self.table();
        let slots = table.by_key.entry(key.to_string()).or_insert([EMPTY; 3]);
        slots[period.slot()] = Slot { index, spend };
    }

    #[cfg(test)]
    pub fn keys(&self) -> usize {
        self.table().by_key.len()
    }
}

impl Table {
    /// Once a minute, drops keys that spent nothing this month (nor, then, this day or minute).
    fn prune(&mut self, current: Indexes) {
        let minute = current[Period::Minute.slot()];
        if minute == self.pruned_minute {
            return;
        }
        self.pruned_minute = minute;
        let month = current[Period::Month.slot()];
        self.by_key
            .retain(|_, slots| slots[Period::Month.slot()].index >= month);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    const JAN_31_2026: u64 = 1_769_817_600; // 2026-01-31T00:00:00Z

    fn one() -> Spend {
        Spend {
            requests: 1,
            tokens: 10,
            cost_micros: 7,
        }
    }

    #[test]
    fn a_new_period_starts_at_zero_and_old_keys_go() {
        let counts = Counts::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(JAN_31_2026);
        counts.add("a", one(), t0);
        counts.add("b", one(), t0);
        let next_month = t0 + Duration::from_secs(86_400);
        assert_eq!(
            counts.spent("a", Period::Month, next_month),
            Spend::default()
        );
        counts.add("a", one(), next_month);
        assert_eq!(counts.spent("a", Period::Month, next_month), one());
        // "b" spent nothing in February: dropped.
        assert_eq!(counts.keys(), 1);
    }

    #[test]
    fn a_clock_stepping_back_keeps_the_latest_period() {
        let counts = Counts::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(JAN_31_2026 + 60);
        counts.add("a", one(), t0);
        let earlier = t0 - Duration::from_secs(2);
        let counted = counts.add("a", one(), earlier);
        assert_eq!(counted[Period::Minute.slot()], Period::Minute.index(t0));
        assert_eq!(counts.spent("a", Period::Minute, earlier).requests, 2);
        assert_eq!(counts.spent("a", Period::Minute, t0).requests, 2);
    }
}
