//! Python stubs of the catalog's tools, generated from their JSON Schemas once per catalog
//! version: a namespace (a class) per server, a function per tool with type hints, defaults and
//! a docstring, so that a model can read the API it scripts against.
//!
//! Types: `string` → `str`, `integer` → `int`, `number` → `float`, `boolean` → `bool`,
//! arrays → `list[...]`, objects → `dict` (their fields listed in the docstring), `enum` and
//! `const` → `Literal[...]`, `anyOf`/`oneOf` and `["x", "null"]` → unions, `$ref` to `$defs`
//! or `definitions` resolved. Parameter names that are not Python identifiers get one, and the
//! script's call is mapped back to the schema's name.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use crate::catalog::{Catalog, Kind};

/// The stub of one tool, at the same index as the catalog's tool.
#[derive(Debug, Clone)]
pub struct ToolStub {
    /// The server's namespace in scripts.
    pub namespace: String,
    /// The function's name in that namespace.
    pub function: String,
    /// `(Python name, schema name)` of each parameter, required ones first.
    pub params: Vec<(String, String)>,
    /// The first line of the description.
    pub summary: String,
    /// The function's definition with its docstring, indented for its namespace class.
    pub text: String,
    /// Lower-case words of its names and description, for search.
    pub words: HashSet<String>,
}

/// Every tool's stub for one catalog version.
#[derive(Debug, Default)]
pub struct Stubs {
    pub catalog_version: u64,
    pub tools: Vec<ToolStub>,
    /// Namespace → the server it stands for.
    pub namespaces: HashMap<String, String>,
}

/// How deep nested schemas and `$ref`s are followed.
const MAX_DEPTH: usize = 6;
/// Names scripts already have.
const RESERVED: &[&str] = &["parallel", "call_tool", "result", "print", "ToolError"];

impl Stubs {
    pub fn generate(catalog: &Catalog) -> Self {
        let mut namespaces = HashMap::new();
        let mut server_namespace: HashMap<&str, String> = HashMap::new();
        for server in catalog.servers() {
            let base = if server.prefix.is_empty() {
                &*server.name
            } else {
                &server.prefix
            };
            let mut name = identifier(base);
            if RESERVED.contains(&name.as_str()) || namespaces.contains_key(&name) {
                name = format!("{name}_tools");
            }
            namespaces.insert(name.clone(), server.name.to_string());
            server_namespace.insert(&server.name, name);
        }
        let mut taken: HashSet<(String, String)> = HashSet::new();
        let tools = catalog
            .list(Kind::Tools)
            .items()
            .iter()
            .map(|entry| {
                let namespace = server_namespace
                    .get(&*entry.server)
                    .cloned()
                    .unwrap_or_else(|| identifier(&entry.server));
                let mut function = identifier(&entry.upstream_name);
                while !taken.insert((namespace.clone(), function.clone())) {
                    function.push('_');
                }
                let definition: Value =
                    serde_json::from_str(entry.definition.get()).unwrap_or_default();
                stub(namespace, function, &entry.exposed_name, &definition)
            })
            .collect();
        Stubs {
            catalog_version: catalog.version,
            tools,
            namespaces,
        }
    }

    /// The Python text of the given tools (indices into the catalog), grouped by namespace.
    pub fn render(&self, indices: &[usize]) -> String {
        let mut by_namespace: Vec<(&str, Vec<&ToolStub>)> = Vec::new();
        for &i in indices {
            let Some(tool) = self.tools.get(i) else {
                continue;
            };
            match by_namespace.iter_mut().find(|(n, _)| *n == tool.namespace) {
                Some((_, tools)) => tools.push(tool),
                None => by_namespace.push((&tool.namespace, vec![tool])),
            }
        }
        let mut out = String::new();
        for (namespace, tools) in by_namespace {
            let server = self.namespaces.get(namespace).map_or(namespace, |s| s);
            out.push_str(&format!(
                "class {namespace}:\n    \"\"\"Tools of the MCP server `{server}`: call them as `{namespace}.<tool>(...)`.\"\"\"\n\n"
            ));
            for tool in tools {
                out.push_str(&tool.text);
                out.push('\n');
            }
        }
        out
    }
}

