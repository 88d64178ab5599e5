//! Code Mode over MCP: the meta-tools answered as `tools/call`s, and the tool calls a script
//! makes, each one governed like a direct call.
//!
//! A script's call is checked against the caller's grants (and narrowing) at the moment it is
//! made, counted by the key's rate limit, sent on the upstream path every call takes, and
//! recorded in the audit log as a child of the `run_script` call (`parent`). A worker is
//! untrusted: whatever it asks for, it gets only what the key may do.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::calls::{Ledger, Work, forward_params, is_error_result};
use super::http::Response;
use super::methods::Context;
use super::modern;
use crate::auth::KeyEntry;
use crate::catalog::{Catalog, Kind};
use crate::codemode::pool::{Caller, ScriptCall, error_answer};
use crate::codemode::protocol::Report;
use crate::codemode::{CodeMode, RUN, SEARCH, STUBS};
use crate::jsonrpc;
use crate::policy::{Allowed, Narrowing};
use crate::upstream::{CallOptions, Outcome};

/// The `server` of meta-tool calls in the audit log and metrics.
const SERVER: &str = "code_mode";

/// Answer a call of one of the meta-tools.
pub(super) async fn meta_call(
    context: &Context<'_>,
    id: &RawValue,
    name: &str,
    arguments: Option<&RawValue>,
    ledger: Ledger,
    mut work: Work,
) -> Response {
    work.server = Some(Arc::from(SERVER));
    let catalog = context.endpoint.upstreams().catalog().load();
    let allowed = context.caller.grants.allowed(&catalog);
    let scriptable = scriptable(context, &catalog, &allowed);
    let code_mode = &context.endpoint.services.code_mode;
    let arguments = arguments.map_or("{}", |a| a.get());
    let answer = match name {
        SEARCH => {
            #[derive(Deserialize)]
            struct Search {
                query: String,
                limit: Option<usize>,
            }
            serde_json::from_str::<Search>(arguments)
                .map_err(|e| format!("{SEARCH} takes {{\"query\": \"words\"}}: {e}"))
                .map(|a| code_mode.search(&catalog, &scriptable, &a.query, a.limit))
        }
        STUBS => {
            #[derive(Deserialize)]
            struct Stubs {
                #[serde(default)]
                tools: Vec<String>,
                #[serde(default)]
                namespaces: Vec<String>,
            }
            serde_json::from_str::<Stubs>(arguments)
                .map_err(|e| {
                    format!("{STUBS} takes {{\"tools\": [...], \"namespaces\": [...]}}: {e}")
                })
                .and_then(|a| code_mode.read_stubs(&catalog, &scriptable, &a.tools, &a.namespaces))
        }
        _ => {
            #[derive(Deserialize)]
            struct Run {
                script: String,
            }
            match serde_json::from_str::<Run>(arguments) {
                Err(e) => Err(format!("{RUN} takes {{\"script\": \"...python...\"}}: {e}")),
                Ok(run) => {
                    let namespaces = code_mode.namespaces(&catalog, &scriptable);
                    let started = Instant::now();
                    let env = Arc::new(ScriptEnv {
                        parent: Ledger::new(context, id, "tools/call"),
                        caller: context.caller.clone(),
                        narrowing: context.narrowing.cloned(),
                        session: context
                            .stateless
                            .is_none()
                            .then_some((context.session.nonce, context.session.expires_at)),
                        made: AtomicUsize::new(0),
                    });
                    let outcome = code_mode
                        .pool()
                        .run(&run.script, namespaces, script_caller(env))
                        .await;
                    work.upstream_time = Some(started.elapsed());
                    outcome.map_err(|e| e.to_string()).and_then(report_text)
                }
            }
        }
    };
    let (text, is_error) = match answer {
        Ok(text) => (text, false),
        Err(text) => (text, true),
    };
    work.status = if is_error { "tool_error" } else { "ok" };
    if is_error {
        work.error = Some(jsonrpc::shorten(&text, 500).into_owned());
    }
    ledger.record(work);
    let result = json!({
        "content": [{"type": "text", "text": text}],
        "isError": is_error,
    })
    .to_string();
    let result = match context.stateless {
        None => result,
        Some(_) => modern::complete(&result, false),
    };
    Response::json(http::StatusCode::OK, jsonrpc::result_bytes(id, &result))
}

/// The indices of the tools a script of this caller may call: its grants, narrowed.
fn scriptable(context: &Context<'_>, catalog: &Catalog, allowed: &Allowed) -> Vec<usize> {
    catalog
        .list(Kind::Tools)
        .items()
        .iter()
        .enumerate()
        .filter(|(i, entry)| context.may_use(Kind::Tools, *i, &entry.exposed_name, allowed))
        .map(|(i, _)| i)
        .collect()
}

