//! What one instance remembers of sessions beyond their sealed tokens: when each was last used
//! here, and which were ended with `DELETE`.
//!
//! Both tables are bounded. Sessions in use are kept in least-recently-used order, so the most
//! idle one is always first in line: idle expiry and the cap cost O(1) per request. Ended
//! sessions are remembered until their token would have expired anyway, pruned in expiry
//! order; when that table is full, the one closest to expiring is forgotten first.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use lru::LruCache;

/// A session's random part: what identifies it across instances.
pub type Nonce = [u8; 16];

/// The limits of the book (from `mcp.max_sessions` and `mcp.session_idle_timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Sessions in use on this instance; `initialize` beyond it is refused.
    pub max_sessions: usize,
    /// A session unused this long (seconds) is ended.
    pub idle_secs: u64,
}

/// Why a session is not (or no longer) admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Ended,
    Idle,
}

pub struct SessionBook {
    limits: Limits,
    /// Nonce → last use (seconds since the epoch), least recently used first.
    in_use: LruCache<Nonce, u64>,
    /// Nonce → when its token expires anyway.
    ended: HashMap<Nonce, u64>,
    /// `ended` by expiry, soonest first.
    ended_by_expiry: BinaryHeap<Reverse<(u64, Nonce)>>,
}

impl SessionBook {
    pub fn new(limits: Limits) -> Self {
        SessionBook {
            limits,
            in_use: LruCache::unbounded(),
            ended: HashMap::new(),
            ended_by_expiry: BinaryHeap::new(),
        }
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Sessions in use here (for the `sluice_active_sessions` gauge).
    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }

    /// Sessions remembered as ended.
    pub fn ended(&self) -> usize {
        self.ended.len()
    }

    /// Room for one more session? Idle ones are ended first to make some.
    pub fn admit_new(&mut self, nonce: Nonce, now: u64) -> bool {
        self.end_idle(now);
        if self.in_use.len() >= self.limits.max_sessions {
            return false;
        }
        self.in_use.put(nonce, now);
        true
    }

    /// A request of an existing session: refused if it was ended or sat idle too long,
    /// otherwise its last use moves to `now`. A session first seen here (issued by another
    /// instance, or before a restart) is admitted; when the table is full, the most idle entry
    /// makes room, so that memory stays bounded.
    pub fn touch(&mut self, nonce: Nonce, expires_at: u64, now: u64) -> Result<(), Refusal> {
        if self.ended.contains_key(&nonce) {
            return Err(Refusal::Ended);
        }
        if let Some(last) = self.in_use.get_mut(&nonce) {
            if now.saturating_sub(*last) > self.limits.idle_secs {
                self.in_use.pop(&nonce);
                self.end(nonce, expires_at, now);
                return Err(Refusal::Idle);
            }
            *last = now;
            return Ok(());
        }
        self.end_idle(now);
        if self.in_use.len() >= self.limits.max_sessions.max(1) {
            self.in_use.pop_lru();
        }
        self.in_use.put(nonce, now);
        Ok(())
    }

    /// Remember that a session ended (client `DELETE`, or idle).
    pub fn end(&mut self, nonce: Nonce, expires_at: u64, now: u64) {
        self.in_use.pop(&nonce);
        self.forget_expired(now);
        if self.ended.len() >= self.ended_cap() {
            // Full: forget the one closest to expiring on its own.
            if let Some(Reverse((_, soonest))) = self.ended_by_expiry.pop() {
                self.ended.remove(&soonest);
            }
        }
        if self.ended.insert(nonce, expires_at).is_none() {
            self.ended_by_expiry.push(Reverse((expires_at, nonce)));
        }
    }

    /// Ended sessions are remembered up to twice the sessions in use: every session in use can
    /// end, and the ones that ended before it stay refused as long as there is room.
    fn ended_cap(&self) -> usize {
        self.limits.max_sessions.saturating_mul(2).max(1)
    }

    /// End the sessions idle for longer than the limit (least recently used first).
    fn end_idle(&mut self, now: u64) {
        while let Some((&nonce, &last)) = self.in_use.peek_lru() {
            if now.saturating_sub(last) <= self.limits.idle_secs {
                break;
            }
            self.in_use.pop_lru();
            // Its expiry is unknown here; keep it ended for one more idle period, long
            // enough for its client to see 404 and start again.
            self.end(nonce, now.saturating_add(self.limits.idle_secs), now);
        }
    }

    /// Drop ended sessions whose tokens have expired on their own.
    fn forget_expired(&mut self, now: u64) {
        while let Some(Reverse((expires, nonce))) = self.ended_by_expiry.peek().copied() {
            if expires >= now {
                break;
            }
            self.ended_by_expiry.pop();
            self.ended.remove(&nonce);
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 100_000,
            idle_secs: 3600,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nonce(n: u32) -> Nonce {
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&n.to_be_bytes());
        out
    }

    #[test]
    fn ended_sessions_stay_bounded_under_an_initialize_delete_loop() {
        let mut book = SessionBook::new(Limits {
            max_sessions: 100,
            idle_secs: 3600,
        });
        for n in 0..100_000 {
            assert!(book.admit_new(nonce(n), 1000));
            book.end(nonce(n), 10_000_000, 1000);
        }
        assert!(book.ended() <= 200, "ended: {}", book.ended());
        assert!(book.ended_by_expiry.len() <= 200);
        assert_eq!(book.in_use(), 0);
        // The latest ones are still refused.
        assert_eq!(
            book.touch(nonce(99_999), 10_000_000, 1000),
            Err(Refusal::Ended)
        );
    }

    #[test]
    fn expired_ended_sessions_are_forgotten() {
        let mut book = SessionBook::new(Limits::default());
        book.end(nonce(1), 2000, 1000);
        book.end(nonce(2), 5000, 1000);
        book.end(nonce(3), 9000, 3000);
        assert_eq!(book.ended(), 2);
        assert_eq!(book.touch(nonce(2), 5000, 3000), Err(Refusal::Ended));
        assert_eq!(book.touch(nonce(1), 2000, 3000), Ok(()));
    }

    #[test]
    fn idle_sessions_end_and_make_room() {
        let mut book = SessionBook::new(Limits {
            max_sessions: 2,
            idle_secs: 60,
        });
        assert!(book.admit_new(nonce(1), 1000));
        assert!(book.admit_new(nonce(2), 1030));
        assert!(!book.admit_new(nonce(3), 1040), "full");
        assert_eq!(book.touch(nonce(2), 99_999, 1050), Ok(()));
        // Session 1 has been idle for 70 s: it ends, and the new one fits.
        assert!(book.admit_new(nonce(3), 1070));
        assert_eq!(book.touch(nonce(1), 99_999, 1071), Err(Refusal::Ended));
        assert_eq!(book.touch(nonce(2), 99_999, 1200), Err(Refusal::Idle));
    }

    #[test]
    fn sessions_from_elsewhere_are_admitted_within_the_bound() {
        let mut book = SessionBook::new(Limits {
            max_sessions: 3,
            idle_secs: 60,
        });
        for n in 0..10 {
            assert_eq!(book.touch(nonce(n), 99_999, 1000), Ok(()));
        }
        assert_eq!(book.in_use(), 3);
    }
}