fn stub(namespace: String, function: String, exposed: &str, definition: &Value) -> ToolStub {
    let description = definition
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim();
    let summary = summary_of(description);
    let schema = definition.get("inputSchema").cloned().unwrap_or_default();
    let defs = Defs::of(&schema);
    let properties = schema
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let required_order: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let required: HashSet<&str> = required_order.iter().copied().collect();
    // Required parameters in the order the schema requires them, then the optional ones.
    let mut ordered: Vec<(&String, &Value)> = properties.iter().collect();
    ordered.sort_by_key(|(name, _)| {
        required_order
            .iter()
            .position(|r| *r == name.as_str())
            .unwrap_or(usize::MAX)
    });

    let mut params = Vec::new();
    let mut signature = Vec::new();
    let mut docs = Vec::new();
    let mut used = HashSet::new();
    for (name, property) in ordered {
        let mut python = identifier(name);
        while !used.insert(python.clone()) {
            python.push('_');
        }
        let hint = defs.python_type(property, 0);
        let is_required = required.contains(name.as_str());
        let default = property.get("default");
        signature.push(match (is_required, default) {
            (true, _) => format!("{python}: {hint}"),
            (false, Some(value)) => format!("{python}: {hint} = {}", python_literal(value)),
            (false, None) if hint.split(" | ").any(|t| t == "None") => {
                format!("{python}: {hint} = None")
            }
            (false, None) => format!("{python}: {hint} | None = None"),
        });
        let mut line = format!("            {python}");
        if python != *name {
            line.push_str(&format!(" (`{name}`)"));
        }
        line.push_str(if is_required {
            ": required."
        } else {
            ": optional."
        });
        if let Some(text) = property.get("description").and_then(Value::as_str) {
            line.push(' ');
            line.push_str(&one_line(text, 300));
        }
        if let Some(fields) = defs.fields(property) {
            line.push_str(&format!(" Fields: {fields}."));
        }
        docs.push(line);
        params.push((python, name.clone()));
    }
    let returns = definition
        .get("outputSchema")
        .map(|s| {
            let defs = Defs::of(s);
            let fields = defs.fields(s).unwrap_or_default();
            (
                defs.python_type(s, 0),
                if fields.is_empty() {
                    String::new()
                } else {
                    format!("\n\n        Returns:\n            {fields}")
                },
            )
        })
        .unwrap_or_else(|| ("Any".to_string(), String::new()));

    let mut text = format!(
        "    @staticmethod\n    def {function}({}) -> {}:\n        \"\"\"",
        signature.join(", "),
        returns.0
    );
    text.push_str(&docstring(description));
    text.push_str(&format!("\n\n        Tool `{exposed}`."));
    if !docs.is_empty() {
        text.push_str("\n\n        Args:\n");
        text.push_str(&docs.join("\n"));
    }
    text.push_str(&returns.1);
    text.push_str("\n        \"\"\"\n");

    let mut words = HashSet::new();
    for source in [exposed, description, &function, &namespace] {
        words.extend(super::search::words(source));
    }
    ToolStub {
        namespace,
        function,
        params,
        summary,
        text,
        words,
    }
}

/// A one-line summary: the description's first sentence (of its first paragraph), at most
/// about 160 characters.
fn summary_of(description: &str) -> String {
    let paragraph: Vec<&str> = description
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .collect();
    let paragraph = paragraph.join(" ");
    let sentence = match paragraph.find(". ") {
        Some(end) => &paragraph[..=end],
        None => paragraph.as_str(),
    };
    one_line(sentence.trim(), 160)
}

/// A description made safe for a docstring, indented.
fn docstring(description: &str) -> String {
    if description.is_empty() {
        return "(no description)".into();
    }
    let text: String = description.chars().take(2000).collect();
    text.replace('\\', "\\\\")
        .replace("\"\"\"", "\\\"\\\"\\\"")
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                l.to_string()
            } else {
                format!("        {l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn one_line(text: &str, max: usize) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out: String = joined.chars().take(max).collect();
    if joined.chars().count() > max {
        out.push('…');
    }
    out.replace("\"\"\"", "'''")
}

/// A Python identifier for `name`: other characters become `_`; keywords get a trailing `_`;
/// a leading digit or underscore gets a `t` in front (scripts may not use names that start
/// with `_`).
pub fn identifier(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit() || c == '_') {
        out.insert(0, 't');
    }
    if KEYWORDS.contains(&out.as_str()) {
        out.push('_');
    }
    out
}

const KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield", "match", "case", "type",
];

fn python_literal(value: &Value) -> String {
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        other => one_line(&other.to_string(), 80),
    }
}

/// A schema's `$defs` / `definitions`, to resolve `$ref`s.
struct Defs<'a> {
    defs: Option<&'a Map<String, Value>>,
}

impl<'a> Defs<'a> {
    fn of(schema: &'a Value) -> Self {
        Defs {
            defs: schema
                .get("$defs")
                .or_else(|| schema.get("definitions"))
                .and_then(Value::as_object),
        }
    }

