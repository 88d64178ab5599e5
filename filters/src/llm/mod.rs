//! Model traffic: `/v1/messages`, `/v1/messages/count_tokens`, `/v1/chat/completions` and
//! `/v1/models`, routed to LLM providers with fallback, translated between the Anthropic and
//! OpenAI formats, metered into budgets and the audit log.
//!
//! The endpoint decides; the proxy moves bytes. [`LlmEndpoint::admit`] checks the head (key,
//! rate limit, budgets) before any body is read, [`LlmEndpoint::plan`] reads the body's model
//! and picks the targets to try, [`Plan::attempt`] prepares the request for one target (URL,
//! credentials, translated body) with the [`shape::Shaper`] its response passes through, and
//! [`LlmEndpoint::finish`] accounts for the request once it is over.
//!
//! - [`translate`]: Anthropic Messages ⇄ OpenAI Chat Completions, bodies and event streams.
//! - [`observe`]: usage, `tool_use` blocks and stop reasons read from responses as they pass.
//! - [`bedrock`]: SigV4 signing and the event-stream framing of Amazon Bedrock.
//! - [`provider`]: each provider's URL, credentials and body shape.
//! - [`routes`]: which targets serve a model, in which order, and which are cooling down.
//! - [`budget`]: prices, spend and the limits on it.
//! - [`links`]: tool calls linked to the model response that asked for them.

pub mod api;
pub mod bedrock;
pub mod budget;
pub mod links;
pub mod observe;
pub mod provider;
pub mod resolve;
pub mod routes;
pub mod shape;
pub mod translate;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use crate::audit::{AuditLog, LlmAttempt, LlmRecord, Timestamp, ToolUseRef};
use crate::auth::{KeyEntry, KeyStore};
use crate::mcp::Response;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::state::SpendStore;
use api::Api;
use budget::Prices;
use links::ToolUseBook;
use observe::Observed;
use provider::{Outgoing, Provider};
use shape::Shaper;
use translate::Format;

/// The header naming the provider that served a response.
pub const PROVIDER_HEADER: &str = "x-sluice-provider";
/// The header naming the model used at that provider.
pub const MODEL_HEADER: &str = "x-sluice-model";

/// What one configuration says about model traffic.
struct Policy {
    keys: KeyStore,
    providers: Vec<Provider>,
    routes: Vec<routes::Route>,
    prices: Prices,
    settings: sluice_conf::Llm,
}

impl Policy {
    fn new(config: &sluice_conf::Config) -> Self {
        // Configuration was validated: every target names a provider, every URL parses.
        let providers: Vec<Provider> = config
            .providers
            .iter()
            .filter_map(|p| match Provider::new(p) {
                Ok(provider) => Some(provider),
                Err(e) => {
                    tracing::error!("{e}; the provider is left out");
                    None
                }
            })
            .collect();
        let index = |name: &str| {
            providers
                .iter()
                .position(|p| p.name == name)
                .unwrap_or(usize::MAX)
        };
        let routes = config
            .routes
            .iter()
            .map(|r| routes::Route::new(r, index))
            .collect();
        Policy {
            keys: KeyStore::from_config(config),
            providers,
            routes,
            prices: Prices::new(&config.prices),
            settings: config.llm.clone(),
        }
    }
}

/// What the LLM routes share with the rest of the gateway.
pub struct LlmServices {
    pub audit: Arc<AuditLog>,
    pub metrics: Arc<Metrics>,
    pub rate_limiter: Arc<dyn RateLimiter>,
    pub spend: Arc<dyn SpendStore>,
    pub links: Arc<ToolUseBook>,
}

/// Serves the LLM routes.
pub struct LlmEndpoint {
    policy: ArcSwap<Policy>,
    health: routes::Health,
    services: LlmServices,
    resolver: resolve::Resolver,
    /// Record ids: a per-process prefix (`llm-` and 8 hex digits, `-`) and a counter.
    id_prefix: String,
    next_id: AtomicU64,
}

/// A request whose head was accepted.
pub struct Admission {
    api: Api,
    key: Arc<KeyEntry>,
    policy: Arc<Policy>,
    started: Instant,
}

