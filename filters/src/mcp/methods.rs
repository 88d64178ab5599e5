//! The MCP methods `/mcp` answers itself: `initialize`, `ping`, the list methods (served from
//! the catalog, filtered for the caller's key), `logging/setLevel`. Methods that go to an
//! upstream are in [`super::calls`].

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use ::http::StatusCode;
use ::http::header::HeaderValue;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rmcp::model::{
    Implementation, InitializeResult, PromptsCapability, ResourcesCapability, ServerCapabilities,
    ToolsCapability,
};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::http::Response;
use super::list_cache::PageKey;
use super::modern::{self, Declared, META_SERVER_INFO, META_SUBSCRIPTION};
use super::stream::{self, Subscriber, Uris};
use super::{McpEndpoint, Policy, calls, session_header};
use crate::auth::KeyEntry;
use crate::catalog::{Catalog, Kind};
use crate::jsonrpc::{self, Message, code};
use crate::policy::Narrowing;
use crate::protocol;
use crate::session::{ClientCapabilities, Session};
use sluice_conf::ServerCodeMode;

/// What a method needs to know about the request it serves.
pub(super) struct Context<'a> {
    pub endpoint: &'a McpEndpoint,
    pub policy: &'a Policy,
    pub caller: &'a Arc<KeyEntry>,
    pub narrowing: Option<&'a Narrowing>,
    pub session: &'a Session,
    pub started: Instant,
    /// What a stateless-era (2026-07-28) request declared; `None` in a session.
    pub stateless: Option<&'a Declared>,
    /// The request's `Mcp-Param-*` headers (usually none).
    pub param_headers: Vec<(::http::HeaderName, HeaderValue)>,
}

impl Context<'_> {
    /// Whether the caller may use the catalog's item of `kind` at `index`.
    pub fn may_use(
        &self,
        kind: Kind,
        index: usize,
        name: &str,
        allowed: &crate::policy::Allowed,
    ) -> bool {
        crate::policy::may_use(allowed, self.narrowing, kind, index, name)
    }

    /// Whether the tools of `server` are listed to this caller, and callable directly: in Code
    /// Mode only those of servers marked `direct`; otherwise all but those marked `only`.
    pub fn lists_directly(&self, server: &str) -> bool {
        let mode = self
            .policy
            .code_mode_servers
            .get(server)
            .copied()
            .unwrap_or_default();
        match (self.caller.code_mode, mode) {
            (true, ServerCodeMode::Direct) => true,
            (true, _) => false,
            (false, ServerCodeMode::Only) => false,
            (false, _) => true,
        }
    }

    /// Whether this caller gets Code Mode's meta-tools: a key in Code Mode, or one granted a
    /// tool of a server reached only through Code Mode.
    pub fn uses_code_mode(&self, catalog: &Catalog, allowed: &crate::policy::Allowed) -> bool {
        if self.caller.code_mode {
            return true;
        }
        let only =
            |server: &str| self.policy.code_mode_servers.get(server) == Some(&ServerCodeMode::Only);
        if !self
            .policy
            .code_mode_servers
            .values()
            .any(|m| *m == ServerCodeMode::Only)
        {
            return false;
        }
        catalog
            .list(Kind::Tools)
            .items()
            .iter()
            .enumerate()
            .any(|(i, entry)| allowed.contains(i) && only(&entry.server))
    }
}

/// `initialize`: Sluice answers as one server and opens a session bound to the caller's key,
/// sealing in it what the client can do.
pub(super) fn initialize(
    endpoint: &McpEndpoint,
    caller: &KeyEntry,
    message: &Message<'_>,
) -> Response {
    let Some(id) = message.id else {
        return Response::refuse(
            StatusCode::BAD_REQUEST,
            None,
            code::INVALID_REQUEST,
            "`initialize` must be a request with an id",
        );
    };
    #[derive(Deserialize)]
    struct Params<'a> {
        #[serde(rename = "protocolVersion", borrow)]
        protocol_version: Cow<'a, str>,
        capabilities: serde_json::Map<String, serde_json::Value>,
        #[serde(rename = "clientInfo", default)]
        _client_info: Option<serde_json::Map<String, serde_json::Value>>,
    }
    let params = match message
        .params
        .map(|p| serde_json::from_str::<Params<'_>>(p.get()))
    {
        Some(Ok(params)) => params,
        Some(Err(e)) => {
            return invalid_initialize(id, &e.to_string());
        }
        None => return invalid_initialize(id, "params are missing"),
    };
    let version = protocol::negotiate(Some(&params.protocol_version));
    let capabilities =
        ClientCapabilities::from_json(&serde_json::Value::Object(params.capabilities));
    let catalog = endpoint.upstreams().catalog().load();
    let result = InitializeResult::new(server_capabilities())
        .with_protocol_version(protocol::to_rmcp(version))
        .with_server_info(server_info())
        .with_instructions(instructions(&catalog));
    let result = serde_json::to_string(&result).unwrap_or_default();
    let token = match endpoint.sessions.issue(version, &caller.name, capabilities) {
        Ok(token) => token,
        Err(full) => {
            return Response::refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(id),
                code::INTERNAL_ERROR,
                &full.to_string(),
            )
            .with_header(::http::header::RETRY_AFTER, HeaderValue::from_static("60"));
        }
    };
    endpoint.count_sessions();
    let mut response = Response::json(StatusCode::OK, jsonrpc::result_bytes(id, &result));
    if let Ok(value) = HeaderValue::try_from(token) {
        response = response.with_header(session_header(), value);
    }
    response
}

