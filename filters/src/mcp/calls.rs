//! The methods `/mcp` forwards to one upstream: `tools/call`, `resources/read`, `prompts/get`,
//! `completion/complete`, `resources/subscribe` / `unsubscribe`, and `logging/setLevel`
//! (to every upstream). Each checks the caller's grant, maps the exposed name or URI back to
//! the upstream's, and relays the answer ([`super::relay`]); the call is accounted for in the
//! audit log and the metrics however it ends.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::Services;
use super::http::Response;
use super::methods::Context;
use super::modern;
use super::relay::{self, Caller, Ending, Forward, Progress};
use crate::audit::{AuditRecord, Timestamp};
use crate::catalog::{Kind, resource_grant_name};
use crate::jsonrpc::{self, code};
use crate::upstream::answer::Member;
use crate::upstream::{CallOptions, Outcome, Upstream};

/// Work done for the audit log and metrics.
pub(super) struct Work {
    pub server: Option<Arc<str>>,
    pub tool: Option<String>,
    pub argument_bytes: usize,
    pub arguments: Option<Box<RawValue>>,
    /// `ok`, `tool_error`, `error`, `denied` or `cancelled`.
    pub status: &'static str,
    pub error: Option<String>,
    pub upstream_time: Option<Duration>,
    /// The model response that asked for this call.
    pub link: Option<crate::llm::links::Link>,
    /// Keep the result for the audit record (`audit.include_results`).
    pub keep_result: bool,
    pub result: Option<String>,
}

impl Work {
    pub(super) fn new() -> Self {
        Work {
            server: None,
            tool: None,
            argument_bytes: 0,
            arguments: None,
            status: "error",
            error: None,
            upstream_time: None,
            link: None,
            keep_result: false,
            result: None,
        }
    }
}

/// Longer tool names are refused unread (exposed names are at most 64 characters).
const MAX_TOOL_NAME: usize = 256;

/// The `tool` label of calls to names that are not in the catalog.
const UNKNOWN_TOOL_LABEL: &str = "(unknown)";

/// What the audit record of one call needs, owned, so that a streamed call can be recorded
/// when it ends.
pub(super) struct Ledger {
    services: Services,
    key: Arc<str>,
    request_id: String,
    /// The `run_script` call a script's call was made by.
    parent: Option<String>,
    session: String,
    method: &'static str,
    started: Instant,
}

impl Ledger {
    pub(super) fn new(context: &Context<'_>, id: &RawValue, method: &'static str) -> Self {
        Ledger {
            services: context.endpoint.services.clone(),
            key: context.caller.name.clone(),
            request_id: id.get().to_string(),
            parent: None,
            session: context.session.fingerprint.to_string(),
            method,
            started: context.started,
        }
    }

    /// The ledger of tool call `n` of the script that `parent` (the `run_script` call) ran.
    pub(super) fn child(parent: &Ledger, n: usize) -> Self {
        Ledger {
            services: parent.services.clone(),
            key: parent.key.clone(),
            request_id: format!("{}.{n}", parent.request_id),
            parent: Some(parent.request_id.clone()),
            session: parent.session.clone(),
            method: "tools/call",
            started: Instant::now(),
        }
    }

    pub(super) fn services(&self) -> &Services {
        &self.services
    }

    /// Write the audit record (and, for tool calls, the metrics) of `work`.
    pub(super) fn record(&self, work: Work) {
        let metrics = &self.services.metrics;
        if self.method == "tools/call" {
            // A name the catalog does not know shares one series: names a caller makes up
            // must not add a series each.
            let (server, tool) = match &work.server {
                Some(server) => (&**server, work.tool.as_deref().unwrap_or("-")),
                None => ("-", UNKNOWN_TOOL_LABEL),
            };
            metrics
                .tool_calls
                .with_label_values(&[server, tool, work.status])
                .inc();
            if let (Some(server), Some(elapsed)) = (&work.server, work.upstream_time) {
                metrics
                    .upstream_duration
                    .with_label_values(&[server])
                    .observe(elapsed.as_secs_f64());
            }
        }
        self.services.audit.record(AuditRecord {
            time: Timestamp::now(),
            request_id: self.request_id.clone(),
            parent: self.parent.clone(),
            session: self.session.clone(),
            key: self.key.to_string(),
            method: self.method,
            server: work.server.map(|s| s.to_string()),
            tool: work.tool,
            argument_bytes: work.argument_bytes,
            arguments: work.arguments,
            status: work.status,
            error: work.error,
            upstream_ms: work.upstream_time.map(|d| d.as_secs_f64() * 1000.0),
            total_ms: self.started.elapsed().as_secs_f64() * 1000.0,
            tool_use_id: work.link.as_ref().map(|l| l.tool_use_id.clone()),
            llm_request_id: work.link.map(|l| l.llm_request_id),
            result: work.result.and_then(|r| self.services.audit.capped(&r)),
        });
    }

    /// Refuse the call with a JSON-RPC error, recorded.
    pub(super) fn refuse(
        self,
        id: &RawValue,
        mut work: Work,
        code: i32,
        message: String,
    ) -> Response {
        let body = jsonrpc::error_bytes(Some(id), code, &message, None);
        work.error = Some(message);
        self.record(work);
        Response::json(http::StatusCode::OK, body)
    }
}

