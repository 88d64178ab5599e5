//! Model traffic: the providers Sluice may send LLM requests to, the routes that choose them,
//! the prices that turn tokens into money, and where spend is kept.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;

/// The wire format and authentication of a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// Anthropic Messages at `{base_url}/v1/messages`, `x-api-key`.
    Anthropic,
    /// OpenAI Chat Completions (or any compatible server) at `{base_url}/chat/completions`,
    /// `Authorization: Bearer`.
    Openai,
    /// Azure OpenAI: `{base_url}/openai/deployments/{deployment}/chat/completions?api-version=`,
    /// `api-key`.
    AzureOpenai,
    /// Anthropic models on Amazon Bedrock: SigV4-signed `invoke` and
    /// `invoke-with-response-stream`.
    Bedrock,
    /// Anthropic models on Google Vertex AI: `rawPredict` / `streamRawPredict`, bearer token.
    Vertex,
}

impl ProviderKind {
    /// The name used in configuration and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Openai => "openai",
            ProviderKind::AzureOpenai => "azure-openai",
            ProviderKind::Bedrock => "bedrock",
            ProviderKind::Vertex => "vertex",
        }
    }
}

/// One LLM provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    /// Scheme, host and port, plus a path prefix where the provider has one
    /// (`https://api.openai.com/v1`). Bedrock and Vertex default to their regional endpoints.
    #[serde(default)]
    pub base_url: Option<String>,
    /// `anthropic`, `openai`, `azure-openai`: the provider's API key (normally `${VAR}`).
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// `azure-openai`: the `api-version` query parameter.
    #[serde(default = "default_azure_api_version")]
    pub api_version: String,
    /// `azure-openai`: model name → deployment name; a model not listed is its own deployment.
    #[serde(default)]
    pub deployments: BTreeMap<String, String>,
    /// `bedrock`, `vertex`: the region (`us-east-1`, `us-east5`).
    #[serde(default)]
    pub region: Option<String>,
    /// `bedrock`: AWS credentials (normally `${AWS_ACCESS_KEY_ID}` etc.).
    #[serde(default)]
    pub access_key_id: Option<Secret>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    #[serde(default)]
    pub session_token: Option<Secret>,
    /// `vertex`: the Google Cloud project.
    #[serde(default)]
    pub project: Option<String>,
    /// `vertex`: an OAuth access token (normally `${VERTEX_ACCESS_TOKEN}`, refreshed by
    /// whoever runs Sluice and applied with a reload).
    #[serde(default)]
    pub access_token: Option<Secret>,
    /// Extra headers sent on every request to this provider.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Connecting (TCP and TLS).
    #[serde(default = "default_provider_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for the response to start, and then between two pieces of it.
    #[serde(default = "default_provider_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_azure_api_version() -> String {
    "2024-10-21".into()
}
fn default_provider_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_provider_timeout() -> Duration {
    Duration::from_secs(600)
}

impl Provider {
    /// The base URL actually used: the configured one, or the provider's public endpoint.
    pub fn endpoint(&self) -> String {
        if let Some(url) = &self.base_url {
            return url.trim_end_matches('/').to_string();
        }
        let region = self.region.as_deref().unwrap_or("us-east-1");
        match self.kind {
            ProviderKind::Anthropic => "https://api.anthropic.com".into(),
            ProviderKind::Openai => "https://api.openai.com/v1".into(),
            ProviderKind::AzureOpenai => String::new(),
            ProviderKind::Bedrock => format!("https://bedrock-runtime.{region}.amazonaws.com"),
            ProviderKind::Vertex => format!("https://{region}-aiplatform.googleapis.com"),
        }
    }
}

/// Which requests a route takes, and the providers that serve them, in order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Model names or globs (`claude-*`) this route serves.
    pub models: Vec<String>,
    /// Only for these keys (by name); any key when empty.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Only for requests carrying these header values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Tried in order; on a connect error, a timeout, 429, 529 or 5xx before anything reached
    /// the client, the next one is tried.
    pub targets: Vec<Target>,
    /// At most this many targets are tried for one request.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: usize,
}

fn default_max_attempts() -> usize {
    3
}

