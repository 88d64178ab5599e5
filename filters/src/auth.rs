//! Virtual keys: who is calling.
//!
//! A key arrives as `Authorization: Bearer <key>`, `x-api-key` or `x-sluice-key`. Sluice keeps
//! only SHA-256 hashes of keys; a presented key is hashed and looked up, and the stored hash is
//! compared in constant time. Key material is never logged: errors and audit records name the
//! key by its configured `name`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};
use sluice_conf::Config;
use subtle::ConstantTimeEq;

use crate::policy::Grants;

/// Headers a key may arrive in, besides `Authorization: Bearer`.
/// Made once: looking a header up by a `&str` name parses the name every time.
const KEY_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("x-sluice-key"),
    HeaderName::from_static("x-api-key"),
];

/// A configured key, without its secret.
#[derive(Debug)]
pub struct KeyEntry {
    pub name: Arc<str>,
    hash: [u8; 32],
    disabled: bool,
    expires_at: Option<SystemTime>,
    pub requests_per_minute: Option<u32>,
    pub grants: Grants,
    /// Lists Code Mode's meta-tools instead of the catalog.
    pub code_mode: bool,
    /// Model names or globs the key may ask for; `None`: any (a key granted `*`, or the
    /// anonymous caller).
    pub models: Option<Vec<wildmatch::WildMatch>>,
    pub tokens_per_minute: Option<u64>,
    pub budget: Option<sluice_conf::Budget>,
}

impl KeyEntry {
    /// The caller when `enforce_auth` is off and no key was sent: every tool, no limits.
    pub fn unrestricted() -> Self {
        KeyEntry {
            name: "anonymous".into(),
            hash: [0; 32],
            disabled: false,
            expires_at: None,
            requests_per_minute: None,
            grants: Grants::everything(),
            code_mode: false,
            models: None,
            tokens_per_minute: None,
            budget: None,
        }
    }
}

impl KeyEntry {
    /// Whether the key may ask for `model`.
    pub fn may_use_model(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| p.matches(model)))
    }
}

/// Why a request has no usable key. The messages never contain key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error(
        "no virtual key: send `Authorization: Bearer <key>` (or `x-api-key: <key>`, `x-sluice-key: <key>`)"
    )]
    Missing,
    #[error("the virtual key is not valid; check it with the gateway's operator")]
    Unknown,
    #[error("the virtual key `{0}` is disabled")]
    Disabled(String),
    #[error("the virtual key `{0}` has expired")]
    Expired(String),
}

/// Every configured key, by hash.
#[derive(Debug)]
pub struct KeyStore {
    by_hash: HashMap<[u8; 32], Arc<KeyEntry>>,
    enforce: bool,
    anonymous: Arc<KeyEntry>,
}

impl KeyStore {
    /// Build from a validated configuration.
    pub fn from_config(config: &Config) -> Self {
        let mut by_hash = HashMap::new();
        for key in &config.keys {
            let hash = match (&key.key, &key.key_sha256) {
                (Some(secret), _) => hash_key(secret.expose()),
                (None, Some(hex)) => match decode_hex(hex) {
                    Some(h) => h,
                    None => continue,
                },
                (None, None) => continue,
            };
            let expires_at = key
                .expires_at
                .as_deref()
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
            let entry = KeyEntry {
                name: key.name.as_str().into(),
                hash,
                disabled: key.disabled,
                expires_at,
                requests_per_minute: key.rate_limit.as_ref().and_then(|l| l.requests_per_minute),
                grants: Grants::for_key(key, &config.mcp.tool_groups),
                code_mode: key.code_mode,
                // `*` among the patterns grants every model: no glob to match per request.
                models: (!key.models.iter().any(|m| m == "*")).then(|| {
                    key.models
                        .iter()
                        .map(|m| wildmatch::WildMatch::new(m))
                        .collect()
                }),
                tokens_per_minute: key.rate_limit.as_ref().and_then(|l| l.tokens_per_minute),
                budget: key.budget.clone(),
            };
            by_hash.insert(hash, Arc::new(entry));
        }
        KeyStore {
            by_hash,
            enforce: config.enforce_auth,
            anonymous: Arc::new(KeyEntry::unrestricted()),
        }
    }