/// `tools/call`: check the key's grant, find the owning upstream, rename the tool, forward,
/// pass the answer back unchanged.
pub(super) async fn tools_call(
    context: &Context<'_>,
    id: &RawValue,
    params: Option<&RawValue>,
) -> Response {
    #[derive(Deserialize)]
    struct Params<'a> {
        #[serde(borrow)]
        name: Cow<'a, str>,
        #[serde(borrow, default)]
        arguments: Option<&'a RawValue>,
        #[serde(borrow, default, rename = "_meta")]
        meta: Option<&'a RawValue>,
        /// A stateless client's retry of a paused call (2026-07-28).
        #[serde(default, rename = "requestState")]
        request_state: Option<String>,
        #[serde(default, rename = "inputResponses")]
        input_responses: Option<Map<String, Value>>,
    }
    let ledger = Ledger::new(context, id, "tools/call");
    let mut work = Work::new();
    let Some(params) = params else {
        return ledger.refuse(
            id,
            work,
            code::INVALID_PARAMS,
            "tools/call needs params with the tool `name`".into(),
        );
    };
    let params: Params<'_> = match serde_json::from_str(params.get()) {
        Ok(p) => p,
        Err(e) => {
            return ledger.refuse(
                id,
                work,
                code::INVALID_PARAMS,
                format!("invalid tools/call params: {e}"),
            );
        }
    };
    if params.name.len() > MAX_TOOL_NAME {
        return ledger.refuse(
            id,
            work,
            code::INVALID_PARAMS,
            format!(
                "the tool name is longer than {MAX_TOOL_NAME} characters; no tool has such a name"
            ),
        );
    }
    work.tool = Some(params.name.to_string());
    work.argument_bytes = params.arguments.map_or(0, |a| a.get().len());
    // Copy the arguments only when the audit log records them: not on every call.
    if context.endpoint.services.audit.include_arguments() {
        work.arguments = params.arguments.map(|a| a.to_owned());
    }
    if let Some(args) = params.arguments
        && !args.get().trim_start().starts_with('{')
    {
        return ledger.refuse(
            id,
            work,
            code::INVALID_PARAMS,
            "tools/call `arguments` must be an object".into(),
        );
    }
    // Code Mode's meta-tools, like `resume` below, are boxed to keep this future small.
    if super::scripts::is_meta_for(context, &params.name) {
        return Box::pin(super::scripts::meta_call(
            context,
            id,
            &params.name,
            params.arguments,
            ledger,
            work,
        ))
        .await;
    }
    let catalog = context.endpoint.upstreams().catalog().load();
    let allowed = context.caller.grants.allowed(&catalog);
    let Some((index, tool)) = catalog.find(&params.name) else {
        if let Some((server, why)) = unsynced_owner(context, &params.name) {
            work.server = Some(server.clone());
            let message = format!(
                "tool `{}` is not available: upstream server `{server}` has not synced ({why}); Sluice keeps retrying it",
                params.name
            );
            let body = jsonrpc::error_bytes(
                Some(id),
                code::INTERNAL_ERROR,
                &message,
                Some(&serde_json::json!({ "server": &*server })),
            );
            work.error = Some(message);
            ledger.record(work);
            return Response::json(http::StatusCode::OK, body);
        }
        return ledger.refuse(
            id,
            work,
            code::INVALID_PARAMS,
            format!(
                "unknown tool `{}`; call tools/list for the tools available",
                params.name
            ),
        );
    };
    work.server = Some(tool.server.clone());
    if !context.may_use(Kind::Tools, index, &tool.exposed_name, &allowed) {
        work.status = "denied";
        return ledger.refuse(
            id,
            work,
            code::INVALID_PARAMS,
            format!(
                "tool `{}` is not granted to key `{}`; ask the gateway's operator to add it to the key or one of its tool groups",
                params.name, context.caller.name
            ),
        );
    }
    if !context.lists_directly(&tool.server) {
        work.status = "denied";
        return ledger.refuse(
            id,
            work,
            code::INVALID_PARAMS,
            format!(
                "tool `{}` is reached through Code Mode for key `{}`: call it from a `{}` script",
                params.name,
                context.caller.name,
                crate::codemode::RUN
            ),
        );
    }
    let Some(upstream) = context.endpoint.upstreams().get(&tool.server) else {
        return ledger.refuse(
            id,
            work,
            code::INTERNAL_ERROR,
            format!(
                "tool `{}` belongs to a server that is no longer configured",
                params.name
            ),
        );
    };
    work.keep_result = context.endpoint.services.audit.include_results();
    work.link = link_of(
        &context.endpoint.services,
        &context.caller.name,
        &params.name,
        params.arguments,
    );
    let binding = format!("tools/call\0{}", params.name);
    if let (Some(state), Some(_)) = (&params.request_state, context.stateless) {
        // The retry continues the paused call, which is accounted for when it ends.
        drop(ledger);
        let responses = params.input_responses.unwrap_or_default();
        return Box::pin(relay::resume(
            caller(context, id, binding),
            state,
            responses,
        ))
        .await;
    }
    let ForwardMeta { meta, progress } = forward_meta(params.meta);
    let forwarded = forward_params(&tool.upstream_name, params.arguments, meta.as_deref());
    let era = Era::of(context, "tools/call");
    relay::relay(
        caller(context, id, binding),
        Forward {
            upstream,
            method: "tools/call",
            params: forwarded,
            progress,
            stream_answer: context.stateless.is_none(),
            param_headers: context.param_headers.clone(),
        },
        Box::new(move |id, ending, elapsed| {
            let (body, work) = tool_answer(id, ending, elapsed, work, era);
            ledger.record(work);
            body
        }),
    )
    .await
}