/// What a script printed and returned, as the model reads it; its failure as an error.
fn report_text(report: Report) -> Result<String, String> {
    let mut text = report.output;
    if report.cut {
        text.push_str("\n[output cut at `code_mode.output_limit`]\n");
    }
    if let Some(result) = report.result {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str("result = ");
        text.push_str(&result);
    }
    match report.error {
        None if text.is_empty() => Ok("(the script printed nothing and returned None)".into()),
        None => Ok(text),
        Some(error) if text.is_empty() => Err(error),
        Some(error) => Err(format!("{text}\n{error}")),
    }
}

/// What a script's calls need of the request that ran it, owned (calls outlive no request,
/// but run on their own tasks).
struct ScriptEnv {
    parent: Ledger,
    caller: Arc<KeyEntry>,
    narrowing: Option<Narrowing>,
    /// The downstream session (nonce, expiry), for servers with one upstream session per
    /// client; `None` in the stateless era.
    session: Option<([u8; 16], u64)>,
    made: AtomicUsize,
}

fn script_caller(env: Arc<ScriptEnv>) -> Caller {
    Arc::new(move |call: ScriptCall| {
        let env = env.clone();
        Box::pin(async move { script_call(&env, call).await })
    })
}

/// One tool call a script made: the same checks and path as a direct `tools/call`.
async fn script_call(env: &ScriptEnv, call: ScriptCall) -> Box<RawValue> {
    let n = env.made.fetch_add(1, Ordering::Relaxed) + 1;
    let ledger = Ledger::child(&env.parent, n);
    let services = ledger.services().clone();
    let mut work = Work::new();
    work.tool = Some(call.tool.clone());
    work.argument_bytes = call.arguments.get().len();
    if services.audit.include_arguments() {
        work.arguments = Some(call.arguments.clone());
    }
    let refuse = |mut work: Work, status: &'static str, message: String| {
        work.status = status;
        work.error = Some(message.clone());
        ledger.record(work);
        error_answer(&message)
    };
    if !call.arguments.get().trim_start().starts_with('{') {
        return refuse(work, "error", "tool arguments must be an object".into());
    }
    let catalog = services.upstreams.catalog().load();
    let Some((index, tool)) = catalog.find(&call.tool) else {
        return refuse(
            work,
            "error",
            format!("unknown tool `{}`", jsonrpc::shorten(&call.tool, 100)),
        );
    };
    work.server = Some(tool.server.clone());
    let allowed = env.caller.grants.allowed(&catalog);
    if !crate::policy::may_use(
        &allowed,
        env.narrowing.as_ref(),
        Kind::Tools,
        index,
        &tool.exposed_name,
    ) {
        return refuse(
            work,
            "denied",
            format!(
                "tool `{}` is not granted to key `{}`",
                call.tool, env.caller.name
            ),
        );
    }
    if let Some(rpm) = env.caller.requests_per_minute
        && services.rate_limiter.check(&env.caller.name, rpm).is_err()
    {
        return refuse(
            work,
            "error",
            format!(
                "key `{}` is over its limit of {rpm} requests per minute",
                env.caller.name
            ),
        );
    }
    let Some(upstream) = services.upstreams.get(&tool.server) else {
        return refuse(
            work,
            "error",
            format!(
                "tool `{}` belongs to a server that is no longer configured",
                call.tool
            ),
        );
    };
    let params = forward_params(&tool.upstream_name, Some(&call.arguments), None);
    let options = CallOptions {
        session: env.session.map(|(nonce, _)| nonce),
        session_expires_at: env.session.map(|(_, expires)| expires),
        ..CallOptions::default()
    };
    let started = Instant::now();
    let outcome = upstream.call("tools/call", Some(&params), &options).await;
    work.upstream_time = Some(started.elapsed());
    let answer = match outcome {
        Ok(Outcome::Result(result)) => {
            work.status = if is_error_result(&result) {
                "tool_error"
            } else {
                "ok"
            };
            let envelope = format!("{{\"result\":{}}}", result.get());
            RawValue::from_string(envelope).unwrap_or_else(|_| error_answer("unreadable result"))
        }
        Ok(Outcome::Error(error)) => {
            let message = serde_json::from_str::<serde_json::Value>(error.get())
                .ok()
                .and_then(|e| e.get("message").and_then(|m| m.as_str()).map(str::to_owned))
                .unwrap_or_else(|| error.get().to_string());
            work.status = "error";
            work.error = Some(message.clone());
            error_answer(&message)
        }
        Ok(Outcome::Streamed(_)) => {
            work.status = "error";
            error_answer("the upstream's answer came in pieces")
        }
        Err(e) => {
            work.status = "error";
            work.error = Some(e.to_string());
            error_answer(&e.to_string())
        }
    };
    ledger.record(work);
    answer
}

/// Whether `name` is a meta-tool this caller gets.
pub(super) fn is_meta_for(context: &Context<'_>, name: &str) -> bool {
    CodeMode::is_meta(name) && context.narrowing.is_none_or(|n| n.matches(name)) && {
        let catalog = context.endpoint.upstreams().catalog().load();
        let allowed = context.caller.grants.allowed(&catalog);
        context.uses_code_mode(&catalog, &allowed)
    }
}