impl Admission {
    pub fn api(&self) -> Api {
        self.api
    }

    /// The largest body this request may have.
    pub fn max_body_bytes(&self) -> usize {
        self.policy.settings.max_body_bytes
    }
}

/// What to do with a request whose body was read.
pub enum Planned {
    /// Answer it here (`/v1/models`, a local token count, a refusal).
    Answer(Response),
    /// Send it to providers, in order.
    Proxy(Box<Plan>),
}

/// The targets to try for one request, and what happened so far.
pub struct Plan {
    admission: Admission,
    pub record_id: String,
    model: String,
    stream: bool,
    body: Bytes,
    parsed: OnceLock<Value>,
    /// The client headers providers may need (`anthropic-version`, `anthropic-beta`).
    headers: HeaderMap,
    /// (provider index, model to ask it for).
    targets: Vec<(usize, String)>,
    attempts: Vec<LlmAttempt>,
    upstream_time: Duration,
}

/// One target's request, ready to send, and the shaping of its response.
pub struct Attempt {
    pub outgoing: Outgoing,
    shaper: Shaper,
    /// Where the response's tool uses are remembered, as they complete.
    linker: Option<Linker>,
    pub provider: String,
    pub provider_model: String,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// Whether another target is left if this one fails.
    pub may_fall_back: bool,
}

/// Remembers a response's tool uses for the tool calls that follow (see [`links`]).
struct Linker {
    book: Arc<ToolUseBook>,
    key: Arc<str>,
    record_id: String,
}

impl Attempt {
    /// The provider answered `status`: how the head must change.
    pub fn head(&mut self, status: u16) -> shape::Head {
        self.shaper.head(status)
    }

    /// A piece of the provider's body (`None` at the end): what the client gets now. Tool
    /// uses that completed in it are remembered before the client can act on them.
    pub fn body(&mut self, piece: &mut Option<Bytes>, end: bool) {
        self.shaper.shape(piece, end);
        self.remember_tool_uses();
    }

    /// The stream broke off after it started: what ends the client's stream.
    pub fn broken(&mut self, reason: &str) -> Option<Bytes> {
        let out = self.shaper.broken(reason);
        self.remember_tool_uses();
        out
    }

    fn remember_tool_uses(&mut self) {
        let Some(linker) = &self.linker else {
            return;
        };
        for tool_use in self.shaper.new_tool_uses() {
            linker.book.remember(
                &linker.key,
                &linker.record_id,
                &tool_use.id,
                &tool_use.name,
                &tool_use.input,
            );
        }
    }

    /// What was seen of the response, once it ended or broke off (a body without tool
    /// calls may be left to read later: [`observe::Observation::read`]).
    pub fn take_observation(&mut self) -> observe::Observation {
        self.shaper.take_observation()
    }

    /// The format the client reads.
    pub fn client_format(&self) -> Format {
        self.shaper.client_format()
    }
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum AttemptEnd {
    /// The provider answered with this status.
    Answered(u16),
    /// No answer: connect error, timeout, broken connection.
    Failed(String),
}

/// The fields of a request body routing needs; the rest is not looked at here.
#[derive(Deserialize)]
struct Head {
    model: String,
    #[serde(default)]
    stream: bool,
}

impl LlmEndpoint {
    pub fn new(config: &sluice_conf::Config, services: LlmServices) -> Self {
        let mut prefix = [0u8; 4];
        rand::fill(&mut prefix);
        LlmEndpoint {
            policy: ArcSwap::from_pointee(Policy::new(config)),
            health: routes::Health::default(),
            services,
            resolver: resolve::Resolver::default(),
            id_prefix: format!(
                "llm-{}-",
                prefix
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            ),
            next_id: AtomicU64::new(1),
        }
    }

    /// Apply a new configuration; requests in flight finish on the old one.
    pub fn reload(&self, config: &sluice_conf::Config) {
        self.policy.store(Arc::new(Policy::new(config)));
    }