    /// The key named `name` now (for long-lived streams that outlive a reload); `None` if it
    /// is gone or can no longer be used.
    pub fn by_name(&self, name: &str) -> Option<Arc<KeyEntry>> {
        if *self.anonymous.name == *name && !self.enforce {
            return Some(self.anonymous.clone());
        }
        self.by_hash
            .values()
            .find(|k| *k.name == *name)
            .filter(|k| !k.disabled && k.expires_at.is_none_or(|t| SystemTime::now() < t))
            .cloned()
    }

    /// Find the caller's key in `headers`.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<KeyEntry>, AuthError> {
        let Some(presented) = presented_key(headers) else {
            return if self.enforce {
                Err(AuthError::Missing)
            } else {
                Ok(self.anonymous.clone())
            };
        };
        let hash = hash_key(presented);
        let entry = self.by_hash.get(&hash).ok_or(AuthError::Unknown)?;
        if !bool::from(entry.hash.ct_eq(&hash)) {
            return Err(AuthError::Unknown);
        }
        if entry.disabled {
            return Err(AuthError::Disabled(entry.name.to_string()));
        }
        if entry.expires_at.is_some_and(|t| SystemTime::now() >= t) {
            return Err(AuthError::Expired(entry.name.to_string()));
        }
        Ok(entry.clone())
    }
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, token) = value.split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
            return Some(token.trim());
        }
    }
    KEY_HEADERS
        .iter()
        .find_map(|h| headers.get(h).and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// SHA-256 of a key, the only form in which Sluice keeps it.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn decode_hex(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::path::Path;

    fn store(extra: &str) -> KeyStore {
        let text = format!(
            "listen: [{{address: 127.0.0.1:1}}]\nkeys:\n  - name: alice\n    key: alice-secret-1\n  - name: bob\n    key_sha256: {}\n  - name: old\n    key: old-secret-1\n    disabled: true\n{extra}",
            "a".repeat(64)
        );
        KeyStore::from_config(&sluice_conf::parse(Path::new("t.yaml"), &text, &|_| None).unwrap())
    }

    fn with(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn accepts_each_header_form() {
        let s = store("");
        assert_eq!(
            s.authenticate(&with("authorization", "Bearer alice-secret-1"))
                .unwrap()
                .name
                .as_ref(),
            "alice"
        );
        assert_eq!(
            s.authenticate(&with("x-api-key", "alice-secret-1"))
                .unwrap()
                .name
                .as_ref(),
            "alice"
        );
        assert_eq!(
            s.authenticate(&with("x-sluice-key", "alice-secret-1"))
                .unwrap()
                .name
                .as_ref(),
            "alice"
        );
    }

    #[test]
    fn refuses_missing_unknown_disabled() {
        let s = store("");
        assert_eq!(
            s.authenticate(&HeaderMap::new()).unwrap_err(),
            AuthError::Missing
        );
        assert_eq!(
            s.authenticate(&with("authorization", "Bearer nope"))
                .unwrap_err(),
            AuthError::Unknown
        );
        assert_eq!(
            s.authenticate(&with("x-sluice-key", "old-secret-1"))
                .unwrap_err(),
            AuthError::Disabled("old".into())
        );
    }

    #[test]
    fn hashed_keys_match() {
        let hex: String = hash_key("carol-secret")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let text = format!(
            "listen: [{{address: 127.0.0.1:1}}]\nkeys:\n  - name: carol\n    key_sha256: {hex}\n"
        );
        let s = KeyStore::from_config(
            &sluice_conf::parse(Path::new("t.yaml"), &text, &|_| None).unwrap(),
        );
        assert_eq!(
            s.authenticate(&with("x-api-key", "carol-secret"))
                .unwrap()
                .name
                .as_ref(),
            "carol"
        );
    }

    #[test]
    fn expired_keys_are_refused() {
        let s =
            store("  - name: gone\n    key: gone-secret-1\n    expires_at: 2001-01-01T00:00:00Z\n");
        assert_eq!(
            s.authenticate(&with("x-api-key", "gone-secret-1"))
                .unwrap_err(),
            AuthError::Expired("gone".into())
        );
    }
}