/// `initialize` whose params are not what the specification requires.
fn invalid_initialize(id: &RawValue, why: &str) -> Response {
    Response::json(
        StatusCode::OK,
        jsonrpc::error_bytes(
            Some(id),
            code::INVALID_PARAMS,
            &format!(
                "invalid initialize params ({}); send {{\"protocolVersion\": \"2025-11-25\", \"capabilities\": {{}}, \"clientInfo\": {{\"name\": ..., \"version\": ...}}}}",
                jsonrpc::shorten(why, 200)
            ),
            None,
        ),
    )
}

/// `server/discover` (2026-07-28): the versions, capabilities and instructions `initialize`
/// gives in a session, for a stateless client.
pub(super) fn discover(endpoint: &McpEndpoint, id: &RawValue) -> Response {
    let catalog = endpoint.upstreams().catalog().load();
    let mut versions: Vec<&str> = modern::VERSIONS.to_vec();
    versions.extend(protocol::SUPPORTED);
    let result = serde_json::json!({
        "resultType": "complete",
        "supportedVersions": versions,
        "capabilities": stateless_capabilities(),
        "instructions": instructions(&catalog),
        "ttlMs": 0,
        "cacheScope": "private",
        "_meta": { META_SERVER_INFO: server_info() },
    });
    Response::json(
        StatusCode::OK,
        jsonrpc::result_bytes(id, &result.to_string()),
    )
}

fn server_info() -> Implementation {
    Implementation::new("sluice", env!("CARGO_PKG_VERSION")).with_title("Sluice MCP gateway")
}

/// `subscriptions/listen` (2026-07-28): a stream of the notifications asked for, acknowledged
/// first with what Sluice will send (resources the key may not read are left out).
pub(super) fn listen(context: &Context<'_>, id: &RawValue, params: Option<&RawValue>) -> Response {
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    struct Wanted {
        tools_list_changed: bool,
        prompts_list_changed: bool,
        resources_list_changed: bool,
        resource_subscriptions: Vec<String>,
    }
    #[derive(Deserialize)]
    struct Params {
        notifications: Wanted,
    }
    let Some(Ok(params)) = params.map(|p| serde_json::from_str::<Params>(p.get())) else {
        return Response::json(
            StatusCode::BAD_REQUEST,
            jsonrpc::error_bytes(
                Some(id),
                code::INVALID_PARAMS,
                "subscriptions/listen needs params with `notifications` (toolsListChanged, promptsListChanged, resourcesListChanged, resourceSubscriptions)",
                None,
            ),
        );
    };
    let wanted = params.notifications;
    let uris: std::collections::HashSet<String> = wanted
        .resource_subscriptions
        .into_iter()
        .filter(|uri| calls::may_read(context, uri))
        .take(crate::mcp::live::MAX_SUBSCRIPTIONS_PER_SESSION)
        .collect();
    let mut honored = serde_json::Map::new();
    for (name, on) in [
        ("toolsListChanged", wanted.tools_list_changed),
        ("promptsListChanged", wanted.prompts_list_changed),
        ("resourcesListChanged", wanted.resources_list_changed),
    ] {
        if on {
            honored.insert(name.into(), true.into());
        }
    }
    if !uris.is_empty() {
        honored.insert(
            "resourceSubscriptions".into(),
            uris.iter().cloned().collect::<Vec<_>>().into(),
        );
    }
    let tag: serde_json::Value = serde_json::from_str(id.get()).unwrap_or_default();
    let ack = serde_json::json!({
        "jsonrpc": "2.0",
        "method": "notifications/subscriptions/acknowledged",
        "params": { "_meta": { META_SUBSCRIPTION: tag }, "notifications": honored },
    });
    let on_close = calls::listen_to_resources(context, context.session.nonce, &uris);
    let subscriber = Subscriber {
        lists: [
            wanted.tools_list_changed,
            wanted.resources_list_changed,
            wanted.prompts_list_changed,
        ],
        uris: Uris::Listed(uris),
        tag: Some(id.get().to_string()),
        on_close: Some(on_close),
    };
    stream::open(
        context.endpoint,
        context.caller.clone(),
        subscriber,
        Some(crate::sse::message_event(ack.to_string().as_bytes())),
    )
}