    /// Providers' addresses (looked up at most every 30 s per host).
    pub fn resolver(&self) -> &resolve::Resolver {
        &self.resolver
    }

    pub fn links(&self) -> &Arc<ToolUseBook> {
        &self.services.links
    }

    /// Whether any provider is configured (else the LLM routes answer 404).
    pub fn is_configured(&self) -> bool {
        !self.policy.load().providers.is_empty()
    }

    /// Check a request's head: method, key, rate limit, budgets. No body has been read.
    pub fn admit(
        &self,
        api: Api,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<Admission, Response> {
        let format = api.format();
        let expected = if api == Api::Models {
            Method::GET
        } else {
            Method::POST
        };
        if *method != expected {
            return Err(refusal(
                format,
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("this endpoint takes {expected}"),
            ));
        }
        let policy = self.policy.load_full();
        let key = policy.keys.authenticate(headers).map_err(|e| {
            self.services.metrics.auth_failures.inc();
            refusal(format, StatusCode::UNAUTHORIZED, &e.to_string()).with_header(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sluice\""),
            )
        })?;
        if let Some(rpm) = key.requests_per_minute
            && let Err(wait) = self.services.rate_limiter.check(&key.name, rpm)
        {
            self.services
                .metrics
                .rate_limited
                .with_label_values(&[&key.name])
                .inc();
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            return Err(refusal(
                format,
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "key `{}` is over its rate limit of {rpm} requests per minute; retry in {seconds} s",
                    key.name
                ),
            )
            .with_header(RETRY_AFTER, HeaderValue::from(seconds)));
        }
        Ok(Admission {
            api,
            key,
            policy,
            started: Instant::now(),
        })
    }

    /// Decide what to do with an admitted request and its body.
    pub fn plan(&self, admission: Admission, headers: &HeaderMap, body: Bytes) -> Planned {
        let format = admission.api.format();
        if admission.api == Api::Models {
            return Planned::Answer(models(&admission, headers));
        }
        let head: Head = match serde_json::from_slice(&body) {
            Ok(head) => head,
            Err(e) => {
                return Planned::Answer(refusal(
                    format,
                    StatusCode::BAD_REQUEST,
                    &format!("the request body must be a JSON object with a string `model`: {e}"),
                ));
            }
        };
        let key = &admission.key;
        if !key.may_use_model(&head.model) {
            return Planned::Answer(self.denied(
                &admission,
                &head.model,
                StatusCode::FORBIDDEN,
                format!(
                    "model `{}` is not allowed for key `{}`; ask the gateway's operator to add it to the key's `models`",
                    head.model, key.name
                ),
            ));
        }
        // Budgets are checked once the model is known, so that the refusal is audited with it.
        if let Some(over) = budget::over(key, self.services.spend.as_ref()) {
            self.services
                .metrics
                .rate_limited
                .with_label_values(&[&key.name])
                .inc();
            let retry_after = over.retry_after.as_secs().max(1);
            return Planned::Answer(
                self.denied(
                    &admission,
                    &head.model,
                    StatusCode::TOO_MANY_REQUESTS,
                    over.message,
                )
                .with_header(RETRY_AFTER, HeaderValue::from(retry_after)),
            );
        }
        let policy = &admission.policy;
        let Some(route) = routes::find(&policy.routes, &head.model, &key.name, headers) else {
            return Planned::Answer(refusal(
                format,
                StatusCode::NOT_FOUND,
                &format!(
                    "no route serves model `{}`; the gateway's `routes` list the models it serves",
                    head.model
                ),
            ));
        };
        let name_of = |t: &routes::Target| {
            let provider = policy.providers.get(t.provider);
            (
                provider.map_or_else(String::new, |p| p.name.clone()),
                t.model.clone().unwrap_or_else(|| head.model.clone()),
            )
        };
        let order = routes::order(route, &self.health, name_of, |total| {
            rand::random_range(0..total)
        });
        let targets: Vec<(usize, String)> = order
            .into_iter()
            .map(|i| &route.targets[i])
            .filter(|t| t.provider < policy.providers.len())
            .map(|t| {
                (
                    t.provider,
                    t.model.clone().unwrap_or_else(|| head.model.clone()),
                )
            })
            .collect();
        if admission.api == Api::CountTokens
            && !targets
                .first()
                .is_some_and(|(p, _)| policy.providers[*p].counts_tokens())
        {
            let (tokens, response) = count_tokens_locally(&body);
            self.record_local(&admission, &head.model, tokens);
            return Planned::Answer(response);
        }
        Planned::Proxy(Box::new(Plan {
            record_id: self.next_record_id(),
            model: head.model,
            stream: head.stream && admission.api != Api::CountTokens,
            body,
            parsed: OnceLock::new(),
            headers: client_headers(headers),
            targets,
            attempts: Vec::new(),
            upstream_time: Duration::ZERO,
            admission,
        }))
    }

