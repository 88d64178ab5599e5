//! Downstream sessions as sealed tokens.
//!
//! The `Mcp-Session-Id` Sluice hands out carries its own state: creation time, negotiated
//! protocol version, a fingerprint of the caller's key and a random part, sealed with an
//! HMAC-SHA256 under a secret from the environment (`SLUICE_SESSION_SECRET`). Any instance with
//! the same secret accepts the session, and a restart loses none; the only per-instance state is
//! the [`SessionBook`]: when each session was last used here, and which were ended.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::protocol;
use crate::session_book::{Limits, Refusal, SessionBook};

type HmacSha256 = Hmac<Sha256>;

const FORMAT: u8 = 2;
pub const NONCE_LEN: usize = 16;
const MAC_LEN: usize = 16;
/// format, created (u64), protocol index, key fingerprint (8), nonce, client capabilities.
const BODY_LEN: usize = 1 + 8 + 1 + 8 + NONCE_LEN + 1;
const NONCE: std::ops::Range<usize> = 18..18 + NONCE_LEN;
const CAPABILITIES: usize = 18 + NONCE_LEN;

/// Sessions whose tokens are remembered as verified.
const VERIFIED_CACHE: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(16_384) {
    Some(n) => n,
    None => std::num::NonZeroUsize::MIN,
};

/// The first 8 bytes of the SHA-256 of a token, in hex.
fn fingerprint_of(token: &str) -> Arc<str> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(16);
    for b in &digest[..8] {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
    Arc::from(out)
}

/// What a client declared it can do in `initialize`, as bits sealed into its session, so that
/// any instance knows which server-to-client requests it may relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientCapabilities(u8);

impl ClientCapabilities {
    pub const SAMPLING: u8 = 1;
    pub const ELICITATION_FORM: u8 = 2;
    pub const ELICITATION_URL: u8 = 4;
    pub const ROOTS: u8 = 8;

    /// Read the `capabilities` object of an `initialize` request.
    pub fn from_json(capabilities: &serde_json::Value) -> Self {
        let mut bits = 0;
        if capabilities.get("sampling").is_some() {
            bits |= Self::SAMPLING;
        }
        if let Some(elicitation) = capabilities.get("elicitation") {
            // An empty `elicitation: {}` means form mode (2025-06-18 clients).
            let form = elicitation.get("form").is_some() || elicitation.get("url").is_none();
            if form {
                bits |= Self::ELICITATION_FORM;
            }
            if elicitation.get("url").is_some() {
                bits |= Self::ELICITATION_URL;
            }
        }
        if capabilities.get("roots").is_some() {
            bits |= Self::ROOTS;
        }
        ClientCapabilities(bits)
    }

    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    /// Whether the client can answer the server-to-client request `method` (with `params`).
    pub fn allows(self, method: &str, params: Option<&serde_json::Value>) -> bool {
        match method {
            "sampling/createMessage" => self.has(Self::SAMPLING),
            "elicitation/create" => {
                let url_mode =
                    params.and_then(|p| p.get("mode")).and_then(|m| m.as_str()) == Some("url");
                self.has(if url_mode {
                    Self::ELICITATION_URL
                } else {
                    Self::ELICITATION_FORM
                })
            }
            "roots/list" => self.has(Self::ROOTS),
            _ => true,
        }
    }
}

/// What a valid session token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub protocol_version: &'static str,
    /// Unix seconds.
    pub created: u64,
    key_fingerprint: [u8; 8],
    /// The random part: names the session in per-instance tables.
    pub nonce: [u8; NONCE_LEN],
    pub capabilities: ClientCapabilities,
    /// Unix seconds after which the session is refused.
    pub expires_at: u64,
    /// A short, stable, non-reversible name for the session in logs and audit records.
    pub fingerprint: Arc<str>,
}

impl Session {
    /// The stand-in for a session that a stateless (2026-07-28) request does not have: the
    /// caller's key, what this request declared it can do, and a random tag for the tables
    /// that track the request while it runs.
    pub fn stateless(key_id: &str, capabilities: ClientCapabilities) -> Self {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce[..]);
        let created = now();
        Session {
            protocol_version: protocol::LATEST,
            created,
            key_fingerprint: fingerprint(key_id),
            nonce,
            capabilities,
            expires_at: created.saturating_add(3600),
            fingerprint: Arc::from("stateless"),
        }
    }

    /// Whether the session was opened by the caller holding the key `key_id`.
    pub fn belongs_to(&self, key_id: &str) -> bool {
        self.key_fingerprint == fingerprint(key_id)
    }
}