/// The configured server a tool name belongs to by its prefix, when that server has not
/// synced (so its tools are not in the catalog), with why: a call to it should name it.
fn unsynced_owner(context: &Context<'_>, name: &str) -> Option<(Arc<str>, String)> {
    context
        .endpoint
        .upstreams()
        .all()
        .iter()
        .find(|u| {
            !u.tool_prefix().is_empty()
                && name
                    .strip_prefix(u.tool_prefix())
                    .is_some_and(|rest| rest.starts_with("__"))
                && u.health() != crate::upstream::Health::Ready
        })
        .map(|u| {
            let why = u
                .last_error()
                .unwrap_or_else(|| "it is still connecting".into());
            (u.name.clone(), why)
        })
}

/// The client's answer to a tools/call, and what the audit log says of it.
/// The model response that asked for this call, if one passed through Sluice (see
/// [`crate::llm::links`]). Arguments are parsed only while some tool use is remembered.
fn link_of(
    services: &Services,
    key: &str,
    tool: &str,
    arguments: Option<&RawValue>,
) -> Option<crate::llm::links::Link> {
    if services.links.is_empty() {
        return None;
    }
    let arguments: Value = match arguments {
        Some(raw) => serde_json::from_str(raw.get()).ok()?,
        None => Value::Null,
    };
    services.links.take(key, tool, &arguments)
}

fn tool_answer(
    id: &RawValue,
    ending: Ending,
    elapsed: Duration,
    mut work: Work,
    era: Era,
) -> (Vec<u8>, Work) {
    work.upstream_time = Some(elapsed);
    match ending {
        Ending::Answered(Ok(Outcome::Result(result))) => {
            work.status = if is_error_result(&result) {
                "tool_error"
            } else {
                "ok"
            };
            if work.keep_result {
                work.result = Some(result.get().to_string());
            }
            let body = match era {
                Era::Session => jsonrpc::result_bytes(id, result.get()),
                Era::Stateless { cacheable, tasks } => {
                    // A task of the tasks extension gets an id sealed for this caller.
                    let server = work.server.clone().unwrap_or_default();
                    let result =
                        TaskIds::rewrite(result.get(), |task| Some(tasks.seal(&server, task)))
                            .unwrap_or_else(|| result.get().to_string());
                    jsonrpc::result_bytes(id, &modern::complete(&result, cacheable))
                }
            };
            (body, work)
        }
        Ending::Answered(Ok(Outcome::Error(error))) => {
            work.error = Some(error.get().chars().take(500).collect());
            (jsonrpc::error_object_bytes(Some(id), error.get()), work)
        }
        Ending::Answered(Err(e)) => {
            let message = e.to_string();
            let body = jsonrpc::error_bytes(
                Some(id),
                code::INTERNAL_ERROR,
                &message,
                Some(&serde_json::json!({ "server": e.server() })),
            );
            work.error = Some(message);
            (body, work)
        }
        // The relay gathers or passes on streamed answers itself; never reached.
        Ending::Answered(Ok(Outcome::Streamed(_))) => {
            work.error = Some("a streamed answer reached the wrong place".into());
            (
                jsonrpc::error_bytes(Some(id), code::INTERNAL_ERROR, "internal error", None),
                work,
            )
        }
        Ending::Streamed {
            member,
            is_error,
            cut,
        } => {
            work.status = match (member, is_error, &cut) {
                (_, _, Some(_)) | (Member::Error, _, _) => "error",
                (Member::Result, true, None) => "tool_error",
                (Member::Result, false, None) => "ok",
            };
            work.error = cut;
            (Vec::new(), work)
        }
        Ending::MissingCapability(capability) => {
            let message = format!(
                "the tool needs the client capability `{capability}`, which this request did not declare"
            );
            let body = jsonrpc::error_bytes(
                Some(id),
                modern::codes::MISSING_CLIENT_CAPABILITY,
                &message,
                Some(&serde_json::json!({ "requiredCapabilities": { capability: {} } })),
            );
            work.error = Some(message);
            (body, work)
        }
        Ending::Abandoned(reason) => {
            work.status = "cancelled";
            work.error = Some(reason.to_string());
            (
                jsonrpc::error_bytes(Some(id), code::REQUEST_CANCELLED, reason, None),
                work,
            )
        }
    }
}