/// One provider of a route, and the model to ask it for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub provider: String,
    /// The model name to use at this provider; the requested one when absent.
    #[serde(default)]
    pub model: Option<String>,
    /// Targets with weights share first attempts in proportion; the others are fallbacks.
    #[serde(default)]
    pub weight: Option<u32>,
}

/// Prices of a model, in money units (say USD) per million tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// A model name or glob; the first matching entry applies.
    pub model: String,
    #[serde(default)]
    pub input_per_mtok: f64,
    #[serde(default)]
    pub output_per_mtok: f64,
    /// Prompt tokens read from the provider's cache; the input price when absent.
    #[serde(default)]
    pub cache_read_per_mtok: Option<f64>,
    /// Prompt tokens written to the provider's cache; the input price when absent.
    #[serde(default)]
    pub cache_write_per_mtok: Option<f64>,
}

/// Settings of the LLM routes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Llm {
    /// Largest request body accepted (Claude Code sends whole conversations).
    #[serde(default = "default_llm_max_body_bytes")]
    pub max_body_bytes: usize,
    /// A target that failed this many times in a row is skipped...
    #[serde(default = "default_failures_before_cooldown")]
    pub failures_before_cooldown: u32,
    /// ...for this long (unless every target of the route is cooling down).
    #[serde(default = "default_cooldown", with = "humantime_serde")]
    pub cooldown: Duration,
    /// How long a `tool_use` of a model response is remembered, to link the `tools/call` that
    /// follows to it.
    #[serde(default = "default_link_window", with = "humantime_serde")]
    pub link_window: Duration,
}

impl Default for Llm {
    fn default() -> Self {
        Llm {
            max_body_bytes: default_llm_max_body_bytes(),
            failures_before_cooldown: default_failures_before_cooldown(),
            cooldown: default_cooldown(),
            link_window: default_link_window(),
        }
    }
}

fn default_llm_max_body_bytes() -> usize {
    32 * 1024 * 1024
}
fn default_failures_before_cooldown() -> u32 {
    3
}
fn default_cooldown() -> Duration {
    Duration::from_secs(30)
}
fn default_link_window() -> Duration {
    Duration::from_secs(600)
}

/// Where counted state (rate limits, budgets, spend, ended sessions) is kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The embedded store (SQLite) that keeps spend across restarts of one instance.
    #[serde(default = "default_state_path")]
    pub path: PathBuf,
    /// Shared with the other instances through Redis (in-process when absent).
    #[serde(default)]
    pub redis: Option<Redis>,
}

impl Default for State {
    fn default() -> Self {
        State {
            path: default_state_path(),
            redis: None,
        }
    }
}

/// The Redis that several Sluice instances share.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    /// `redis://[user:password@]host:port[/db]` (normally `${SLUICE_REDIS_URL}`).
    pub url: Secret,
    /// Counters are pushed to Redis as they change and read back at least this often.
    #[serde(default = "default_redis_sync_interval", with = "humantime_serde")]
    pub sync_interval: Duration,
    /// Prefix of every Redis key Sluice writes, so that deployments can share a Redis.
    #[serde(default = "default_redis_prefix")]
    pub key_prefix: String,
}

fn default_redis_sync_interval() -> Duration {
    Duration::from_millis(50)
}
fn default_redis_prefix() -> String {
    "sluice".into()
}

fn default_state_path() -> PathBuf {
    PathBuf::from("data/state.db")
}

/// What a key may spend, per calendar day and month (UTC). Costs use `prices`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
    #[serde(default)]
    pub tokens_per_month: Option<u64>,
    #[serde(default)]
    pub cost_per_day: Option<f64>,
    #[serde(default)]
    pub cost_per_month: Option<f64>,
}