/// Why a session id is refused; every case is answered with 404 so the client re-initializes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("the session id is malformed")]
    Malformed,
    #[error("the session id was not issued by this gateway")]
    BadSeal,
    #[error("the session has expired")]
    Expired,
    #[error("the session was ended by the client")]
    Deleted,
    #[error("the session was unused for longer than the gateway's idle timeout")]
    Idle,
}

/// Whether `tag` is `body`'s seal under `secret`.
fn verifies(secret: &[u8], body: &[u8], tag: &[u8]) -> bool {
    HmacSha256::new_from_slice(secret).is_ok_and(|mut mac| {
        mac.update(body);
        mac.verify_truncated_left(tag).is_ok()
    })
}

/// `initialize` when this instance holds as many sessions as it may.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "the gateway holds its maximum of {0} sessions; end unused ones with DELETE or retry later"
)]
pub struct SessionsFull(pub usize);

/// Issues and checks session tokens.
pub struct Sessions {
    /// The secret that seals new tokens.
    secret: Vec<u8>,
    /// Older (or not yet used) secrets whose tokens are still accepted, for rotation.
    accepted: Vec<Vec<u8>>,
    ttl: Duration,
    /// Tokens whose seal was checked already.
    verified: Mutex<lru::LruCache<String, Session>>,
    /// Sessions in use and ended, on this instance.
    book: Mutex<SessionBook>,
    /// The book's sessions in use, readable without its lock (for the gauge).
    in_use: AtomicUsize,
    /// Told of every session ended here (to share it with the other instances).
    on_end: std::sync::OnceLock<EndHook>,
}

/// What is told of a session ended on this instance: its nonce and expiry. It may answer with
/// an acknowledgement to wait for (the end reached the other instances).
pub type EndHook = Arc<dyn Fn([u8; NONCE_LEN], u64) -> Option<EndAck> + Send + Sync>;

/// Told once a session's end has been shared.
pub type EndAck = tokio::sync::oneshot::Receiver<()>;

impl Sessions {
    /// `secret` seals the tokens; instances that share sessions share the secret.
    pub fn new(secret: &[u8], ttl: Duration, limits: Limits) -> Self {
        Sessions {
            secret: secret.to_vec(),
            accepted: Vec::new(),
            ttl,
            verified: Mutex::new(lru::LruCache::new(VERIFIED_CACHE)),
            book: Mutex::new(SessionBook::new(limits)),
            in_use: AtomicUsize::new(0),
            on_end: std::sync::OnceLock::new(),
        }
    }

    /// Tell `hook` of every session a client ends here (set once).
    pub fn on_end(&self, hook: EndHook) {
        let _ = self.on_end.set(hook);
    }

    /// Also accept tokens sealed with these secrets (a rotation: the new secret is accepted
    /// everywhere before it seals, the old one until its tokens expire).
    pub fn accepting(mut self, secrets: impl IntoIterator<Item = Vec<u8>>) -> Self {
        self.accepted.extend(secrets);
        self
    }

