//! Code Mode: a few meta-tools instead of the whole catalog.
//!
//! A key in Code Mode (`code_mode: true`) lists three tools, not hundreds: [`SEARCH`] finds the
//! tools it may use by words, [`STUBS`] shows their Python stubs ([`stubs`]), and [`RUN`] runs a
//! Python script that calls them as functions, in a confined worker process ([`pool`],
//! [`worker`], [`sandbox`]). Each call a script makes goes through the same grants, rate limit,
//! audit and upstream path as a direct `tools/call` (the MCP side is in `mcp::calls`); only what
//! the script prints and returns goes back to the model.
//!
//! This module knows the catalog and the workers; it knows nothing of HTTP or sessions.

pub mod pool;
pub mod protocol;
mod sandbox;
pub mod search;
pub mod stubs;
pub mod worker;

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;
use serde_json::json;
use serde_json::value::RawValue;

use self::pool::Pool;
use self::stubs::Stubs;
use crate::catalog::{Catalog, Kind};

/// Find tools by words.
pub const SEARCH: &str = "search_tools";
/// Read the Python stubs of tools or servers.
pub const STUBS: &str = "get_tool_stubs";
/// Run a Python script that calls tools.
pub const RUN: &str = "run_script";

/// Results `search_tools` returns when not told how many.
const DEFAULT_RESULTS: usize = 10;
const MAX_RESULTS: usize = 50;
/// How many of the best `search_tools` results come with their stubs: enough for a task's few
/// tools, so that the model can write its script without a `get_tool_stubs` round trip (each
/// request of a turn re-sends the client's whole context).
const STUBBED_RESULTS: usize = 5;

pub struct CodeMode {
    pool: Arc<Pool>,
    stubs: ArcSwapOption<Stubs>,
}

