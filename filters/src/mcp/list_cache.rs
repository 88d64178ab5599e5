//! Serialized list pages (tools, resources, templates, prompts) per (key, list, policy version,
//! catalog version, page).
//!
//! At thousands of requests per second, `tools/list` must cost a lookup and a copy. A change of
//! configuration or catalog moves a version, so stale entries are never hit; the LRU drops them.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct PageKey {
    pub key: Arc<str>,
    pub kind: crate::catalog::Kind,
    pub policy_version: u64,
    pub catalog_version: u64,
    pub offset: usize,
}

pub(super) struct ListCache {
    pages: Mutex<LruCache<PageKey, Arc<str>>>,
}

impl ListCache {
    pub fn new(capacity: usize) -> Self {
        ListCache {
            pages: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    pub fn get(&self, key: &PageKey) -> Option<Arc<str>> {
        self.pages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    pub fn put(&self, key: PageKey, page: Arc<str>) {
        self.pages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(key, page);
    }
}