    /// A new LLM record id: this instance's prefix and a counter.
    fn next_record_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(n);
        let mut id = String::with_capacity(self.id_prefix.len() + digits.len());
        id.push_str(&self.id_prefix);
        id.push_str(digits);
        id
    }

    /// A request answered here (a local token count), in the audit log.
    fn record_local(&self, admission: &Admission, model: &str, input_tokens: u64) {
        let mut record = self.record(admission, model, "ok", StatusCode::OK.as_u16());
        record.input_tokens = input_tokens;
        self.services.audit.record(record);
    }

    /// An audit record of a request no provider served.
    fn record(
        &self,
        admission: &Admission,
        model: &str,
        status: &'static str,
        http_status: u16,
    ) -> LlmRecord {
        LlmRecord {
            time: Timestamp::now(),
            request_id: self.next_record_id(),
            key: String::from(&*admission.key.name),
            method: admission.api.label(),
            model: model.to_string(),
            provider: None,
            provider_model: None,
            stream: false,
            status,
            http_status,
            error: None,
            attempts: Vec::new(),
            input_tokens: 0,
            output_tokens: 0,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            cost: 0.0,
            tool_uses: Vec::new(),
            upstream_ms: None,
            total_ms: admission.started.elapsed().as_secs_f64() * 1000.0,
        }
    }

    /// A refusal of a request whose model was read, in the audit log.
    fn denied(
        &self,
        admission: &Admission,
        model: &str,
        status: StatusCode,
        message: String,
    ) -> Response {
        let mut record = self.record(admission, model, "denied", status.as_u16());
        record.error = Some(message.clone());
        self.services.audit.record(record);
        self.services
            .metrics
            .llm_requests
            .with_label_values(&["none", model, "denied"])
            .inc();
        refusal(admission.api.format(), status, &message)
    }

    /// The request for target `index` of `plan`, its answer's tool uses remembered for the
    /// tool calls that follow.
    pub fn attempt(&self, plan: &Plan, index: usize) -> Result<Attempt, provider::PrepareError> {
        let mut attempt = plan.attempt(index)?;
        attempt.linker = Some(Linker {
            book: self.services.links.clone(),
            key: plan.admission.key.name.clone(),
            record_id: plan.record_id.clone(),
        });
        Ok(attempt)
    }

    /// An attempt ended; `retry` says whether the next target will be tried.
    pub fn attempt_ended(
        &self,
        plan: &mut Plan,
        index: usize,
        end: &AttemptEnd,
        elapsed: Duration,
    ) {
        plan.upstream_time += elapsed;
        let Some((provider, model)) = plan.target(index) else {
            return;
        };
        let settings = &plan.admission.policy.settings;
        let failed = match end {
            AttemptEnd::Answered(status) => retryable(*status),
            AttemptEnd::Failed(_) => true,
        };
        if failed {
            if self.health.failed(
                &provider,
                &model,
                settings.failures_before_cooldown,
                settings.cooldown,
            ) {
                tracing::warn!(
                    "LLM provider `{provider}` (model `{model}`) failed {} times in a row; skipped for {}",
                    settings.failures_before_cooldown,
                    humantime::format_duration(settings.cooldown)
                );
            }
        } else {
            self.health.succeeded(&provider, &model);
        }
        plan.attempts.push(LlmAttempt {
            provider,
            model,
            status: match end {
                AttemptEnd::Answered(status) => Some(*status),
                AttemptEnd::Failed(_) => None,
            },
            error: match end {
                AttemptEnd::Failed(e) => Some(e.clone()),
                AttemptEnd::Answered(_) => None,
            },
        });
    }

    /// Count a fallback from the provider of attempt `index`.
    pub fn fell_back(&self, plan: &Plan, index: usize) {
        if let Some((provider, _)) = plan.target(index) {
            self.services
                .metrics
                .llm_fallbacks
                .with_label_values(&[&provider])
                .inc();
        }
    }

    /// Account for a request that is over: spend, metrics, the audit record, and the tool
    /// uses its response asked for. `served` is the attempt whose answer the client got.
    pub fn finish(
        &self,
        plan: Plan,
        status: u16,
        served: Option<usize>,
        observed: Option<&Observed>,
    ) {
        let default = Observed::default();
        let observed = observed.unwrap_or(&default);
        let usage = observed.usage;
        let target = served.and_then(|i| plan.target(i));
        let (provider, provider_model) = match &target {
            Some((p, m)) => (Some(p.clone()), Some(m.clone())),
            None => (None, None),
        };
        let policy = &plan.admission.policy;
        let key = &plan.admission.key;
        let cost_micros = policy.prices.cost_micros(
            provider_model.as_deref().unwrap_or(&plan.model),
            &plan.model,
            &usage,
        );
        if plan.admission.api != Api::CountTokens {
            self.services.spend.add(
                &key.name,
                crate::state::Spend {
                    requests: 1,
                    tokens: usage.total(),
                    cost_micros,
                },
            );
        }
        let ok = (200..300).contains(&status) && observed.error.is_none();
        let outcome = if ok { "ok" } else { "error" };
        let label_provider = provider.as_deref().unwrap_or("none");
        let label_model = provider_model.as_deref().unwrap_or(&plan.model);
        let metrics = &self.services.metrics;
        metrics
            .llm_requests
            .with_label_values(&[label_provider, label_model, outcome])
            .inc();
        for (kind, count) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_tokens),
            ("cache_write", usage.cache_write_tokens),
        ] {
            if count > 0 {
                metrics
                    .llm_tokens
                    .with_label_values(&[label_provider, label_model, kind])
                    .inc_by(count);
            }
        }
        let error = observed.error.clone().or_else(|| {
            (!ok).then(|| {
                plan.attempts
                    .last()
                    .and_then(|a| a.error.clone())
                    .unwrap_or_else(|| format!("HTTP {status}"))
            })
        });
        self.services.audit.record(LlmRecord {
            time: Timestamp::now(),
            request_id: plan.record_id,
            key: String::from(&*key.name),
            method: plan.admission.api.label(),
            model: plan.model,
            provider,
            provider_model,
            stream: plan.stream,
            status: outcome,
            http_status: status,
            error,
            attempts: plan.attempts,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cache_read_tokens: usage.cache_read_tokens,
            cache_write_tokens: usage.cache_write_tokens,
            cost: cost_micros as f64 / 1_000_000.0,
            tool_uses: observed
                .tool_uses
                .iter()
                .map(|t| ToolUseRef {
                    id: t.id.clone(),
                    name: t.name.clone(),
                })
                .collect(),
            upstream_ms: Some(plan.upstream_time.as_secs_f64() * 1000.0),
            total_ms: plan.admission.started.elapsed().as_secs_f64() * 1000.0,
        });
    }
}