/// How an answer is written for the caller's protocol era.
#[derive(Clone)]
enum Era {
    Session,
    /// 2026-07-28: results say their type, reads say how long they may be cached, and task
    /// ids are sealed for the caller.
    Stateless {
        cacheable: bool,
        tasks: TaskIds,
    },
}

impl Era {
    fn of(context: &Context<'_>, method: &str) -> Self {
        match context.stateless {
            None => Era::Session,
            Some(_) => Era::Stateless {
                cacheable: method == "resources/read",
                tasks: TaskIds::of(context),
            },
        }
    }
}

/// Task ids of the tasks extension as the client sees them: the server and its task id,
/// sealed for the caller's key, so that any instance can route a `tasks/*` request and no
/// other key can use it.
#[derive(Clone)]
struct TaskIds {
    sealer: Arc<crate::session::Sessions>,
    key: Arc<str>,
}

const TASK_PURPOSE: u8 = b'T';

impl TaskIds {
    fn of(context: &Context<'_>) -> Self {
        TaskIds {
            sealer: context.endpoint.sessions.clone(),
            key: context.caller.name.clone(),
        }
    }

    fn seal(&self, server: &str, task: &str) -> String {
        use sha2::{Digest, Sha256};
        let mut body = Sha256::digest(self.key.as_bytes())[..8].to_vec();
        body.push(server.len().min(255) as u8);
        body.extend_from_slice(&server.as_bytes()[..server.len().min(255)]);
        body.extend_from_slice(task.as_bytes());
        self.sealer.seal(TASK_PURPOSE, &body)
    }

    /// The server and its task id, if `sealed` is genuine and this key's.
    fn open(&self, sealed: &str) -> Option<(String, String)> {
        use sha2::{Digest, Sha256};
        let body = self.sealer.unseal(TASK_PURPOSE, sealed)?;
        if body.len() < 9 || body[..8] != Sha256::digest(self.key.as_bytes())[..8] {
            return None;
        }
        let len = body[8] as usize;
        let server = String::from_utf8(body.get(9..9 + len)?.to_vec()).ok()?;
        let task = String::from_utf8(body.get(9 + len..)?.to_vec()).ok()?;
        Some((server, task))
    }

    /// `result` with its top-level `taskId` replaced by `map`.
    fn rewrite(result: &str, map: impl FnOnce(&str) -> Option<String>) -> Option<String> {
        if !result.contains("\"taskId\"") {
            return None;
        }
        let mut value: Value = serde_json::from_str(result).ok()?;
        let task = value.get("taskId")?.as_str()?.to_string();
        value["taskId"] = Value::String(map(&task)?);
        Some(value.to_string())
    }
}

/// `tasks/get`, `tasks/update`, `tasks/cancel` (the tasks extension, 2026-07-28): the sealed
/// task id names the server and its own id; the answer's id is sealed again.
pub(super) async fn task(
    context: &Context<'_>,
    id: &RawValue,
    method: &str,
    params: Option<&RawValue>,
) -> Response {
    let mut params = match object_params(id, method, params) {
        Ok(p) => p,
        Err(body) => return Response::json(http::StatusCode::OK, body),
    };
    let tasks = TaskIds::of(context);
    let Some(sealed) = params
        .get("taskId")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return invalid(id, format!("{method} needs params with the `taskId`"));
    };
    let Some((server, task)) = tasks.open(&sealed) else {
        return invalid(
            id,
            format!("unknown task `{sealed}`: not a task id Sluice gave this key"),
        );
    };
    let Some(upstream) = context.endpoint.upstreams().get(&server) else {
        return invalid(
            id,
            format!("task `{sealed}` belongs to a server that is no longer configured"),
        );
    };
    params.insert("taskId".into(), Value::String(task));
    let Ok(forwarded) = serde_json::value::to_raw_value(&params) else {
        return invalid(id, "cannot encode params".into());
    };
    let outcome = upstream.request(method, Some(&forwarded)).await;
    let body = plain_answer(id, outcome, |result| {
        let result = TaskIds::rewrite(result, |_| Some(sealed.clone()))
            .unwrap_or_else(|| result.to_string());
        modern::complete(&result, false)
    });
    Response::json(http::StatusCode::OK, body)
}

/// The answer to a request forwarded without the relay: the upstream's result (through `map`)
/// or error, or Sluice's error naming the server.
fn plain_answer(
    id: &RawValue,
    outcome: Result<Outcome, crate::upstream::UpstreamError>,
    map: impl FnOnce(&str) -> String,
) -> Vec<u8> {
    match outcome {
        Ok(Outcome::Result(result)) => jsonrpc::result_bytes(id, &map(result.get())),
        Ok(Outcome::Error(error)) => jsonrpc::error_object_bytes(Some(id), error.get()),
        Ok(Outcome::Streamed(_)) => jsonrpc::error_bytes(
            Some(id),
            code::INTERNAL_ERROR,
            "the upstream's answer came in pieces",
            None,
        ),
        Err(e) => jsonrpc::error_bytes(
            Some(id),
            code::INTERNAL_ERROR,
            &e.to_string(),
            Some(&serde_json::json!({ "server": e.server() })),
        ),
    }
}

