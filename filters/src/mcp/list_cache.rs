//! Serialized list pages (tools, resources, templates, prompts) per (key, list, policy version,
//! catalog version, page).
//!
//! At thousands of requests per second, `tools/list` must cost a lookup and a copy. A change of
//! configuration or catalog moves a version, so stale entries are never hit; the LRU drops them.
//! The cache is bounded in entries and in bytes: whatever cursors callers send, it holds at
//! most `max_bytes` of pages.

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
    pages: Mutex<Pages>,
    max_bytes: usize,
}

struct Pages {
    lru: LruCache<PageKey, Arc<str>>,
    bytes: usize,
}

impl ListCache {
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        ListCache {
            pages: Mutex::new(Pages {
                lru: LruCache::new(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN)),
                bytes: 0,
            }),
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pages> {
        self.pages.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &PageKey) -> Option<Arc<str>> {
        self.lock().lru.get(key).cloned()
    }

    pub fn put(&self, key: PageKey, page: Arc<str>) {
        if page.len() > self.max_bytes {
            return;
        }
        let mut pages = self.lock();
        while pages.bytes + page.len() > self.max_bytes {
            match pages.lru.pop_lru() {
                Some((_, old)) => pages.bytes -= old.len(),
                None => break,
            }
        }
        pages.bytes += page.len();
        if let Some((_, replaced)) = pages.lru.push(key, page) {
            pages.bytes -= replaced.len();
        }
    }

    /// Forget every page (a reload made them all stale).
    pub fn clear(&self) {
        let mut pages = self.lock();
        pages.lru.clear();
        pages.bytes = 0;
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(offset: usize) -> PageKey {
        PageKey {
            key: Arc::from("k"),
            kind: crate::catalog::Kind::Tools,
            policy_version: 1,
            catalog_version: 1,
            offset,
        }
    }

    #[test]
    fn bounded_in_bytes_whatever_the_cursors() {
        let cache = ListCache::new(1000, 10_000);
        for offset in 0..1000 {
            cache.put(key(offset), Arc::from("x".repeat(1000)));
            assert!(cache.bytes() <= 10_000);
        }
        assert!(cache.get(&key(999)).is_some());
        assert!(cache.get(&key(0)).is_none());
        // The same key again replaces, and counts once.
        cache.put(key(999), Arc::from("y".repeat(500)));
        assert!(cache.bytes() <= 10_000);
    }
}