impl CodeMode {
    pub fn new(pool: Arc<Pool>) -> Self {
        CodeMode {
            pool,
            stubs: ArcSwapOption::empty(),
        }
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Whether `name` is one of the meta-tools.
    pub fn is_meta(name: &str) -> bool {
        [SEARCH, STUBS, RUN].contains(&name)
    }

    /// The meta-tools' definitions, as `tools/list` shows them.
    ///
    /// Each carries `_meta["anthropic/alwaysLoad"]`: Claude Code otherwise hides MCP tools
    /// behind its ToolSearch tool, and loading three small definitions that way costs a whole
    /// request of the turn, far more than the definitions themselves.
    pub fn definitions() -> &'static [Box<RawValue>] {
        static DEFINITIONS: OnceLock<Vec<Box<RawValue>>> = OnceLock::new();
        DEFINITIONS.get_or_init(|| {
            [
                json!({
                    "name": SEARCH,
                    "description": "Search the tools you can call from run_script, by words (e.g. \"list open issues\"). Returns one line per tool (`namespace.function`, the tool's name, what it does), then the Python stubs of the best matches; get_tool_stubs reads the others. Several searches can run at once.",
                    "inputSchema": {
                        "type": "object",
                        "properties": {
                            "query": {"type": "string", "description": "Words describing what you need."},
                            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_RESULTS, "description": "How many results (default 10)."}
                        },
                        "required": ["query"]
                    },
                    "annotations": {"readOnlyHint": true},
                    "_meta": {"anthropic/alwaysLoad": true}
                }),
                json!({
                    "name": STUBS,
                    "description": "Python stubs (signatures, types, docstrings) of tools you can call from run_script: give tool names from search_tools (`namespace.function` or the tool's name) or whole namespaces (servers).",
                    "inputSchema": {
                        "type": "object",
                        "properties": {
                            "tools": {"type": "array", "items": {"type": "string"}, "description": "Tools, as `namespace.function` or their tool name."},
                            "namespaces": {"type": "array", "items": {"type": "string"}, "description": "Whole namespaces (one per server)."}
                        }
                    },
                    "annotations": {"readOnlyHint": true},
                    "_meta": {"anthropic/alwaysLoad": true}
                }),
                json!({
                    "name": RUN,
                    "description": "Run a Python script in a sandbox. Call tools as functions, `namespace.function(arg=...)` (see get_tool_stubs); each returns the tool's structured result, parsed JSON, or text, and raises ToolError when the tool fails. `parallel(lambda: a.f(x=1), lambda: b.g(y=2))` runs calls concurrently and returns their results in order. What the script prints, and the value of `result` (or of its last expression), is returned. Modules: json, re, math, datetime, collections, itertools, statistics, functools, and a few more; no files, network or processes.",
                    "inputSchema": {
                        "type": "object",
                        "properties": {
                            "script": {"type": "string", "description": "Python 3 source."}
                        },
                        "required": ["script"]
                    },
                    "_meta": {"anthropic/alwaysLoad": true}
                }),
            ]
            .iter()
            .filter_map(|d| serde_json::value::to_raw_value(d).ok())
            .collect()
        })
    }

    /// The stubs of `catalog`, generated once per catalog version.
    pub fn stubs(&self, catalog: &Catalog) -> Arc<Stubs> {
        if let Some(stubs) = self.stubs.load_full()
            && stubs.catalog_version == catalog.version
        {
            return stubs;
        }
        let stubs = Arc::new(Stubs::generate(catalog));
        self.stubs.store(Some(stubs.clone()));
        stubs
    }

    /// `search_tools`: the best matches among the tools at `allowed` indices, one per line, then
    /// the stubs of the first [`STUBBED_RESULTS`].
    pub fn search(
        &self,
        catalog: &Catalog,
        allowed: &[usize],
        query: &str,
        limit: Option<usize>,
    ) -> String {
        let stubs = self.stubs(catalog);
        let tools = catalog.list(Kind::Tools).items();
        let query_words = search::words(query);
        let mut ranked: Vec<(u32, usize)> = allowed
            .iter()
            .filter_map(|&i| {
                let stub = stubs.tools.get(i)?;
                let entry = tools.get(i)?;
                let score = search::score(stub, &entry.exposed_name, query, &query_words);
                (score > 0).then_some((score, i))
            })
            .collect();
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let limit = limit.unwrap_or(DEFAULT_RESULTS).clamp(1, MAX_RESULTS);
        if ranked.is_empty() {
            let mut namespaces: Vec<&str> = allowed
                .iter()
                .filter_map(|&i| stubs.tools.get(i).map(|t| t.namespace.as_str()))
                .collect();
            namespaces.sort_unstable();
            namespaces.dedup();
            return format!(
                "No tool matches `{query}` among the {} you may call. Namespaces: {}.",
                allowed.len(),
                namespaces.join(", ")
            );
        }
        let mut out = format!(
            "{} of {} tools match (namespace.function — tool name — summary):\n",
            ranked.len().min(limit),
            allowed.len()
        );
        let shown: Vec<usize> = ranked.into_iter().take(limit).map(|(_, i)| i).collect();
        for &i in &shown {
            let (stub, entry) = (&stubs.tools[i], &tools[i]);
            out.push_str(&format!(
                "{}.{} — {} — {}\n",
                stub.namespace, stub.function, entry.exposed_name, stub.summary
            ));
        }
        let stubbed = &shown[..shown.len().min(STUBBED_RESULTS)];
        out.push_str(&format!(
            "\nStubs of the first {}{}:\n\n",
            stubbed.len(),
            if shown.len() > stubbed.len() {
                " (get_tool_stubs reads the others)"
            } else {
                ""
            }
        ));
        out.push_str(&stubs.render(stubbed));
        out
    }

    /// `get_tool_stubs`: the Python of the named tools and namespaces, among `allowed`.
    pub fn read_stubs(
        &self,
        catalog: &Catalog,
        allowed: &[usize],
        tools: &[String],
        namespaces: &[String],
    ) -> Result<String, String> {
        let stubs = self.stubs(catalog);
        let items = catalog.list(Kind::Tools).items();
        let mut chosen = Vec::new();
        let mut unknown = Vec::new();
        for name in tools {
            let found = allowed.iter().copied().find(|&i| {
                let stub = &stubs.tools[i];
                items[i].exposed_name == *name
                    || format!("{}.{}", stub.namespace, stub.function) == *name
            });
            match found {
                Some(i) => chosen.push(i),
                None => unknown.push(name.as_str()),
            }
        }
        for namespace in namespaces {
            let before = chosen.len();
            chosen.extend(
                allowed
                    .iter()
                    .copied()
                    .filter(|&i| stubs.tools[i].namespace == *namespace),
            );
            if chosen.len() == before {
                unknown.push(namespace.as_str());
            }
        }
        if chosen.is_empty() {
            return Err(if unknown.is_empty() {
                "name `tools` or `namespaces` to read; search_tools finds them".into()
            } else {
                format!(
                    "no tool you may call is named {}; search_tools finds them",
                    unknown.join(", ")
                )
            });
        }
        chosen.sort_unstable();
        chosen.dedup();
        let mut text = stubs.render(&chosen);
        if !unknown.is_empty() {
            text.push_str(&format!(
                "# Not found (or not granted): {}\n",
                unknown.join(", ")
            ));
        }
        Ok(text)
    }

    /// The namespaces a script gets: `{namespace: {function: [tool name, [[python, schema
    /// name], ...]]}}` of the tools at `allowed`.
    pub fn namespaces(&self, catalog: &Catalog, allowed: &[usize]) -> String {
        let stubs = self.stubs(catalog);
        let items = catalog.list(Kind::Tools).items();
        let mut out = serde_json::Map::new();
        for &i in allowed {
            let (Some(stub), Some(entry)) = (stubs.tools.get(i), items.get(i)) else {
                continue;
            };
            let namespace = out
                .entry(stub.namespace.clone())
                .or_insert_with(|| json!({}));
            namespace[&stub.function] = json!([entry.exposed_name, stub.params]);
        }
        serde_json::Value::Object(out).to_string()
    }
}