impl Plan {
    /// How many targets may be tried.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    pub fn api(&self) -> Api {
        self.admission.api
    }

    pub fn stream(&self) -> bool {
        self.stream
    }

    /// The client's request body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Time spent waiting for providers so far.
    pub fn upstream_time(&self) -> Duration {
        self.upstream_time
    }

    fn target(&self, index: usize) -> Option<(String, String)> {
        let (provider, model) = self.targets.get(index)?;
        let provider = self.admission.policy.providers.get(*provider)?;
        Some((provider.name.clone(), model.clone()))
    }

    /// The request for target `index`, and the shaping of its answer.
    pub fn attempt(&self, index: usize) -> Result<Attempt, provider::PrepareError> {
        let (provider_index, model) = &self.targets[index];
        let provider = &self.admission.policy.providers[*provider_index];
        let client = self.admission.api.format();
        let outgoing = provider.prepare(
            &provider::Request {
                api: self.admission.api,
                client,
                model: &self.model,
                stream: self.stream,
                raw: &self.body,
                parsed: &self.parsed,
                headers: &self.headers,
            },
            model,
        )?;
        let shaper = Shaper::new(
            client,
            outgoing.wire,
            &self.model,
            provider.kind == sluice_conf::ProviderKind::Bedrock,
        );
        Ok(Attempt {
            outgoing,
            shaper,
            linker: None,
            provider: provider.name.clone(),
            provider_model: model.clone(),
            connect_timeout: provider.connect_timeout(),
            timeout: provider.timeout(),
            may_fall_back: index + 1 < self.targets.len(),
        })
    }

    /// The answer when no target could be tried at all.
    pub fn unreachable(&self, why: &str) -> Response {
        refusal(self.admission.api.format(), StatusCode::BAD_GATEWAY, why)
    }
}

