//! The merged catalog: every upstream's tools, resources, resource templates and prompts under
//! the names clients see, and each server's instructions.
//!
//! A [`Catalog`] is an immutable value; [`CatalogStore`] swaps a new one in atomically whenever
//! an upstream's lists change, so request handlers read it without locks. An upstream whose
//! sync fails keeps its last good lists (the store only changes what a successful sync reports).
//!
//! Names (documented in the README):
//! - tools and prompts: `<prefix>__<name>` ([`naming::exposed_name`]);
//! - resources and templates: `<prefix>+<uri>` (so `test://a` of server `docs` is
//!   `docs+test://a`, still a URI); with an empty prefix the URI is unchanged;
//! - what a key's grants match: a tool's or prompt's exposed name, and for a resource or
//!   template `<prefix>__resource:<upstream uri>` (`resource:<uri>` with an empty prefix), so
//!   `docs__*` grants all of server `docs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::watch;

use crate::naming;

/// The separator between a server's prefix and an upstream URI.
pub const URI_SEPARATOR: char = '+';

/// One tool, prompt, resource or template as clients see it.
#[derive(Debug)]
pub struct Entry {
    /// The name (tools, prompts) or URI (resources, templates) clients use.
    pub exposed_name: String,
    /// The configured name of the server that owns it.
    pub server: Arc<str>,
    /// The name or URI at the upstream.
    pub upstream_name: String,
    /// What a key's grants are matched against.
    pub grant_name: String,
    /// The upstream's definition with its name or URI replaced, serialized once.
    pub definition: Box<RawValue>,
}

/// A tool is an [`Entry`] of the tools list.
pub type Tool = Entry;

/// The kinds of list a catalog holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Tools,
    Resources,
    Templates,
    Prompts,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Tools, Kind::Resources, Kind::Templates, Kind::Prompts];

    /// The upstream method that lists this kind, and the member holding the items.
    pub fn list_method(self) -> (&'static str, &'static str) {
        match self {
            Kind::Tools => ("tools/list", "tools"),
            Kind::Resources => ("resources/list", "resources"),
            Kind::Templates => ("resources/templates/list", "resourceTemplates"),
            Kind::Prompts => ("prompts/list", "prompts"),
        }
    }

    /// The field of an item that names it.
    fn key_field(self) -> &'static str {
        match self {
            Kind::Tools | Kind::Prompts => "name",
            Kind::Resources => "uri",
            Kind::Templates => "uriTemplate",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One list of a catalog, with its index by exposed name.
#[derive(Debug, Default)]
pub struct List {
    items: Vec<Arc<Entry>>,
    by_name: HashMap<String, usize>,
}

impl List {
    /// The item clients call `exposed_name`, with its position.
    pub fn find(&self, exposed_name: &str) -> Option<(usize, &Arc<Entry>)> {
        self.by_name.get(exposed_name).map(|&i| (i, &self.items[i]))
    }

    pub fn items(&self) -> &[Arc<Entry>] {
        &self.items
    }
}

/// A server as the catalog knows it.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub name: Arc<str>,
    pub prefix: String,
    /// The `instructions` of its `initialize` result.
    pub instructions: Option<String>,
}

/// An immutable snapshot of every upstream's lists.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Increases with every change; caches key on it.
    pub version: u64,
    lists: [List; 4],
    servers: Vec<ServerInfo>,
}

impl Catalog {
    /// The tool clients call `exposed_name`.
    pub fn get(&self, exposed_name: &str) -> Option<&Arc<Tool>> {
        self.find(exposed_name).map(|(_, t)| t)
    }

    /// The tool clients call `exposed_name`, with its position in [`Catalog::tools`].
    pub fn find(&self, exposed_name: &str) -> Option<(usize, &Arc<Tool>)> {
        self.list(Kind::Tools).find(exposed_name)
    }

    /// Every tool, in server order then upstream order.
    pub fn tools(&self) -> &[Arc<Tool>] {
        self.list(Kind::Tools).items()
    }

    pub fn list(&self, kind: Kind) -> &List {
        &self.lists[kind.index()]
    }

    /// The servers, in configuration order.
    pub fn servers(&self) -> &[ServerInfo] {
        &self.servers
    }

