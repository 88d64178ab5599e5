//! Session tokens (`Mcp-Session-Id`) and other sealed tokens, as a client can send them: any
//! string, through `Sessions::open`, `delete` and `unseal`.
//!
//! The seeds in `corpus/session_token` are sealed with [`SECRET`] (made by
//! `cargo run --example seed_tokens` in this directory), so the fuzzer starts from genuine
//! tokens and mutates them.
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sluice_filters::session::{SessionError, Sessions};
use sluice_filters::session_book::Limits;

/// The secret the seed tokens are sealed with.
pub const SECRET: &[u8] = b"sluice-fuzz-session-secret-0123456789";
/// Long enough for the seeds (sealed in 2026) to stay valid for decades; a seed sealed in 1990
/// is expired.
const TTL: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
/// What sealed tokens are for: sessions (the token format), upstream tasks, relay state.
const PURPOSES: [u8; 3] = [2, b'T', b'R'];

/// The limits of the session book: enough for every seed.
const LIMITS: Limits = Limits {
    max_sessions: 64,
    idle_secs: 3600,
};

/// Opening and unsealing leave nothing behind that changes a later answer (the cache of
/// verified tokens only saves work), so one instance serves every input.
static SESSIONS: LazyLock<Sessions> = LazyLock::new(|| Sessions::new(SECRET, TTL, LIMITS));

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let sessions = &*SESSIONS;
    match sessions.open(token) {
        Ok(session) => {
            // Only a genuine token opens: it is exactly what sealing its body gives.
            let body = sessions
                .unseal(PURPOSES[0], token)
                .expect("an open session is a sealed token");
            assert_eq!(sessions.seal(PURPOSES[0], &body), token);
            // Ending it, on an instance of its own so that later inputs still see it open.
            let own = Sessions::new(SECRET, TTL, LIMITS);
            assert_eq!(own.open(token).as_ref(), Ok(&session));
            own.delete(token).expect("an open session can be ended");
            assert_eq!(own.open(token), Err(SessionError::Deleted));
            assert_eq!(own.delete(token), Err(SessionError::Deleted));
        }
        Err(_) => {
            assert!(sessions.delete(token).is_err());
        }
    }
    for purpose in PURPOSES {
        if let Some(body) = sessions.unseal(purpose, token) {
            // One body, one token: a token that unseals is the canonical sealing of its body
            // (nobody can make a second spelling of it pass).
            assert_eq!(sessions.seal(purpose, &body), token);
        }
    }
});