/// What Sluice serves a stateless client: the same, and the tasks extension (relayed to the
/// upstreams that offer it).
fn stateless_capabilities() -> serde_json::Value {
    let mut capabilities = serde_json::to_value(server_capabilities()).unwrap_or_default();
    capabilities["extensions"] = serde_json::json!({ modern::TASKS_EXTENSION: {} });
    capabilities
}

/// What Sluice serves, whatever the upstreams behind it: lists change as upstreams come and go.
fn server_capabilities() -> ServerCapabilities {
    let mut capabilities = ServerCapabilities::default();
    let mut tools = ToolsCapability::default();
    tools.list_changed = Some(true);
    capabilities.tools = Some(tools);
    let mut resources = ResourcesCapability::default();
    resources.subscribe = Some(true);
    resources.list_changed = Some(true);
    capabilities.resources = Some(resources);
    let mut prompts = PromptsCapability::default();
    prompts.list_changed = Some(true);
    capabilities.prompts = Some(prompts);
    capabilities.logging = Some(Default::default());
    capabilities.completions = Some(Default::default());
    capabilities
}

/// Sluice's own instructions, then each server's, so a client learns how to use them.
fn instructions(catalog: &Catalog) -> String {
    let mut text = String::from(
        "Sluice aggregates several MCP servers. Tool and prompt names are `<server>__<name>`; \
         resource URIs are `<server>+<uri>` (servers configured without a prefix keep their names).",
    );
    for server in catalog.servers() {
        if let Some(theirs) = server
            .instructions
            .as_deref()
            .filter(|t| !t.trim().is_empty())
        {
            text.push_str("\n\n## Server `");
            text.push_str(&server.name);
            text.push_str("`\n");
            text.push_str(theirs.trim());
        }
    }
    text
}

/// Every request after `initialize`.
pub(super) async fn dispatch(context: &Context<'_>, message: &Message<'_>) -> Response {
    let Some(id) = message.id else {
        return Response::empty(StatusCode::ACCEPTED);
    };
    let json = |body: Vec<u8>| Response::json(StatusCode::OK, body);
    match message.method.unwrap_or_default() {
        "ping" => json(jsonrpc::result_bytes(id, "{}")),
        "tools/list" => json(list_page(context, id, message.params, Kind::Tools)),
        "resources/list" => json(list_page(context, id, message.params, Kind::Resources)),
        "resources/templates/list" => json(list_page(context, id, message.params, Kind::Templates)),
        "prompts/list" => json(list_page(context, id, message.params, Kind::Prompts)),
        "tools/call" => calls::tools_call(context, id, message.params).await,
        // The other calls are boxed: inline, the largest of them would set the size of every
        // request's future, which is copied whole when it is boxed (perf/RESULTS.md).
        "resources/read" => Box::pin(calls::resources_read(context, id, message.params)).await,
        "prompts/get" => Box::pin(calls::prompts_get(context, id, message.params)).await,
        "completion/complete" => Box::pin(calls::complete(context, id, message.params)).await,
        "resources/subscribe" => {
            json(Box::pin(calls::subscribe(context, id, message.params, true)).await)
        }
        "resources/unsubscribe" => {
            json(Box::pin(calls::subscribe(context, id, message.params, false)).await)
        }
        "logging/setLevel" => json(calls::set_level(context, id, message.params)),
        method => json(jsonrpc::error_bytes(
            Some(id),
            code::METHOD_NOT_FOUND,
            &format!(
                "method `{}` is not supported by Sluice",
                jsonrpc::shorten(method, 100)
            ),
            None,
        )),
    }
}