    /// Which server a resource URI a client sent belongs to, and the URI at that server:
    /// a listed resource, a `<prefix>+` URI, or (with an empty prefix) a template's or the
    /// only such server's.
    pub fn route_uri(&self, uri: &str) -> Option<(Arc<str>, String)> {
        if let Some((_, entry)) = self.list(Kind::Resources).find(uri) {
            return Some((entry.server.clone(), entry.upstream_name.clone()));
        }
        for server in &self.servers {
            if server.prefix.is_empty() {
                continue;
            }
            if let Some(rest) = uri
                .strip_prefix(server.prefix.as_str())
                .and_then(|r| r.strip_prefix(URI_SEPARATOR))
            {
                return Some((server.name.clone(), rest.to_string()));
            }
        }
        let unprefixed: Vec<&ServerInfo> = self
            .servers
            .iter()
            .filter(|s| s.prefix.is_empty())
            .collect();
        for template in self.list(Kind::Templates).items() {
            let literal = template.upstream_name.split('{').next().unwrap_or_default();
            if !literal.is_empty()
                && uri.starts_with(literal)
                && unprefixed.iter().any(|s| s.name == template.server)
            {
                return Some((template.server.clone(), uri.to_string()));
            }
        }
        match unprefixed.as_slice() {
            [only] => Some((only.name.clone(), uri.to_string())),
            _ => None,
        }
    }

    /// The URI clients see for `uri` of `server`.
    pub fn exposed_uri(&self, server: &str, uri: &str) -> String {
        let prefix = self
            .servers
            .iter()
            .find(|s| &*s.name == server)
            .map_or("", |s| s.prefix.as_str());
        exposed_uri(prefix, uri)
    }

    pub fn len(&self) -> usize {
        self.tools().len()
    }

    pub fn is_empty(&self) -> bool {
        self.tools().is_empty()
    }
}

/// The URI clients see for an upstream URI under `prefix`.
pub fn exposed_uri(prefix: &str, uri: &str) -> String {
    if prefix.is_empty() {
        uri.to_string()
    } else {
        format!("{prefix}{URI_SEPARATOR}{uri}")
    }
}

/// What a resource or template is granted as.
pub fn resource_grant_name(prefix: &str, uri: &str) -> String {
    if prefix.is_empty() {
        format!("resource:{uri}")
    } else {
        format!("{prefix}{}resource:{uri}", naming::SEPARATOR)
    }
}

/// What one upstream reported, as received.
#[derive(Debug, Clone, Default)]
pub struct ServerLists {
    pub tools: Vec<Value>,
    pub resources: Vec<Value>,
    pub templates: Vec<Value>,
    pub prompts: Vec<Value>,
    pub instructions: Option<String>,
}

impl ServerLists {
    fn items(&self, kind: Kind) -> &[Value] {
        match kind {
            Kind::Tools => &self.tools,
            Kind::Resources => &self.resources,
            Kind::Templates => &self.templates,
            Kind::Prompts => &self.prompts,
        }
    }
}

#[derive(Debug, Clone)]
struct ServerEntry {
    order: usize,
    prefix: String,
    lists: ServerLists,
}

/// Catalog versions are unique in the process, not only per store, so a policy compiled
/// against one store's catalog is never mistaken for another's.
static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

/// Holds the current [`Catalog`] and rebuilds it when an upstream reports new lists.
#[derive(Debug)]
pub struct CatalogStore {
    current: ArcSwap<Catalog>,
    servers: Mutex<BTreeMap<Arc<str>, ServerEntry>>,
    /// The version of every catalog published, for those who wait for changes.
    changes: watch::Sender<u64>,
}

impl Default for CatalogStore {
    fn default() -> Self {
        CatalogStore {
            current: ArcSwap::default(),
            servers: Mutex::default(),
            changes: watch::Sender::new(0),
        }
    }
}