    /// Every secret a token may be sealed with, the sealing one first.
    fn secrets(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.secret.as_slice()).chain(self.accepted.iter().map(Vec::as_slice))
    }

    /// New limits from a reload; sessions over them end as they go idle.
    pub fn set_limits(&self, limits: Limits) {
        self.with_book(|book| book.set_limits(limits));
    }

    /// Sessions in use on this instance.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Seal a new session for a caller identified by `key_id`.
    pub fn issue(
        &self,
        protocol_version: &str,
        key_id: &str,
        capabilities: ClientCapabilities,
    ) -> Result<String, SessionsFull> {
        let mut body = [0u8; BODY_LEN];
        body[0] = FORMAT;
        body[1..9].copy_from_slice(&now().to_be_bytes());
        body[9] = protocol::index_of(protocol_version).unwrap_or(0);
        body[10..18].copy_from_slice(&fingerprint(key_id));
        rand::fill(&mut body[NONCE]);
        body[CAPABILITIES] = capabilities.0;
        let nonce: [u8; NONCE_LEN] = body[NONCE].try_into().unwrap_or_default();
        if !self.with_book(|book| book.admit_new(nonce, now())) {
            return Err(SessionsFull(self.in_use()));
        }
        let mut token = body.to_vec();
        token.extend_from_slice(&self.mac(&body));
        Ok(URL_SAFE_NO_PAD.encode(token))
    }

    /// Check a token and say what it holds.
    pub fn open(&self, token: &str) -> Result<Session, SessionError> {
        // A token seen before is not verified again (its HMAC and decoding are most of the
        // cost of a request); expiry and deletion are checked every time.
        let cached = self.lock_verified().get(token).cloned();
        let session = match cached {
            Some(session) => session,
            None => {
                let session = self.verify(token)?;
                self.lock_verified().put(token.to_string(), session.clone());
                session
            }
        };
        let now = now();
        if now > session.expires_at {
            return Err(SessionError::Expired);
        }
        match self.with_book(|book| book.touch(session.nonce, session.expires_at, now)) {
            Ok(()) => Ok(session),
            Err(Refusal::Ended) => Err(SessionError::Deleted),
            Err(Refusal::Idle) => Err(SessionError::Idle),
        }
    }

    fn lock_verified(&self) -> std::sync::MutexGuard<'_, lru::LruCache<String, Session>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Check a token's seal and read it.
    fn verify(&self, token: &str) -> Result<Session, SessionError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(token.as_bytes())
            .map_err(|_| SessionError::Malformed)?;
        if bytes.len() != BODY_LEN + MAC_LEN || bytes[0] != FORMAT {
            return Err(SessionError::Malformed);
        }
        let (body, tag) = bytes.split_at(BODY_LEN);
        if !self.secrets().any(|secret| verifies(secret, body, tag)) {
            return Err(SessionError::BadSeal);
        }
        let created =
            u64::from_be_bytes(body[1..9].try_into().map_err(|_| SessionError::Malformed)?);
        let nonce: [u8; NONCE_LEN] = body[NONCE]
            .try_into()
            .map_err(|_| SessionError::Malformed)?;
        let protocol_version = protocol::SUPPORTED
            .get(body[9] as usize)
            .copied()
            .ok_or(SessionError::Malformed)?;
        Ok(Session {
            protocol_version,
            created,
            key_fingerprint: body[10..18]
                .try_into()
                .map_err(|_| SessionError::Malformed)?,
            nonce,
            capabilities: ClientCapabilities(body[CAPABILITIES]),
            expires_at: created.saturating_add(self.ttl.as_secs()),
            fingerprint: fingerprint_of(token),
        })
    }

    /// End a session (client `DELETE`). The token must be valid.
    pub fn delete(&self, token: &str) -> Result<Session, SessionError> {
        self.end_shared(token).map(|(session, _)| session)
    }

    /// End a session here and tell the other instances; the acknowledgement, if any, says
    /// when they know.
    pub fn end_shared(&self, token: &str) -> Result<(Session, Option<EndAck>), SessionError> {
        let session = self.open(token)?;
        self.with_book(|book| book.end(session.nonce, session.expires_at, now()));
        let ack = self
            .on_end
            .get()
            .and_then(|hook| hook(session.nonce, session.expires_at));
        Ok((session, ack))
    }

    /// Seal `body` for `purpose` (a byte that keeps one kind of token from passing for
    /// another): any instance with the same secret can open it, nobody can change it.
    pub fn seal(&self, purpose: u8, body: &[u8]) -> String {
        let mut token = Vec::with_capacity(1 + body.len() + MAC_LEN);
        token.push(purpose);
        token.extend_from_slice(body);
        let mac = self.mac(&token);
        token.extend_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(token)
    }

    /// The body of a token sealed for `purpose`, if it is genuine.
    pub fn unseal(&self, purpose: u8, token: &str) -> Option<Vec<u8>> {
        let bytes = URL_SAFE_NO_PAD.decode(token.as_bytes()).ok()?;
        if bytes.len() < 1 + MAC_LEN || bytes[0] != purpose {
            return None;
        }
        let (signed, tag) = bytes.split_at(bytes.len() - MAC_LEN);
        self.secrets()
            .any(|secret| verifies(secret, signed, tag))
            .then(|| signed[1..].to_vec())
    }

    /// Mark a session ended that another instance ended (shared through Redis).
    pub fn ended_elsewhere(&self, nonce: [u8; NONCE_LEN], expires_at: u64) {
        self.with_book(|book| book.end(nonce, expires_at, now()));
    }

    fn with_book<R>(&self, change: impl FnOnce(&mut SessionBook) -> R) -> R {
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        let result = change(&mut book);
        self.in_use.store(book.in_use(), Ordering::Relaxed);
        result
    }

    fn mac(&self, body: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(body);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }
}