/// A page of the caller's items of `kind`. The cursor is the catalog offset of the next page,
/// opaque to clients. Pages are cached per key, list, policy and catalog version unless the
/// request narrows.
fn list_page(
    context: &Context<'_>,
    id: &RawValue,
    params: Option<&RawValue>,
    kind: Kind,
) -> Vec<u8> {
    #[derive(Deserialize)]
    struct Params {
        cursor: Option<String>,
    }
    let (method, member) = kind.list_method();
    let cursor = match params.map(|p| serde_json::from_str::<Params>(p.get())) {
        None => None,
        Some(Ok(p)) => p.cursor,
        Some(Err(e)) => {
            return jsonrpc::error_bytes(
                Some(id),
                code::INVALID_PARAMS,
                &format!("invalid {method} params: {e}"),
                None,
            );
        }
    };
    let offset = match cursor.as_deref().map(decode_cursor) {
        None => 0,
        Some(Some(offset)) => offset,
        Some(None) => {
            return jsonrpc::error_bytes(
                Some(id),
                code::INVALID_PARAMS,
                "invalid cursor; pass the `nextCursor` of the previous page unchanged",
                None,
            );
        }
    };
    let catalog = context.endpoint.upstreams().catalog().load();
    let items = catalog.list(kind).items();
    if offset > 0 && offset >= items.len() {
        return jsonrpc::error_bytes(
            Some(id),
            code::INVALID_PARAMS,
            "the cursor is past the end of the list (it changed since); list again from the start",
            None,
        );
    }
    let narrowed = kind == Kind::Tools && context.narrowing.is_some();
    let cache_key = (!narrowed).then(|| PageKey {
        key: context.caller.name.clone(),
        kind,
        policy_version: context.policy.version,
        catalog_version: catalog.version,
        offset,
    });
    if let Some(page) = cache_key
        .as_ref()
        .and_then(|k| context.endpoint.list_cache.get(k))
    {
        return answer_page(context, id, &page);
    }
    let allowed = context.caller.grants.allowed(&catalog);
    let mut page = String::with_capacity(1024);
    page.push_str("{\"");
    page.push_str(member);
    page.push_str("\":[");
    let mut count = 0;
    let mut next = None;
    // Code Mode's meta-tools lead the first page, beside the page's own tools.
    let mut first = true;
    if kind == Kind::Tools && offset == 0 && context.uses_code_mode(&catalog, &allowed) {
        for definition in crate::codemode::CodeMode::definitions() {
            page.push_str(if first { "" } else { "," });
            page.push_str(definition.get());
            first = false;
        }
    }
    for (index, item) in items.iter().enumerate().skip(offset) {
        if !context.may_use(kind, index, &item.exposed_name, &allowed)
            || (kind == Kind::Tools && !context.lists_directly(&item.server))
        {
            continue;
        }
        if count == context.policy.page_size {
            next = Some(index);
            break;
        }
        if !first {
            page.push(',');
        }
        first = false;
        page.push_str(item.definition.get());
        count += 1;
    }
    page.push(']');
    if let Some(next) = next {
        page.push_str(",\"nextCursor\":\"");
        page.push_str(&encode_cursor(next));
        page.push('"');
    }
    page.push('}');
    let body = answer_page(context, id, &page);
    if let Some(key) = cache_key {
        context.endpoint.list_cache.put(key, Arc::from(page));
    }
    body
}

/// A list page as the caller's era reads it (a stateless client also gets the result type
/// and the caching hints).
fn answer_page(context: &Context<'_>, id: &RawValue, page: &str) -> Vec<u8> {
    match context.stateless {
        None => jsonrpc::result_bytes(id, page),
        Some(_) => jsonrpc::result_bytes(id, &modern::complete(page, true)),
    }
}

fn encode_cursor(offset: usize) -> String {
    URL_SAFE_NO_PAD.encode(format!("offset:{offset}"))
}

fn decode_cursor(cursor: &str) -> Option<usize> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    std::str::from_utf8(&bytes)
        .ok()?
        .strip_prefix("offset:")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip() {
        assert_eq!(decode_cursor(&encode_cursor(42)), Some(42));
        assert_eq!(decode_cursor("garbage!"), None);
    }

    #[test]
    fn instructions_combine_the_servers() {
        let store = crate::catalog::CatalogStore::new();
        store.set_server(
            "docs",
            0,
            "docs",
            crate::catalog::ServerLists {
                instructions: Some("Search before you read.".into()),
                ..Default::default()
            },
        );
        let text = instructions(&store.load());
        assert!(text.starts_with("Sluice aggregates"));
        assert!(text.contains("## Server `docs`\nSearch before you read."));
    }
}
