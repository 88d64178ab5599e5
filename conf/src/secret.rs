//! Values that must never be printed: keys, tokens, upstream credentials.
//!
//! A [`Secret`] deserializes from a plain string (normally `${VAR}`), prints as `[redacted]` in
//! `Debug`, and gives its value only through [`Secret::expose`], so that logging a
//! configuration, or an error that holds part of one, cannot leak it.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretString::from(value.into()))
    }

    /// The value itself, for the one place that needs it (a header sent upstream, a hash).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Compared so that a reload can tell whether an upstream's settings changed.
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

/// `url` with its user information and query string hidden: `https://***@host/path?***`, for
/// messages and logs that must say which upstream without its credentials.
pub fn redact_url(url: &str) -> String {
    let (url, had_query) = match url.split_once('?') {
        Some((before, _)) => (before, true),
        None => (url, false),
    };
    let (url, _) = url.split_once('#').unwrap_or((url, ""));
    let mut out = match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let authority = match authority.rsplit_once('@') {
                Some((_userinfo, host)) => format!("***@{host}"),
                None => authority.to_string(),
            };
            format!("{scheme}://{authority}{path}")
        }
        None => url.to_string(),
    };
    if had_query {
        out.push_str("?***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret::new("hunter2-token");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(secret.expose(), "hunter2-token");
    }

    #[test]
    fn urls_lose_passwords_and_queries() {
        assert_eq!(
            redact_url("https://bob:s3cret@example.com:8443/mcp?token=s3cret#x"),
            "https://***@example.com:8443/mcp?***"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:3001/mcp"),
            "http://127.0.0.1:3001/mcp"
        );
        assert_eq!(redact_url("http://a@b@host/p"), "http://***@host/p");
    }
}