impl CatalogStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The catalog as of now; cheap, lock-free.
    pub fn load(&self) -> Arc<Catalog> {
        self.current.load_full()
    }

    /// Changes as they are published.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Replace the tools of `server` (position `order` in the config, exposed under `prefix`)
    /// and publish the merged catalog; its other lists stay.
    pub fn set_server_tools(&self, server: &str, order: usize, prefix: &str, tools: Vec<Value>) {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        let mut lists = servers
            .get(server)
            .map(|e| e.lists.clone())
            .unwrap_or_default();
        lists.tools = tools;
        self.insert(&mut servers, server, order, prefix, lists);
    }

    /// Replace everything `server` reported and publish the merged catalog.
    pub fn set_server(&self, server: &str, order: usize, prefix: &str, lists: ServerLists) {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        self.insert(&mut servers, server, order, prefix, lists);
    }

    fn insert(
        &self,
        servers: &mut BTreeMap<Arc<str>, ServerEntry>,
        server: &str,
        order: usize,
        prefix: &str,
        lists: ServerLists,
    ) {
        servers.insert(
            Arc::from(server),
            ServerEntry {
                order,
                prefix: prefix.to_string(),
                lists,
            },
        );
        self.publish(servers);
    }

    /// Put the servers in the configuration's order (`names`, first to last) without
    /// touching their lists: a reload that removes or moves a server reorders the rest.
    pub fn reorder(&self, names: &[&str]) {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        for (order, name) in names.iter().enumerate() {
            if let Some(entry) = servers.get_mut(*name)
                && entry.order != order
            {
                entry.order = order;
                changed = true;
            }
        }
        if changed {
            self.publish(&servers);
        }
    }

    /// Forget a server (removed from the configuration).
    pub fn remove_server(&self, server: &str) {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        if servers.remove(server).is_some() {
            self.publish(&servers);
        }
    }

    fn publish(&self, servers: &BTreeMap<Arc<str>, ServerEntry>) {
        let version = NEXT_VERSION.fetch_add(1, Ordering::Relaxed);
        let mut ordered: Vec<(&Arc<str>, &ServerEntry)> = servers.iter().collect();
        ordered.sort_by_key(|(_, s)| s.order);
        let mut catalog = Catalog {
            version,
            ..Catalog::default()
        };
        for (server, entry) in ordered {
            catalog.servers.push(ServerInfo {
                name: server.clone(),
                prefix: entry.prefix.clone(),
                instructions: entry.lists.instructions.clone(),
            });
            for kind in Kind::ALL {
                let list = &mut catalog.lists[kind.index()];
                for def in entry.lists.items(kind) {
                    add_entry(list, kind, server, &entry.prefix, def);
                }
            }
        }
        self.current.store(Arc::new(catalog));
        self.changes.send_replace(version);
    }
}

/// Add one upstream item to `list` under its exposed name.
fn add_entry(list: &mut List, kind: Kind, server: &Arc<str>, prefix: &str, def: &Value) {
    let field = kind.key_field();
    let Some(upstream_name) = def.get(field).and_then(Value::as_str) else {
        tracing::warn!(server = %server, "skipping an item without `{field}`");
        return;
    };
    let (mut exposed, grant_name) = match kind {
        Kind::Tools | Kind::Prompts => {
            let name = naming::exposed_name(prefix, upstream_name);
            (name.clone(), name)
        }
        Kind::Resources | Kind::Templates => (
            exposed_uri(prefix, upstream_name),
            resource_grant_name(prefix, upstream_name),
        ),
    };
    if list.by_name.contains_key(&exposed) {
        if matches!(kind, Kind::Resources | Kind::Templates) {
            tracing::warn!(server = %server, uri = upstream_name, "duplicate resource URI; skipped");
            return;
        }
        // Two servers map to one name (empty prefixes, or a shortened clash): the later one
        // gets a name derived from its server too.
        exposed = naming::exposed_name(prefix, &format!("{server}/{upstream_name}"));
        if list.by_name.contains_key(&exposed) {
            tracing::warn!(server = %server, name = upstream_name, "duplicate name; skipped");
            return;
        }
    }
    let mut def = def.clone();
    def[field] = Value::String(exposed.clone());
    let Ok(definition) = serde_json::value::to_raw_value(&def) else {
        return;
    };
    list.by_name.insert(exposed.clone(), list.items.len());
    list.items.push(Arc::new(Entry {
        exposed_name: exposed,
        server: server.clone(),
        upstream_name: upstream_name.to_string(),
        grant_name,
        definition,
    }));
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
    fn resources_and_prompts_are_namespaced_and_routed_back() {
        let store = CatalogStore::new();
        let lists = ServerLists {
            resources: vec![json!({"uri": "test://a", "name": "a"})],
            templates: vec![json!({"uriTemplate": "test://t/{id}", "name": "t"})],
            prompts: vec![json!({"name": "greet"})],
            ..ServerLists::default()
        };
        store.set_server("docs", 0, "docs", lists.clone());
        store.set_server("plain", 1, "", lists);
        let c = store.load();
        let (_, r) = c.list(Kind::Resources).find("docs+test://a").unwrap();
        assert_eq!(r.grant_name, "docs__resource:test://a");
        assert!(r.definition.get().contains("docs+test://a"));
        assert!(c.list(Kind::Prompts).find("docs__greet").is_some());
        assert!(c.list(Kind::Prompts).find("greet").is_some());
        assert_eq!(
            c.route_uri("docs+test://t/7"),
            Some((Arc::from("docs"), "test://t/7".to_string()))
        );
        assert_eq!(
            c.route_uri("test://t/7"),
            Some((Arc::from("plain"), "test://t/7".to_string()))
        );
        assert_eq!(
            c.route_uri("test://a"),
            Some((Arc::from("plain"), "test://a".to_string()))
        );
    }

    #[test]
    fn version_moves_on_every_change() {
        let store = CatalogStore::new();
        let v0 = store.load().version;
        store.set_server_tools("a", 0, "a", vec![]);
        assert!(store.load().version > v0);
    }
}
