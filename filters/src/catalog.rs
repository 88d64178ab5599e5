//! The merged tool catalog: every upstream's tools under their exposed names.
//!
//! A [`Catalog`] is an immutable value; [`CatalogStore`] swaps a new one in atomically whenever
//! an upstream's tool list changes, so request handlers read it without locks. An upstream whose
//! sync fails keeps its last good tools (the store only changes what a successful sync reports).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::naming;

/// One tool as clients see it.
#[derive(Debug)]
pub struct Tool {
    /// The name clients use (`<prefix>__<tool>`).
    pub exposed_name: String,
    /// The configured name of the server that owns it.
    pub server: Arc<str>,
    /// The tool's name at the upstream.
    pub upstream_name: String,
    /// The upstream's tool definition with `name` replaced by the exposed name, serialized once.
    pub definition: Box<RawValue>,
}

/// An immutable snapshot of every upstream's tools.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Increases with every change; caches key on it.
    pub version: u64,
    tools: Vec<Arc<Tool>>,
    by_name: HashMap<String, usize>,
}

impl Catalog {
    /// The tool clients call `exposed_name`.
    pub fn get(&self, exposed_name: &str) -> Option<&Arc<Tool>> {
        self.by_name.get(exposed_name).map(|&i| &self.tools[i])
    }

    /// The tool clients call `exposed_name`, with its position in [`Catalog::tools`].
    pub fn find(&self, exposed_name: &str) -> Option<(usize, &Arc<Tool>)> {
        self.by_name.get(exposed_name).map(|&i| (i, &self.tools[i]))
    }

    /// Every tool, in server order then upstream order.
    pub fn tools(&self) -> &[Arc<Tool>] {
        &self.tools
    }

    pub fn len(&self) -> usize {
        self.tools.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}

/// The tools one upstream reported, as received.
#[derive(Debug, Clone)]
struct ServerTools {
    order: usize,
    prefix: String,
    tools: Vec<Value>,
}

/// Catalog versions are unique in the process, not only per store, so a policy compiled
/// against one store's catalog is never mistaken for another's.
static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

/// Holds the current [`Catalog`] and rebuilds it when an upstream reports new tools.
#[derive(Debug, Default)]
pub struct CatalogStore {
    current: ArcSwap<Catalog>,
    servers: Mutex<BTreeMap<Arc<str>, ServerTools>>,
}

impl CatalogStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The catalog as of now; cheap, lock-free.
    pub fn load(&self) -> Arc<Catalog> {
        self.current.load_full()
    }

    /// Replace the tools of `server` (position `order` in the config, exposed under `prefix`)
    /// and publish the merged catalog.
    pub fn set_server_tools(&self, server: &str, order: usize, prefix: &str, tools: Vec<Value>) {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        servers.insert(
            Arc::from(server),
            ServerTools {
                order,
                prefix: prefix.to_string(),
                tools,
            },
        );
        self.publish(&servers);
    }

    /// Forget a server (removed from the configuration).
    pub fn remove_server(&self, server: &str) {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        if servers.remove(server).is_some() {
            self.publish(&servers);
        }
    }

    fn publish(&self, servers: &BTreeMap<Arc<str>, ServerTools>) {
        let version = NEXT_VERSION.fetch_add(1, Ordering::Relaxed);
        let mut ordered: Vec<(&Arc<str>, &ServerTools)> = servers.iter().collect();
        ordered.sort_by_key(|(_, s)| s.order);
        let mut catalog = Catalog {
            version,
            ..Catalog::default()
        };
        for (server, entry) in ordered {
            for def in &entry.tools {
                let Some(upstream_name) = def.get("name").and_then(Value::as_str) else {
                    tracing::warn!(server = %server, "skipping a tool without a name");
                    continue;
                };
                let mut exposed = naming::exposed_name(&entry.prefix, upstream_name);
                if catalog.by_name.contains_key(&exposed) {
                    // Two servers map to one name (empty prefixes, or a shortened clash):
                    // the later one gets a name derived from its server too.
                    exposed =
                        naming::exposed_name(&entry.prefix, &format!("{server}/{upstream_name}"));
                    if catalog.by_name.contains_key(&exposed) {
                        tracing::warn!(server = %server, tool = upstream_name, "duplicate tool name; skipped");
                        continue;
                    }
                }
                let mut def = def.clone();
                def["name"] = Value::String(exposed.clone());
                let Ok(definition) = serde_json::value::to_raw_value(&def) else {
                    continue;
                };
                catalog.by_name.insert(exposed.clone(), catalog.tools.len());
                catalog.tools.push(Arc::new(Tool {
                    exposed_name: exposed,
                    server: server.clone(),
                    upstream_name: upstream_name.to_string(),
                    definition,
                }));
            }
        }
        self.current.store(Arc::new(catalog));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merges_servers_in_config_order_and_renames() {
        let store = CatalogStore::new();
        store.set_server_tools(
            "b",
            1,
            "b",
            vec![json!({"name": "echo", "inputSchema": {}})],
        );
        store.set_server_tools(
            "a",
            0,
            "a",
            vec![json!({"name": "echo", "inputSchema": {}})],
        );
        let c = store.load();
        let names: Vec<_> = c.tools().iter().map(|t| t.exposed_name.as_str()).collect();
        assert_eq!(names, ["a__echo", "b__echo"]);
        let t = c.get("b__echo").unwrap();
        assert_eq!(&*t.server, "b");
        assert_eq!(t.upstream_name, "echo");
        assert!(t.definition.get().contains("\"b__echo\""));
    }

    #[test]
    fn empty_prefix_collisions_stay_distinct() {
        let store = CatalogStore::new();
        store.set_server_tools("a", 0, "", vec![json!({"name": "echo"})]);
        store.set_server_tools("b", 1, "", vec![json!({"name": "echo"})]);
        let c = store.load();
        assert_eq!(c.len(), 2);
        assert!(c.get("echo").is_some());
    }

    #[test]
    fn version_moves_on_every_change() {
        let store = CatalogStore::new();
        let v0 = store.load().version;
        store.set_server_tools("a", 0, "a", vec![]);
        assert!(store.load().version > v0);
    }
}
