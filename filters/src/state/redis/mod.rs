//! State shared by several Sluice instances through Redis, kept off the request path: checks
//! and adds read and write memory only, and background tasks exchange with Redis.
//!
//! - [`RedisShared`]: the connection and its health (one outage, one log line each way).
//! - [`RedisSpend`]: spend per key and period ([`crate::state::SpendStore`]).
//! - [`RedisRateLimiter`]: requests per key and minute ([`crate::ratelimit::RateLimiter`]).
//! - [`EndedSessions`]: the sessions clients ended, heard of by every instance at once.
//!
//! How exact the shared limits are: each instance knows the others' counts as of its last
//! exchange, at most one sync interval (plus a round trip) old. Near a limit, the instances
//! together may admit what they admit in that time beyond it; with sequential traffic and a
//! 50 ms interval that is a request or so per instance. Counts are never lost while Redis is up;
//! when a connection drops while a transaction is in flight, its deltas are sent again and may
//! count twice (an over-count, never an under-count). While Redis is unreachable each instance
//! counts alone (so up to N instances × the limit may pass), keeps what it counted in the
//! current periods (bounded: coalesced per key and period, ended periods dropped), and sends it
//! when Redis is back, when sharing resumes by itself.

mod ratelimit;
mod sessions;
mod shared;
mod spend;
mod sync;

#[cfg(test)]
mod tests;

pub use ratelimit::RedisRateLimiter;
pub use sessions::{EndedSessions, NONCE_LEN, Nonce, OnEnded};
pub use shared::{RedisError, RedisShared};
pub use spend::RedisSpend;