/// Whether a provider's answer with `status` should go to the next target instead.
pub fn retryable(status: u16) -> bool {
    status == 429 || status == 529 || status == 408 || status >= 500
}

/// An error answer in the client's format.
pub fn refusal(format: Format, status: StatusCode, message: &str) -> Response {
    Response::json(
        status,
        translate::error_message(format, status.as_u16(), message),
    )
}

/// The client headers passed on to providers that understand them.
fn client_headers(headers: &HeaderMap) -> HeaderMap {
    // Names made once: a `&str` name is parsed again on every lookup and insert.
    static NAMES: [HeaderName; 2] = [
        HeaderName::from_static("anthropic-version"),
        HeaderName::from_static("anthropic-beta"),
    ];
    let mut kept = HeaderMap::new();
    for name in &NAMES {
        if let Some(value) = headers.get(name) {
            kept.insert(name.clone(), value.clone());
        }
    }
    kept
}

/// `GET /v1/models`: the route models the key may use, in the client's list format.
fn models(admission: &Admission, headers: &HeaderMap) -> Response {
    let mut ids: Vec<&str> = admission
        .policy
        .routes
        .iter()
        .flat_map(|r| r.model_names.iter().map(String::as_str))
        .filter(|m| admission.key.may_use_model(m))
        .collect();
    ids.dedup();
    let body = if headers.contains_key("anthropic-version") {
        serde_json::json!({
            "data": ids.iter().map(|id| serde_json::json!({
                "type": "model", "id": id, "display_name": id, "created_at": "1970-01-01T00:00:00Z"
            })).collect::<Vec<_>>(),
            "has_more": false,
            "first_id": ids.first(),
            "last_id": ids.last(),
        })
    } else {
        serde_json::json!({
            "object": "list",
            "data": ids.iter().map(|id| serde_json::json!({
                "id": id, "object": "model", "created": 0, "owned_by": "sluice"
            })).collect::<Vec<_>>(),
        })
    };
    Response::json(StatusCode::OK, body.to_string())
}

/// A token count for providers that have no counting endpoint: about four bytes of text a
/// token, over the messages, the system prompt and the tools.
fn count_tokens_locally(body: &[u8]) -> (u64, Response) {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mut bytes = 0usize;
    for field in ["system", "messages", "tools"] {
        if let Some(v) = value.get(field) {
            bytes += text_bytes(v);
        }
    }
    let tokens = bytes.div_ceil(4).max(1) as u64;
    (
        tokens,
        Response::json(StatusCode::OK, format!("{{\"input_tokens\":{tokens}}}")),
    )
}

fn text_bytes(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(text_bytes).sum(),
        Value::Object(map) => map.iter().map(|(k, v)| k.len() + text_bytes(v)).sum(),
        other => other.to_string().len(),
    }
}
