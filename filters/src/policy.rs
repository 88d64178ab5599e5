//! Which tools (and resources and prompts) a key may use.
//!
//! A key's grants are the de-duplicated union of its own `tools` and those of its tool groups,
//! as exact names or globs. They are compiled against a catalog into a mask over the catalog's
//! tools, once per (configuration, catalog version); after that, checking a call is an index
//! lookup and filtering `tools/list` is a walk over the mask. Deny by default: a tool no grant
//! matches is absent from `tools/list` and refused on `tools/call`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use wildmatch::WildMatch;

use crate::catalog::{Catalog, Kind};

/// Tool patterns granted to one key.
#[derive(Debug)]
pub struct Grants {
    patterns: Vec<WildMatch>,
    /// The compiled mask for the latest catalog seen.
    compiled: ArcSwapOption<Allowed>,
}

/// A key's grants compiled against one catalog version: one mask per list.
#[derive(Debug)]
pub struct Allowed {
    pub catalog_version: u64,
    masks: [Vec<bool>; 4],
}

impl Allowed {
    /// Whether the tool at `index` of the catalog is granted.
    pub fn contains(&self, index: usize) -> bool {
        self.contains_in(Kind::Tools, index)
    }

    /// Whether the item at `index` of the catalog's `kind` list is granted.
    pub fn contains_in(&self, kind: Kind, index: usize) -> bool {
        self.masks[kind as usize]
            .get(index)
            .copied()
            .unwrap_or(false)
    }
}

impl Grants {
    /// Everything (anonymous callers when auth is not enforced).
    pub fn everything() -> Self {
        Grants::from_patterns(["*"])
    }

    /// The union of a key's own tools and its groups' tools.
    pub fn for_key(key: &sluice_conf::Key, groups: &BTreeMap<String, Vec<String>>) -> Self {
        let mut union: BTreeSet<&str> = key.tools.iter().map(String::as_str).collect();
        for group in &key.tool_groups {
            if let Some(tools) = groups.get(group) {
                union.extend(tools.iter().map(String::as_str));
            }
        }
        Grants::from_patterns(union)
    }

    fn from_patterns<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Self {
        Grants {
            patterns: patterns.into_iter().map(WildMatch::new).collect(),
            compiled: ArcSwapOption::empty(),
        }
    }

    /// Whether `name` matches a grant (no catalog needed).
    pub fn matches(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(name))
    }

    /// The grants compiled for `catalog`, computed at most once per catalog version.
    pub fn allowed(&self, catalog: &Catalog) -> Arc<Allowed> {
        if let Some(allowed) = self.compiled.load_full()
            && allowed.catalog_version == catalog.version
        {
            return allowed;
        }
        let masks = Kind::ALL.map(|kind| {
            catalog
                .list(kind)
                .items()
                .iter()
                .map(|t| self.matches(&t.grant_name))
                .collect()
        });
        let allowed = Arc::new(Allowed {
            catalog_version: catalog.version,
            masks,
        });
        self.compiled.store(Some(allowed.clone()));
        allowed
    }
}

/// Patterns from the optional per-request header that narrows (never widens) a key's tools.
#[derive(Debug, Clone)]
pub struct Narrowing(Vec<WildMatch>);

/// Why a narrowing list is refused: it is matched against the catalog on every request, so its
/// size is bounded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NarrowingError {
    #[error("is longer than {MAX_NARROWING_BYTES} bytes")]
    TooLong,
    #[error("has more than {MAX_NARROWING_PATTERNS} names or globs")]
    TooMany,
}

/// The longest narrowing list accepted, in bytes.
pub const MAX_NARROWING_BYTES: usize = 4096;
/// The most names or globs in one narrowing list.
pub const MAX_NARROWING_PATTERNS: usize = 64;

/// Whether a caller with `allowed` and `narrowing` may use the item at `index` of the catalog's
/// `kind` list: the one check a direct call and a Code Mode script's call share.
pub fn may_use(
    allowed: &Allowed,
    narrowing: Option<&Narrowing>,
    kind: crate::catalog::Kind,
    index: usize,
    name: &str,
) -> bool {
    allowed.contains_in(kind, index)
        && (kind != crate::catalog::Kind::Tools || narrowing.is_none_or(|n| n.matches(name)))
}

impl Narrowing {
    /// Parse a comma-separated list of names or globs.
    pub fn parse(header: &str) -> Result<Self, NarrowingError> {
        if header.len() > MAX_NARROWING_BYTES {
            return Err(NarrowingError::TooLong);
        }
        let patterns: Vec<WildMatch> = header
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .take(MAX_NARROWING_PATTERNS + 1)
            .map(WildMatch::new)
            .collect();
        if patterns.len() > MAX_NARROWING_PATTERNS {
            return Err(NarrowingError::TooMany);
        }
        Ok(Narrowing(patterns))
    }

    pub fn matches(&self, name: &str) -> bool {
        self.0.iter().any(|p| p.matches(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogStore;
    use serde_json::json;

    #[test]
    fn union_of_tools_and_groups_compiled_per_catalog() {
        let text = "listen: [{address: 127.0.0.1:1}]\nmcp:\n  tool_groups:\n    crm_read: [crm__lookup_*]\nkeys:\n  - name: a\n    key: aaaaaaaaaa\n    tools: [docs__search, crm__lookup_customer]\n    tool_groups: [crm_read]\n";
        let config = sluice_conf::parse(std::path::Path::new("t"), text, &|_| None).unwrap();
        let grants = Grants::for_key(&config.keys[0], &config.mcp.tool_groups);
        assert_eq!(
            grants.patterns.len(),
            3,
            "duplicates are merged only when identical"
        );
        let store = CatalogStore::new();
        store.set_server_tools(
            "crm",
            0,
            "crm",
            vec![
                json!({"name": "lookup_customer"}),
                json!({"name": "delete_customer"}),
            ],
        );
        store.set_server_tools(
            "docs",
            1,
            "docs",
            vec![json!({"name": "search"}), json!({"name": "write"})],
        );
        let catalog = store.load();
        let allowed = grants.allowed(&catalog);
        let names: Vec<_> = catalog
            .tools()
            .iter()
            .enumerate()
            .filter(|(i, _)| allowed.contains(*i))
            .map(|(_, t)| t.exposed_name.as_str())
            .collect();
        assert_eq!(names, ["crm__lookup_customer", "docs__search"]);
        assert!(
            Arc::ptr_eq(&allowed, &grants.allowed(&catalog)),
            "compiled once per version"
        );
    }

    #[test]
    fn narrowing() {
        let n = Narrowing::parse("docs__*, crm__lookup_customer").unwrap();
        assert!(n.matches("docs__search"));
        assert!(!n.matches("crm__delete_customer"));
        let many = vec!["a*"; MAX_NARROWING_PATTERNS + 1].join(",");
        assert_eq!(Narrowing::parse(&many).err(), Some(NarrowingError::TooMany));
        let long = "a".repeat(MAX_NARROWING_BYTES + 1);
        assert_eq!(Narrowing::parse(&long).err(), Some(NarrowingError::TooLong));
    }
}
