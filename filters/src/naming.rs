//! How upstream tool names become the names clients see.
//!
//! A tool `search` of server `docs` is exposed as `docs__search` (or `search` with an empty
//! prefix). Model APIs accept only `^[a-zA-Z0-9_-]{1,64}$`, so a name that would break that is
//! mapped deterministically: characters outside the set become `_`, and a name that was changed
//! or is longer than 64 characters is cut to 55 characters and suffixed with `_` and the first
//! 8 hex digits of the SHA-256 of the unmapped name. The same upstream name always gives the same
//! exposed name, on every instance and after every restart.

use sha2::{Digest, Sha256};

/// Separator between the server prefix and the tool name.
pub const SEPARATOR: &str = "__";
/// Longest name model APIs accept.
pub const MAX_LEN: usize = 64;
const HASH_HEX: usize = 8;

/// The name a client sees for `tool` of a server whose prefix is `prefix`.
pub fn exposed_name(prefix: &str, tool: &str) -> String {
    let full = if prefix.is_empty() {
        tool.to_string()
    } else {
        format!("{prefix}{SEPARATOR}{tool}")
    };
    let clean: String = full
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean == full && !full.is_empty() && full.len() <= MAX_LEN {
        return full;
    }
    shortened(&clean, &full)
}

/// `clean` cut to fit, plus a hash of the original `full` name so distinct names stay distinct.
fn shortened(clean: &str, full: &str) -> String {
    let digest = Sha256::digest(full.as_bytes());
    let hash: String = digest
        .iter()
        .take(HASH_HEX / 2)
        .map(|b| format!("{b:02x}"))
        .collect();
    let keep = MAX_LEN - HASH_HEX - 1;
    // `clean` is ASCII, so byte slicing is on character boundaries.
    let head = &clean[..clean.len().min(keep)];
    format!("{head}_{hash}")
}

/// Whether `name` is acceptable to model APIs as it is.
pub fn is_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_prefixed() {
        assert_eq!(exposed_name("docs", "search"), "docs__search");
        assert_eq!(exposed_name("", "search"), "search");
        assert_eq!(
            exposed_name("everything", "get-tiny-image"),
            "everything__get-tiny-image"
        );
    }

    #[test]
    fn invalid_characters_are_mapped_and_hashed() {
        let n = exposed_name("docs", "search.pages");
        assert!(n.starts_with("docs__search_pages_"), "{n}");
        assert!(is_valid(&n));
        // Distinct originals that clean to the same text stay distinct.
        assert_ne!(n, exposed_name("docs", "search/pages"));
    }

    #[test]
    fn long_names_are_shortened_deterministically() {
        let tool = "a".repeat(100);
        let n = exposed_name("server", &tool);
        assert_eq!(n.len(), MAX_LEN);
        assert!(is_valid(&n));
        assert_eq!(n, exposed_name("server", &tool));
        assert_ne!(n, exposed_name("server", &"a".repeat(101)));
    }
}
