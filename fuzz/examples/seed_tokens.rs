//! Writes the seed corpus of the `session_token` target: genuine tokens sealed with the
//! target's secret, and near misses. Run from `fuzz/`: `cargo run --example seed_tokens`.

use std::time::Duration;

use sluice_filters::session::{SessionError, Sessions};
use sluice_filters::session_book::Limits;

/// `SECRET` and `TTL` of `fuzz_targets/session_token.rs`.
const SECRET: &[u8] = b"sluice-fuzz-session-secret-0123456789";
const TTL: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// The body of a session token after its format byte: created, protocol index, key
/// fingerprint, nonce, client capabilities.
fn session_body(created: u64, protocol: u8, capabilities: u8) -> Vec<u8> {
    let mut body = created.to_be_bytes().to_vec();
    body.push(protocol);
    body.extend_from_slice(b"keyfprnt");
    body.extend_from_slice(b"nonce-0123456789");
    body.push(capabilities);
    body
}

fn main() {
    let sessions = Sessions::new(
        SECRET,
        TTL,
        Limits {
            max_sessions: 64,
            idle_secs: 3600,
        },
    );
    let session = |created, protocol, capabilities| {
        sessions.seal(2, &session_body(created, protocol, capabilities))
    };
    let valid = session(1_780_000_000, 0, 0);
    let seeds = [
        ("session_valid", valid.clone()),
        ("session_valid_capabilities", session(1_780_000_000, 3, 15)),
        ("session_expired", session(630_000_000, 0, 0)),
        ("session_bad_protocol", session(1_780_000_000, 200, 0)),
        ("session_forged", {
            let mut forged = valid.clone();
            forged.replace_range(10..11, if &valid[10..11] == "A" { "B" } else { "A" });
            forged
        }),
        ("session_padded", format!("{valid}==")),
        ("task", sessions.seal(b'T', b"local\0task-0123")),
        (
            "relay_state",
            sessions.seal(b'R', b"{\"s\":\"local\",\"n\":1}"),
        ),
        ("garbage", "not-a-session-id".to_string()),
    ];
    // The seeds are what their names say.
    let opened = |name: &str| {
        let token = &seeds.iter().find(|(n, _)| *n == name).expect("seed").1;
        sessions.open(token).map(|_| ())
    };
    assert_eq!(opened("session_valid"), Ok(()));
    assert_eq!(opened("session_valid_capabilities"), Ok(()));
    assert_eq!(opened("session_expired"), Err(SessionError::Expired));
    assert_eq!(opened("session_bad_protocol"), Err(SessionError::Malformed));
    assert_eq!(opened("session_forged"), Err(SessionError::BadSeal));
    assert_eq!(opened("session_padded"), Err(SessionError::Malformed));
    let dir = std::path::Path::new("corpus/session_token");
    std::fs::create_dir_all(dir).expect("corpus directory");
    for (name, token) in seeds {
        std::fs::write(dir.join(name), token).expect("seed written");
    }
}
