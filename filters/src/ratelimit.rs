//! Request rate limits per key.
//!
//! Counters sit behind [`RateLimiter`] so that several Sluice instances can share them (a
//! Redis back-end implements the same trait); the default, [`LocalRateLimiter`], keeps them in
//! this process with GCRA (the `governor` crate). Counters are kept by key name across
//! configuration reloads, and reset only when a key's limit changes.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};

/// Decides whether one more request of a key fits its limit.
pub trait RateLimiter: Send + Sync {
    /// `Ok` if the request may go on, or how long to wait before the next one would.
    fn check(&self, key: &str, requests_per_minute: u32) -> Result<(), Duration>;
}

/// In-process counters.
#[derive(Default)]
pub struct LocalRateLimiter {
    limiters: Mutex<HashMap<String, (u32, Arc<DefaultDirectRateLimiter>)>>,
}

impl LocalRateLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    fn limiter(&self, key: &str, rpm: NonZeroU32) -> Arc<DefaultDirectRateLimiter> {
        let mut map = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some((limit, limiter)) if *limit == rpm.get() => limiter.clone(),
            _ => {
                // A full minute's worth may be spent at once, then it refills evenly.
                let limiter = Arc::new(DefaultDirectRateLimiter::direct(Quota::per_minute(rpm)));
                map.insert(key.to_string(), (rpm.get(), limiter.clone()));
                limiter
            }
        }
    }
}

impl RateLimiter for LocalRateLimiter {
    fn check(&self, key: &str, requests_per_minute: u32) -> Result<(), Duration> {
        let Some(rpm) = NonZeroU32::new(requests_per_minute) else {
            return Err(Duration::from_secs(60));
        };
        self.limiter(key, rpm)
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_after_the_limit_with_a_wait() {
        let limiter = LocalRateLimiter::new();
        for _ in 0..3 {
            assert!(limiter.check("alice", 3).is_ok());
        }
        let wait = limiter.check("alice", 3).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        // Other keys are unaffected.
        assert!(limiter.check("bob", 3).is_ok());
    }
}