    fn resolve<'v>(&'v self, schema: &'v Value) -> &'v Value {
        let mut schema = schema;
        for _ in 0..MAX_DEPTH {
            let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
                break;
            };
            let name = reference.rsplit('/').next().unwrap_or_default();
            match self.defs.and_then(|d| d.get(name)) {
                Some(target) => schema = target,
                None => break,
            }
        }
        schema
    }

    fn python_type(&self, schema: &Value, depth: usize) -> String {
        if depth > MAX_DEPTH {
            return "Any".into();
        }
        let schema = self.resolve(schema);
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            let literals: Vec<String> = values.iter().map(python_literal).collect();
            return format!("Literal[{}]", literals.join(", "));
        }
        if let Some(value) = schema.get("const") {
            return format!("Literal[{}]", python_literal(value));
        }
        for union in ["anyOf", "oneOf"] {
            if let Some(options) = schema.get(union).and_then(Value::as_array) {
                let mut types: Vec<String> = Vec::new();
                for option in options {
                    let t = self.python_type(option, depth + 1);
                    if !types.contains(&t) {
                        types.push(t);
                    }
                }
                return types.join(" | ");
            }
        }
        match schema.get("type") {
            Some(Value::String(t)) => self.simple_type(t, schema, depth),
            Some(Value::Array(types)) => types
                .iter()
                .filter_map(Value::as_str)
                .map(|t| self.simple_type(t, schema, depth))
                .collect::<Vec<_>>()
                .join(" | "),
            _ if schema.get("properties").is_some() => "dict".into(),
            _ => "Any".into(),
        }
    }

    fn simple_type(&self, t: &str, schema: &Value, depth: usize) -> String {
        match t {
            "string" => "str".into(),
            "integer" => "int".into(),
            "number" => "float".into(),
            "boolean" => "bool".into(),
            "null" => "None".into(),
            "array" => match schema.get("items") {
                Some(items) => format!("list[{}]", self.python_type(items, depth + 1)),
                None => "list".into(),
            },
            "object" => "dict".into(),
            _ => "Any".into(),
        }
    }

    /// `{name: type, name?: type}` of an object schema's properties (`?`: optional).
    fn fields(&self, schema: &Value) -> Option<String> {
        let schema = self.resolve(schema);
        let schema = match schema.get("type").and_then(Value::as_str) {
            Some("array") => self.resolve(schema.get("items")?),
            _ => schema,
        };
        let properties = schema.get("properties")?.as_object()?;
        let required: HashSet<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let fields: Vec<String> = properties
            .iter()
            .take(30)
            .map(|(name, property)| {
                let mark = if required.contains(name.as_str()) {
                    ""
                } else {
                    "?"
                };
                format!("{name}{mark}: {}", self.python_type(property, 1))
            })
            .collect();
        Some(format!("{{{}}}", fields.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_schema_becomes_a_typed_function_with_its_docs() {
        let definition = json!({
            "name": "create_issue",
            "description": "Create an issue.\nMore text.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "repo": {"type": "string", "description": "owner/name"},
                    "labels": {"type": "array", "items": {"type": "string"}},
                    "state": {"enum": ["open", "closed"], "default": "open"},
                    "max-results": {"type": ["integer", "null"]},
                    "assignee": {"$ref": "#/$defs/user"},
                    "class": {"type": "boolean"}
                },
                "required": ["repo", "assignee"],
                "$defs": {"user": {"type": "object", "properties": {"login": {"type": "string"}}, "required": ["login"]}}
            },
            "outputSchema": {"type": "object", "properties": {"number": {"type": "integer"}}}
        });
        let stub = stub(
            "github".into(),
            "create_issue".into(),
            "github__create_issue",
            &definition,
        );
        assert_eq!(stub.summary, "Create an issue.");
        assert_eq!(
            summary_of("Search customers by name.\nReturns id, name,\nsegment.\n\nMore."),
            "Search customers by name."
        );
        assert!(
            stub.text
                .contains("def create_issue(repo: str, assignee: dict, "),
            "{}",
            stub.text
        );
        assert!(
            stub.text.contains("labels: list[str] | None = None"),
            "{}",
            stub.text
        );
        assert!(
            stub.text
                .contains("state: Literal[\"open\", \"closed\"] = \"open\""),
            "{}",
            stub.text
        );
        assert!(
            stub.text.contains("max_results: int | None = None"),
            "{}",
            stub.text
        );
        assert!(stub.text.contains("class_: bool"), "{}", stub.text);
        assert!(stub.text.contains("Fields: {login: str}"), "{}", stub.text);
        assert!(stub.text.contains("-> dict"), "{}", stub.text);
        assert!(stub.text.contains("{number?: int}"), "{}", stub.text);
        assert!(
            stub.params
                .contains(&("max_results".to_string(), "max-results".to_string()))
        );
        assert!(stub.words.contains("issue"));
    }

    #[test]
    fn identifiers_are_valid_python_that_scripts_may_use() {
        assert_eq!(identifier("get-file.contents"), "get_file_contents");
        assert_eq!(identifier("2fa"), "t2fa");
        assert_eq!(identifier("_private"), "t_private");
        assert_eq!(identifier("import"), "import_");
    }
}