/// Whether the caller may read the resource clients call `uri`.
pub(super) fn may_read(context: &Context<'_>, uri: &str) -> bool {
    resolve_uri(context, uri).is_ok()
}

/// Who a relayed request is for; `binding` names the request (method and target) so that a
/// paused call's state answers only that request.
fn caller<'a>(context: &'a Context<'_>, id: &'a RawValue, binding: String) -> Caller<'a> {
    Caller {
        stateless: context.stateless.map(|d| relay::Stateless {
            relay_logs: d.log_level.is_some(),
        }),
        pauses: context.stateless.map(|_| relay::Pause {
            parking: context.endpoint.parking.clone(),
            key: context.caller.name.clone(),
            binding,
        }),
        live: &context.endpoint.live,
        streamed: &context.endpoint.services.metrics.streamed_answers,
        session: context.session.nonce,
        session_expires_at: context.session.expires_at,
        capabilities: context.session.capabilities,
        request_id: id,
    }
}

/// Numbers the progress tokens upstreams see.
static NEXT_PROGRESS: AtomicU64 = AtomicU64::new(1);

/// Replace the client's `_meta.progressToken` with one of Sluice's, unique in the process, so
/// that progress from an upstream shared by many clients reaches the one that asked. Returns
/// the `_meta` to forward (when changed) and the mapping.
/// The client's `_meta` as it goes upstream.
struct ForwardMeta {
    /// `None`: send no `_meta`.
    meta: Option<Box<RawValue>>,
    /// The client's progress token and the one Sluice sends in its place.
    progress: Option<Progress>,
}

/// Replace a progress token (per call, so that callers of a shared upstream never mix);
/// anything else in `_meta` passes unchanged (the upstream connection speaks its own era:
/// see `upstream::stateless`).
fn forward_meta(meta: Option<&RawValue>) -> ForwardMeta {
    let Some(meta) = meta else {
        return ForwardMeta {
            meta: None,
            progress: None,
        };
    };
    let text = meta.get();
    let unchanged = || ForwardMeta {
        meta: Some(meta.to_owned()),
        progress: None,
    };
    if !text.contains("progressToken") {
        return unchanged();
    }
    let Ok(mut map) = serde_json::from_str::<Map<String, Value>>(text) else {
        return unchanged();
    };
    let mut progress = None;
    if let Some(client) = map.get("progressToken").cloned()
        && let Ok(client) = serde_json::value::to_raw_value(&client)
    {
        let upstream = format!("sluice-{}", NEXT_PROGRESS.fetch_add(1, Ordering::Relaxed));
        map.insert("progressToken".into(), Value::String(upstream.clone()));
        progress = Some(Progress {
            client,
            upstream: Value::String(upstream).to_string(),
        });
    }
    let meta = if map.is_empty() {
        None
    } else {
        serde_json::value::to_raw_value(&map).ok()
    };
    ForwardMeta { meta, progress }
}

/// Rewrites a result before it goes to the client.
type MapResult = Box<dyn Fn(&mut Value) + Send>;

/// Forward a request whose answer passes back unchanged but for `map_result` (used to show
/// resource URIs as clients know them), recorded in the audit log.
#[allow(clippy::too_many_arguments)]
async fn forward_plain(
    context: &Context<'_>,
    id: &RawValue,
    method: &'static str,
    upstream: Arc<Upstream>,
    params: Map<String, Value>,
    target: String,
    map_result: Option<MapResult>,
) -> Response {
    let binding = format!("{method}\0{target}");
    let mut params = params;
    let request_state = params.remove("requestState");
    let input_responses = params.remove("inputResponses");
    if let (Some(Value::String(state)), Some(_)) = (&request_state, context.stateless) {
        let responses = match input_responses {
            Some(Value::Object(responses)) => responses,
            _ => Map::new(),
        };
        return relay::resume(caller(context, id, binding), state, responses).await;
    }
    let ledger = Ledger::new(context, id, method);
    let mut work = Work::new();
    work.server = Some(upstream.name.clone());
    work.tool = Some(target);
    let meta = params
        .remove("_meta")
        .and_then(|m| serde_json::value::to_raw_value(&m).ok());
    let ForwardMeta { meta, progress } = forward_meta(meta.as_deref());
    if let Some(meta) = meta
        && let Ok(value) = serde_json::from_str::<Value>(meta.get())
    {
        params.insert("_meta".into(), value);
    }
    let Ok(forwarded) = serde_json::value::to_raw_value(&params) else {
        return ledger.refuse(
            id,
            work,
            code::INTERNAL_ERROR,
            "cannot encode params".into(),
        );
    };
    let era = Era::of(context, method);
    relay::relay(
        caller(context, id, binding),
        Forward {
            upstream,
            method,
            params: forwarded,
            progress,
            stream_answer: map_result.is_none() && context.stateless.is_none(),
            param_headers: context.param_headers.clone(),
        },
        Box::new(move |id, ending, elapsed| {
            let ending = match (ending, &map_result) {
                (Ending::Answered(Ok(Outcome::Result(result))), Some(map)) => {
                    Ending::Answered(Ok(Outcome::Result(map_raw(result, map.as_ref()))))
                }
                (ending, _) => ending,
            };
            let (body, work) = tool_answer(id, ending, elapsed, work, era);
            ledger.record(work);
            body
        }),
    )
    .await
}