/// Checks of `providers`, `routes` and `prices` that serde cannot express.
pub(crate) fn validate(config: &crate::Config, text: &str) -> Result<(), (Option<usize>, String)> {
    use crate::line_of;
    let mut names = std::collections::HashSet::new();
    for provider in &config.providers {
        let at = || line_of(text, &provider.name);
        if provider.name.is_empty() || !names.insert(provider.name.as_str()) {
            return Err((
                at(),
                format!(
                    "provider name `{}` is empty or used twice; give each provider its own name",
                    provider.name
                ),
            ));
        }
        if let Some(url) = &provider.base_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err((
                at(),
                format!(
                    "provider `{}`: `base_url` must start with http:// or https://",
                    provider.name
                ),
            ));
        }
        let missing = |field: &str| {
            Err((
                at(),
                format!(
                    "provider `{}` ({}) needs `{field}`",
                    provider.name,
                    provider.kind.as_str()
                ),
            ))
        };
        match provider.kind {
            ProviderKind::Anthropic if provider.api_key.is_none() => return missing("api_key"),
            ProviderKind::AzureOpenai if provider.api_key.is_none() => return missing("api_key"),
            ProviderKind::AzureOpenai if provider.base_url.is_none() => {
                return missing("base_url (https://<resource>.openai.azure.com)");
            }
            ProviderKind::Bedrock if provider.access_key_id.is_none() => {
                return missing("access_key_id");
            }
            ProviderKind::Bedrock if provider.secret_access_key.is_none() => {
                return missing("secret_access_key");
            }
            ProviderKind::Bedrock | ProviderKind::Vertex if provider.region.is_none() => {
                return missing("region");
            }
            ProviderKind::Vertex if provider.project.is_none() => return missing("project"),
            ProviderKind::Vertex if provider.access_token.is_none() => {
                return missing("access_token");
            }
            _ => {}
        }
        // Values are not quoted back: they may be credentials.
        let credentials = [
            ("api_key", &provider.api_key),
            ("access_token", &provider.access_token),
            ("session_token", &provider.session_token),
        ];
        for (field, value) in credentials {
            if value.as_ref().is_some_and(|v| !is_header_value(v.expose())) {
                return Err((
                    at(),
                    format!(
                        "provider `{}`: `{field}` holds a line break or another control character",
                        provider.name
                    ),
                ));
            }
        }
        for (name, value) in &provider.headers {
            if !is_header_name(name) || !is_header_value(value.expose()) {
                return Err((
                    line_of(text, name),
                    format!(
                        "provider `{}`: header `{name}` needs a name of letters, digits and \
                         `-` and a value without line breaks or other control characters",
                        provider.name
                    ),
                ));
            }
        }
    }
    for route in &config.routes {
        let at = || line_of(text, "targets");
        if route.models.is_empty() {
            return Err((
                line_of(text, "routes"),
                "every route needs `models`, e.g. `models: [\"claude-*\"]`".into(),
            ));
        }
        if route.targets.is_empty() {
            return Err((
                at(),
                format!(
                    "the route for {:?} needs at least one target, e.g. `targets: [{{ provider: NAME }}]`",
                    route.models
                ),
            ));
        }
        if route.max_attempts == 0 {
            return Err((
                line_of(text, "max_attempts"),
                "`max_attempts` must be at least 1".into(),
            ));
        }
        for target in &route.targets {
            if !names.contains(target.provider.as_str()) {
                return Err((
                    line_of(text, &target.provider),
                    format!(
                        "route target names provider `{}`, which is not in `providers`",
                        target.provider
                    ),
                ));
            }
        }
        for key in &route.keys {
            if !config.keys.iter().any(|k| &k.name == key) {
                return Err((
                    line_of(text, key),
                    format!("route names key `{key}`, which is not in `keys`"),
                ));
            }
        }
    }
    if !config.routes.is_empty() && config.llm.max_body_bytes < 1024 {
        return Err((
            line_of(text, "max_body_bytes"),
            "`llm.max_body_bytes` must be at least 1024".into(),
        ));
    }
    for price in &config.prices {
        let prices = [
            Some(price.input_per_mtok),
            Some(price.output_per_mtok),
            price.cache_read_per_mtok,
            price.cache_write_per_mtok,
        ];
        if prices
            .into_iter()
            .flatten()
            .any(|p| !p.is_finite() || p < 0.0)
        {
            return Err((
                line_of(text, &price.model),
                format!("the prices of `{}` must be zero or more", price.model),
            ));
        }
    }
    Ok(())
}

/// An HTTP header name (a token, RFC 9110 §5.1).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An HTTP header value: no control characters but tab (RFC 9110 §5.5).
fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}
