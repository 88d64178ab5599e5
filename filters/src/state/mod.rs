//! Counted state: what each virtual key spent (requests, tokens, cost) in the current UTC
//! minute, day and month, for token rate limits and budgets.
//!
//! Behind [`SpendStore`] so that several Sluice instances can later share the counts (a Redis
//! back-end implements the same trait). Calls on the request path only touch memory; the
//! back-ends persist or share in the background.
//!
//! - [`period`]: the windows and their UTC calendar arithmetic.
//! - [`MemoryStore`]: in memory only. [`SqliteStore`]: in memory, persisted to SQLite.
//! - [`redis`]: shared with other instances through Redis ([`RedisSpend`], and the rate limits
//!   and ended sessions that are shared the same way).

mod counts;
mod memory;
pub mod period;
pub mod redis;
mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

pub use self::redis::{EndedSessions, RedisError, RedisRateLimiter, RedisShared, RedisSpend};
pub use memory::MemoryStore;
pub use period::Period;
pub use sqlite::SqliteStore;

/// What was spent. Cost is in millionths of the price unit: prices are per million tokens, so
/// micro-units keep the arithmetic in integers and exact enough.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    pub requests: u64,
    pub tokens: u64,
    pub cost_micros: u64,
}

impl std::ops::AddAssign for Spend {
    /// Saturates rather than wraps: a full counter still refuses, a wrapped one would not.
    fn add_assign(&mut self, other: Spend) {
        self.requests = self.requests.saturating_add(other.requests);
        self.tokens = self.tokens.saturating_add(other.tokens);
        self.cost_micros = self.cost_micros.saturating_add(other.cost_micros);
    }
}

/// Counted spend per key. Reads and writes are cheap and never wait on disk or network:
/// implementations keep the current periods in memory and persist or share them in the
/// background.
///
/// A period is told by the store's clock; when it moves into a new period, that period starts
/// from zero without any reset. A clock that steps backwards keeps counting in the latest
/// period seen, so a small NTP correction neither loses nor double-counts spend.
pub trait SpendStore: Send + Sync {
    /// Spent by `key` in the current `period`.
    fn spent(&self, key: &str, period: Period) -> Spend;
    /// Add to the current minute, day and month of `key`.
    fn add(&self, key: &str, spend: Spend);
    /// Why the store is not fully working, if it is not (for `/readyz` detail); `None` when
    /// healthy.
    fn trouble(&self) -> Option<String> {
        None
    }
}

/// Where a store reads the time; injectable so tests can move between periods.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

fn system_clock() -> Clock {
    Arc::new(SystemTime::now)
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "cannot create the directory of the state database {}: {source}; create it, or set \
         `state.path` to a writable place",
        path.display()
    )]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot open the state database {}: {source}; it must be a SQLite database Sluice may \
         read and write (move a damaged one aside to start afresh), or set `state.path` elsewhere",
        path.display()
    )]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "the state database {} is read-only; give Sluice write access to it and its directory, \
         or set `state.path` elsewhere",
        path.display()
    )]
    ReadOnly { path: PathBuf },
    #[error("cannot read the spend kept in the state database {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot start the thread that writes the state database: {0}")]
    Spawn(std::io::Error),
}

#[cfg(test)]
pub(crate) mod test_clock {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::Clock;

    /// A clock the test sets; starts at `unix_secs`.
    pub struct ManualClock(Arc<Mutex<SystemTime>>);

    impl ManualClock {
        pub fn at(unix_secs: u64) -> Self {
            ManualClock(Arc::new(Mutex::new(
                UNIX_EPOCH + Duration::from_secs(unix_secs),
            )))
        }

        pub fn clock(&self) -> Clock {
            let time = self.0.clone();
            Arc::new(move || *time.lock().unwrap_or_else(|p| p.into_inner()))
        }

        pub fn advance(&self, by: Duration) {
            *self.0.lock().unwrap_or_else(|p| p.into_inner()) += by;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spend_adds_and_saturates() {
        let mut total = Spend::default();
        total += Spend {
            requests: 1,
            tokens: 10,
            cost_micros: 100,
        };
        total += Spend {
            requests: 1,
            tokens: u64::MAX,
            cost_micros: 5,
        };
        assert_eq!(
            total,
            Spend {
                requests: 2,
                tokens: u64::MAX,
                cost_micros: 105
            }
        );
    }
}