fn map_raw(result: Box<RawValue>, map: &dyn Fn(&mut Value)) -> Box<RawValue> {
    let Ok(mut value) = serde_json::from_str::<Value>(result.get()) else {
        return result;
    };
    map(&mut value);
    serde_json::value::to_raw_value(&value).unwrap_or(result)
}

/// Params as an object (`{}` when absent), or an error answer.
fn object_params(
    id: &RawValue,
    method: &str,
    params: Option<&RawValue>,
) -> Result<Map<String, Value>, Vec<u8>> {
    match params {
        None => Ok(Map::new()),
        Some(p) => serde_json::from_str(p.get()).map_err(|e| {
            jsonrpc::error_bytes(
                Some(id),
                code::INVALID_PARAMS,
                &format!("invalid {method} params: {e}"),
                None,
            )
        }),
    }
}

fn invalid(id: &RawValue, message: String) -> Response {
    Response::json(
        http::StatusCode::OK,
        jsonrpc::error_bytes(Some(id), code::INVALID_PARAMS, &message, None),
    )
}

/// A resource URI as a client sent it, resolved to its server and granted to the caller.
struct ResolvedUri {
    upstream: Arc<Upstream>,
    upstream_uri: String,
    prefix: String,
}

fn resolve_uri(context: &Context<'_>, uri: &str) -> Result<ResolvedUri, String> {
    let catalog = context.endpoint.upstreams().catalog().load();
    let Some((server, upstream_uri)) = catalog.route_uri(uri) else {
        return Err(format!(
            "unknown resource `{uri}`; call resources/list or resources/templates/list for the resources available"
        ));
    };
    let prefix = catalog
        .servers()
        .iter()
        .find(|s| s.name == server)
        .map(|s| s.prefix.clone())
        .unwrap_or_default();
    if !context
        .caller
        .grants
        .matches(&resource_grant_name(&prefix, &upstream_uri))
    {
        return Err(format!(
            "resource `{uri}` is not granted to key `{}`; ask the gateway's operator to grant `{}`",
            context.caller.name,
            resource_grant_name(&prefix, &upstream_uri)
        ));
    }
    let Some(upstream) = context.endpoint.upstreams().get(&server) else {
        return Err(format!(
            "resource `{uri}` belongs to a server that is no longer configured"
        ));
    };
    Ok(ResolvedUri {
        upstream,
        upstream_uri,
        prefix,
    })
}

/// `resources/read`: the URI goes up as the upstream knows it and comes back as clients do.
pub(super) async fn resources_read(
    context: &Context<'_>,
    id: &RawValue,
    params: Option<&RawValue>,
) -> Response {
    let mut params = match object_params(id, "resources/read", params) {
        Ok(p) => p,
        Err(body) => return Response::json(http::StatusCode::OK, body),
    };
    let Some(uri) = params.get("uri").and_then(Value::as_str).map(str::to_owned) else {
        return invalid(
            id,
            "resources/read needs params with the resource `uri`".into(),
        );
    };
    let resolved = match resolve_uri(context, &uri) {
        Ok(r) => r,
        Err(message) => return invalid(id, message),
    };
    params.insert("uri".into(), Value::String(resolved.upstream_uri));
    let prefix = resolved.prefix;
    let map: Option<MapResult> = (!prefix.is_empty()).then(|| {
        Box::new(move |result: &mut Value| {
            if let Some(contents) = result.get_mut("contents").and_then(Value::as_array_mut) {
                for item in contents {
                    if let Some(Value::String(uri)) = item.get_mut("uri") {
                        *uri = crate::catalog::exposed_uri(&prefix, uri);
                    }
                }
            }
        }) as MapResult
    });
    forward_plain(
        context,
        id,
        "resources/read",
        resolved.upstream,
        params,
        uri,
        map,
    )
    .await
}

/// `prompts/get`: a granted prompt, by the name its server knows.
pub(super) async fn prompts_get(
    context: &Context<'_>,
    id: &RawValue,
    params: Option<&RawValue>,
) -> Response {
    let mut params = match object_params(id, "prompts/get", params) {
        Ok(p) => p,
        Err(body) => return Response::json(http::StatusCode::OK, body),
    };
    let Some(name) = params
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return invalid(id, "prompts/get needs params with the prompt `name`".into());
    };
    if params.get("arguments").is_some_and(|a| !a.is_object()) {
        return invalid(
            id,
            "prompts/get `arguments` must be an object of strings".into(),
        );
    }
    let (upstream, upstream_name) = match resolve_prompt(context, &name) {
        Ok(found) => found,
        Err(message) => return invalid(id, message),
    };
    params.insert("name".into(), Value::String(upstream_name));
    forward_plain(context, id, "prompts/get", upstream, params, name, None).await
}