fn fingerprint(key_id: &str) -> [u8; 8] {
    let digest = Sha256::digest(key_id.as_bytes());
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> Sessions {
        Sessions::new(b"test-secret", Duration::from_secs(3600), Limits::default())
    }

    #[test]
    fn round_trip_and_portable_between_instances() {
        let token = sessions()
            .issue(
                "2025-06-18",
                "alice",
                ClientCapabilities::from_json(&serde_json::json!({"sampling": {}})),
            )
            .unwrap();
        // A second instance with the same secret accepts it.
        let s = sessions().open(&token).unwrap();
        assert_eq!(s.protocol_version, "2025-06-18");
        assert!(s.capabilities.allows("sampling/createMessage", None));
        assert!(!s.capabilities.allows("elicitation/create", None));
        assert!(s.belongs_to("alice"));
        assert!(!s.belongs_to("bob"));
        assert!(token.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    }

    #[test]
    fn refuses_forged_malformed_and_deleted() {
        let a = sessions();
        let token = a
            .issue("2025-11-25", "k", ClientCapabilities::default())
            .unwrap();
        let other = Sessions::new(b"other", Duration::from_secs(3600), Limits::default());
        assert_eq!(other.open(&token), Err(SessionError::BadSeal));
        assert_eq!(a.open("not-a-session"), Err(SessionError::Malformed));
        a.delete(&token).unwrap();
        assert_eq!(a.open(&token), Err(SessionError::Deleted));
    }

    #[test]
    fn sealed_bodies_open_only_unchanged_and_for_their_purpose() {
        let a = sessions();
        let token = a.seal(b'R', b"paused call 7");
        assert_eq!(
            sessions().unseal(b'R', &token).as_deref(),
            Some(&b"paused call 7"[..])
        );
        assert_eq!(a.unseal(b'S', &token), None);
        assert_eq!(a.unseal(b'R', &format!("{token}A")), None);
        let other = Sessions::new(b"other", Duration::from_secs(3600), Limits::default());
        assert_eq!(other.unseal(b'R', &token), None);
    }

    #[test]
    fn rotation_accepts_previous_secrets_and_seals_with_the_first() {
        let old = Sessions::new(
            b"old-secret-0001",
            Duration::from_secs(3600),
            Limits::default(),
        );
        let old_token = old
            .issue("2025-11-25", "k", ClientCapabilities::default())
            .unwrap();
        let rotated = Sessions::new(
            b"new-secret-0001",
            Duration::from_secs(3600),
            Limits::default(),
        )
        .accepting([b"old-secret-0001".to_vec()]);
        assert!(rotated.open(&old_token).is_ok());
        let new_token = rotated
            .issue("2025-11-25", "k", ClientCapabilities::default())
            .unwrap();
        // New tokens are sealed with the new secret: an instance still on the old one alone
        // refuses them, one that accepts both takes them.
        assert_eq!(old.open(&new_token), Err(SessionError::BadSeal));
        let both = Sessions::new(
            b"old-secret-0001",
            Duration::from_secs(3600),
            Limits::default(),
        )
        .accepting([b"new-secret-0001".to_vec()]);
        assert!(both.open(&new_token).is_ok());
        assert_eq!(
            rotated.unseal(b'R', &old.seal(b'R', b"x")).as_deref(),
            Some(&b"x"[..])
        );
    }

    #[test]
    fn a_session_ended_elsewhere_is_ended_here() {
        let a = sessions();
        let b = sessions();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hook_seen = seen.clone();
        a.on_end(Arc::new(move |nonce, expires| {
            hook_seen.lock().unwrap().push((nonce, expires));
            None
        }));
        let token = a
            .issue("2025-11-25", "k", ClientCapabilities::default())
            .unwrap();
        assert!(b.open(&token).is_ok());
        a.delete(&token).unwrap();
        let (nonce, expires) = seen.lock().unwrap()[0];
        b.ended_elsewhere(nonce, expires);
        assert_eq!(b.open(&token), Err(SessionError::Deleted));
    }

    #[test]
    fn expires() {
        let s = Sessions::new(b"x", Duration::from_secs(0), Limits::default());
        let mut token = s
            .issue("2025-11-25", "k", ClientCapabilities::default())
            .unwrap();
        // Rewrite the creation time into the past and re-seal.
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[1..9].copy_from_slice(&(now() - 10).to_be_bytes());
        let mac = s.mac(&bytes[..BODY_LEN]);
        bytes[BODY_LEN..].copy_from_slice(&mac);
        token = URL_SAFE_NO_PAD.encode(bytes);
        assert_eq!(s.open(&token), Err(SessionError::Expired));
    }
}