fn resolve_prompt(context: &Context<'_>, name: &str) -> Result<(Arc<Upstream>, String), String> {
    let catalog = context.endpoint.upstreams().catalog().load();
    let allowed = context.caller.grants.allowed(&catalog);
    let Some((index, prompt)) = catalog.list(Kind::Prompts).find(name) else {
        return Err(format!(
            "unknown prompt `{name}`; call prompts/list for the prompts available"
        ));
    };
    if !context.may_use(Kind::Prompts, index, name, &allowed) {
        return Err(format!(
            "prompt `{name}` is not granted to key `{}`",
            context.caller.name
        ));
    }
    let Some(upstream) = context.endpoint.upstreams().get(&prompt.server) else {
        return Err(format!(
            "prompt `{name}` belongs to a server that is no longer configured"
        ));
    };
    Ok((upstream, prompt.upstream_name.clone()))
}

/// `completion/complete` for a prompt's or a resource template's argument.
pub(super) async fn complete(
    context: &Context<'_>,
    id: &RawValue,
    params: Option<&RawValue>,
) -> Response {
    let mut params = match object_params(id, "completion/complete", params) {
        Ok(p) => p,
        Err(body) => return Response::json(http::StatusCode::OK, body),
    };
    let reference = params.get("ref").cloned().unwrap_or_default();
    let kind = reference.get("type").and_then(Value::as_str).unwrap_or("");
    let (upstream, field, upstream_name, target) = match kind {
        "ref/prompt" => {
            let Some(name) = reference.get("name").and_then(Value::as_str) else {
                return invalid(id, "`ref/prompt` needs a `name`".into());
            };
            match resolve_prompt(context, name) {
                Ok((upstream, upstream_name)) => {
                    (upstream, "name", upstream_name, name.to_string())
                }
                Err(message) => return invalid(id, message),
            }
        }
        "ref/resource" => {
            let Some(uri) = reference.get("uri").and_then(Value::as_str) else {
                return invalid(id, "`ref/resource` needs a `uri`".into());
            };
            match resolve_uri(context, uri) {
                Ok(r) => (r.upstream, "uri", r.upstream_uri, uri.to_string()),
                Err(message) => return invalid(id, message),
            }
        }
        other => {
            return invalid(
                id,
                format!(
                    "completion/complete `ref.type` must be `ref/prompt` or `ref/resource`, not `{other}`"
                ),
            );
        }
    };
    let mut reference = reference;
    reference[field] = Value::String(upstream_name);
    params.insert("ref".into(), reference);
    forward_plain(
        context,
        id,
        "completion/complete",
        upstream,
        params,
        target,
        None,
    )
    .await
}

/// Subscribe the upstreams of `uris` (as clients know them) for a `subscriptions/listen`
/// stream tagged `tag`, and give back what unsubscribes them when the stream ends (unless
/// another subscriber on this instance still wants a URI).
pub(super) fn listen_to_resources(
    context: &Context<'_>,
    tag: crate::mcp::live::SessionTag,
    uris: &std::collections::HashSet<String>,
) -> Box<dyn FnOnce() + Send> {
    let mut held = Vec::new();
    for uri in uris {
        let Ok(resolved) = resolve_uri(context, uri) else {
            continue;
        };
        if context.endpoint.live.subscribe(tag, uri).is_err() {
            continue;
        }
        let upstream = resolved.upstream.clone();
        let upstream_uri = resolved.upstream_uri.clone();
        tokio::spawn(async move {
            if let Ok(params) =
                serde_json::value::to_raw_value(&serde_json::json!({ "uri": upstream_uri }))
            {
                let _ = upstream.request("resources/subscribe", Some(&params)).await;
            }
        });
        held.push((uri.clone(), resolved.upstream, resolved.upstream_uri));
    }
    let live = context.endpoint.live.clone();
    Box::new(move || {
        for (uri, upstream, upstream_uri) in held {
            if live.unsubscribe(tag, &uri) {
                continue;
            }
            tokio::spawn(async move {
                if let Ok(params) =
                    serde_json::value::to_raw_value(&serde_json::json!({ "uri": upstream_uri }))
                {
                    let _ = upstream
                        .request("resources/unsubscribe", Some(&params))
                        .await;
                }
            });
        }
    })
}

/// `resources/subscribe` and `unsubscribe`: the session's subscriptions are kept here (its
/// GET stream delivers the updates); the upstream is subscribed while any session is.
pub(super) async fn subscribe(
    context: &Context<'_>,
    id: &RawValue,
    params: Option<&RawValue>,
    on: bool,
) -> Vec<u8> {
    let method = if on {
        "resources/subscribe"
    } else {
        "resources/unsubscribe"
    };
    let params = match object_params(id, method, params) {
        Ok(p) => p,
        Err(body) => return body,
    };
    let Some(uri) = params.get("uri").and_then(Value::as_str) else {
        return jsonrpc::error_bytes(
            Some(id),
            code::INVALID_PARAMS,
            &format!("{method} needs params with the resource `uri`"),
            None,
        );
    };
    let resolved = match resolve_uri(context, uri) {
        Ok(r) => r,
        Err(message) => {
            return jsonrpc::error_bytes(Some(id), code::INVALID_PARAMS, &message, None);
        }
    };
    let live = &context.endpoint.live;
    let session = context.session.nonce;
    if on {
        if let Err(e) = live.subscribe(session, uri) {
            return jsonrpc::error_bytes(Some(id), code::INVALID_REQUEST, &e.to_string(), None);
        }
    } else if live.unsubscribe(session, uri) {
        // Another session still wants the upstream's updates.
        return jsonrpc::result_bytes(id, "{}");
    }
    let upstream_params = serde_json::json!({ "uri": resolved.upstream_uri });
    let Ok(upstream_params) = serde_json::value::to_raw_value(&upstream_params) else {
        return jsonrpc::error_bytes(Some(id), code::INTERNAL_ERROR, "cannot encode params", None);
    };
    let options = CallOptions {
        session: Some(session),
        session_expires_at: Some(context.session.expires_at),
        ..CallOptions::default()
    };
    let outcome = resolved
        .upstream
        .call(method, Some(&upstream_params), &options)
        .await;
    plain_answer(id, outcome, str::to_string)
}

/// `logging/setLevel`: passed on to every upstream (in the background; an upstream without
/// logging ignores or refuses it), answered at once.
pub(super) fn set_level(
    context: &Context<'_>,
    id: &RawValue,
    params: Option<&RawValue>,
) -> Vec<u8> {
    #[derive(Deserialize)]
    struct Params {
        level: String,
    }
    let Some(Ok(level)) = params.map(|p| serde_json::from_str::<Params>(p.get())) else {
        return jsonrpc::error_bytes(
            Some(id),
            code::INVALID_PARAMS,
            "logging/setLevel needs params with a `level`",
            None,
        );
    };
    let Ok(forwarded) =
        serde_json::value::to_raw_value(&serde_json::json!({ "level": level.level }))
    else {
        return jsonrpc::error_bytes(Some(id), code::INTERNAL_ERROR, "cannot encode params", None);
    };
    for upstream in context.endpoint.upstreams().all().iter() {
        let upstream = upstream.clone();
        let forwarded = forwarded.clone();
        tokio::spawn(async move {
            let _ = upstream.request("logging/setLevel", Some(&forwarded)).await;
        });
    }
    jsonrpc::result_bytes(id, "{}")
}

/// Whether a tool result says `isError: true` (read without building the whole value).
pub(super) fn is_error_result(result: &RawValue) -> bool {
    #[derive(Deserialize)]
    struct Flag {
        #[serde(rename = "isError", default)]
        is_error: bool,
    }
    // Most results do not say: those are not parsed.
    crate::upstream::answer::IS_ERROR
        .find(result.get().as_bytes())
        .is_some()
        && serde_json::from_str::<Flag>(result.get()).is_ok_and(|f| f.is_error)
}

/// The params sent upstream: the upstream's tool name, the caller's arguments and `_meta` as
/// they came (copied as they are, not parsed again).
pub fn forward_params(
    upstream_name: &str,
    arguments: Option<&RawValue>,
    meta: Option<&RawValue>,
) -> Box<RawValue> {
    #[derive(Serialize)]
    struct Forwarded<'a> {
        name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        arguments: Option<&'a RawValue>,
        #[serde(rename = "_meta", skip_serializing_if = "Option::is_none")]
        meta: Option<&'a RawValue>,
    }
    let forwarded = Forwarded {
        name: upstream_name,
        arguments,
        meta,
    };
    // Writing a string and two raw values cannot fail; fall back to a bare name regardless.
    serde_json::value::to_raw_value(&forwarded).unwrap_or_else(|_| {
        serde_json::value::to_raw_value(&serde_json::json!({ "name": upstream_name }))
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_params_keep_arguments_verbatim() {
        let args = RawValue::from_string(r#"{"message": "hi" }"#.into()).unwrap();
        let p = forward_params("echo", Some(&args), None);
        assert_eq!(p.get(), r#"{"name":"echo","arguments":{"message": "hi" }}"#);
    }

    #[test]
    fn reads_is_error() {
        let r = RawValue::from_string(r#"{"content":[],"isError":true}"#.into()).unwrap();
        assert!(is_error_result(&r));
        let r =
            RawValue::from_string(r#"{"content":[{"type":"text","text":"x"}]}"#.into()).unwrap();
        assert!(!is_error_result(&r));
    }

    #[test]
    fn progress_tokens_are_replaced_and_remembered() {
        let meta = RawValue::from_string(r#"{"progressToken":7,"other":true}"#.into()).unwrap();
        let ForwardMeta { meta, progress } = forward_meta(Some(&meta));
        let meta: Value = serde_json::from_str(meta.unwrap().get()).unwrap();
        let progress = progress.unwrap();
        assert_eq!(progress.client.get(), "7");
        assert_eq!(
            Value::String(meta["progressToken"].as_str().unwrap().into()).to_string(),
            progress.upstream
        );
        assert_eq!(meta["other"], true);
        let none = RawValue::from_string(r#"{"other":true}"#.into()).unwrap();
        assert!(forward_meta(Some(&none)).progress.is_none());
    }
}
