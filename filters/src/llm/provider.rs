//! Providers: where a request goes and how it must look there (URL, credentials, body), for
//! each wire format Sluice speaks.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use serde_json::Value;
use sluice_conf::{ProviderKind, Secret};

use crate::llm::api::Api;
use crate::llm::bedrock;
use crate::llm::translate::{self, Format};

/// The Anthropic API version sent when the client named none.
const ANTHROPIC_VERSION: &str = "2023-06-01";
/// What Vertex AI wants in the body instead of a header.
const VERTEX_ANTHROPIC_VERSION: &str = "vertex-2023-10-16";
const ANTHROPIC_VERSION_HEADER: HeaderName = HeaderName::from_static("anthropic-version");
const ANTHROPIC_BETA_HEADER: HeaderName = HeaderName::from_static("anthropic-beta");

/// Where a provider listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// How a provider's response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Server-sent events of a format.
    Sse(Format),
    /// Bedrock's binary event stream carrying Anthropic events.
    EventStream,
    /// One JSON body of a format.
    Json(Format),
}

/// A request ready to send to a provider.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub address: Address,
    /// Path and query.
    pub path: String,
    /// Every header to send, `host` included; credentials among them (marked sensitive).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    pub wire: Wire,
}

/// Why a request cannot be sent to a provider.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("the request cannot be translated for provider `{provider}`: {source}")]
    Translate {
        provider: String,
        source: translate::TranslateError,
    },
    #[error("the request to provider `{provider}` cannot be signed: {reason}")]
    Sign { provider: String, reason: String },
}

/// A configured provider, ready to address requests to.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    address: Address,
    /// `host[:port]`, as the `host` header and a signed URL name it.
    authority: String,
    /// The base URL's path, without a trailing slash.
    base_path: String,
    /// The headers that are the same on every request here (host, content type, credentials,
    /// the configured extras), made once rather than parsed again for every request.
    fixed_headers: Vec<(HeaderName, HeaderValue)>,
    config: sluice_conf::Provider,
}

/// A provider that cannot be used as configured.
#[derive(Debug, thiserror::Error)]
pub enum BadProvider {
    #[error("provider `{name}`: `base_url` {url:?} is not a usable URL")]
    Url { name: String, url: String },
    /// The value is not named: it may be a credential.
    #[error("provider `{name}`: header `{header}` is not a valid HTTP header name or value")]
    Header { name: String, header: String },
}

impl Provider {
    pub fn new(config: &sluice_conf::Provider) -> Result<Self, BadProvider> {
        let url = config.endpoint();
        let bad = || BadProvider::Url {
            name: config.name.clone(),
            url: sluice_conf::redact_url(&url),
        };
        let uri: Uri = url.parse().map_err(|_| bad())?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad()),
        };
        let host = uri.host().ok_or_else(bad)?.to_string();
        let default_port = if tls { 443 } else { 80 };
        let port = uri.port_u16().unwrap_or(default_port);
        let authority = if port == default_port {
            host.clone()
        } else {
            format!("{host}:{port}")
        };
        Ok(Provider {
            name: config.name.clone(),
            kind: config.kind,
            fixed_headers: fixed_headers(config, &authority)?,
            address: Address { host, port, tls },
            authority,
            base_path: uri.path().trim_end_matches('/').to_string(),
            config: config.clone(),
        })
    }

    /// The format of request and response bodies at this provider.
    pub fn format(&self) -> Format {
        match self.kind {
            ProviderKind::Anthropic | ProviderKind::Bedrock | ProviderKind::Vertex => {
                Format::Anthropic
            }
            ProviderKind::Openai | ProviderKind::AzureOpenai => Format::OpenAi,
        }
    }

    /// Whether the provider counts tokens itself (`/v1/messages/count_tokens`).
    pub fn counts_tokens(&self) -> bool {
        self.kind == ProviderKind::Anthropic
    }

    pub fn connect_timeout(&self) -> Duration {
        self.config.connect_timeout
    }

    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The request for `api` at this provider, asking for `model`. `body` is the client's
    /// request body (`raw` as it came, `parsed` on demand), in `client`'s format.
    pub fn prepare(&self, request: &Request<'_>, model: &str) -> Result<Outgoing, PrepareError> {
        let to = self.format();
        let translated = |value: &Value| {
            translate::request(value, request.client, to, model).map_err(|source| {
                PrepareError::Translate {
                    provider: self.name.clone(),
                    source,
                }
            })
        };
        let stream = request.stream;
        let (path, body, wire) = match self.kind {
            ProviderKind::Anthropic | ProviderKind::Openai => {
                let path = match (self.kind, request.api) {
                    (ProviderKind::Anthropic, Api::CountTokens) => "/v1/messages/count_tokens",
                    (ProviderKind::Anthropic, _) => "/v1/messages",
                    _ => "/chat/completions",
                };
                // The body goes as it came when nothing in it has to change.
                let body = if request.client == to && request.model == model {
                    request.raw.clone()
                } else {
                    json_bytes(&translated(request.parsed())?)
                };
                (
                    [self.base_path.as_str(), path].concat(),
                    body,
                    wire_of(to, stream),
                )
            }
            ProviderKind::AzureOpenai => {
                let deployment = self
                    .config
                    .deployments
                    .get(model)
                    .map_or(model, String::as_str);
                let path = format!(
                    "{}/openai/deployments/{}/chat/completions?api-version={}",
                    self.base_path,
                    encode_segment(deployment),
                    encode_segment(&self.config.api_version)
                );
                let mut body = translated(request.parsed())?;
                // The deployment names the model.
                if let Some(object) = body.as_object_mut() {
                    object.remove("model");
                }
                (path, json_bytes(&body), wire_of(to, stream))
            }
            ProviderKind::Bedrock => {
                let body = bedrock::request_body(&translated(request.parsed())?);
                let path = format!("{}{}", self.base_path, bedrock::invoke_path(model, stream));
                let wire = if stream {
                    Wire::EventStream
                } else {
                    Wire::Json(Format::Anthropic)
                };
                (path, json_bytes(&body), wire)
            }
            ProviderKind::Vertex => {
                let mut body = translated(request.parsed())?;
                if let Some(object) = body.as_object_mut() {
                    object.remove("model");
                    object
                        .entry("anthropic_version")
                        .or_insert_with(|| VERTEX_ANTHROPIC_VERSION.into());
                }
                let verb = if stream {
                    "streamRawPredict"
                } else {
                    "rawPredict"
                };
                let path = format!(
                    "{}/v1/projects/{}/locations/{}/publishers/anthropic/models/{}:{verb}",
                    self.base_path,
                    encode_segment(self.config.project.as_deref().unwrap_or_default()),
                    encode_segment(self.config.region.as_deref().unwrap_or_default()),
                    encode_segment(model)
                );
                (path, json_bytes(&body), wire_of(Format::Anthropic, stream))
            }
        };
        let headers = self.headers(request, &path, &body)?;
        Ok(Outgoing {
            address: self.address.clone(),
            path,
            headers,
            body,
            wire,
        })
    }

    /// The headers of a request: the fixed ones, the length, and the client headers the
    /// provider understands. Never the client's own key.
    fn headers(
        &self,
        request: &Request<'_>,
        path: &str,
        body: &[u8],
    ) -> Result<Vec<(HeaderName, HeaderValue)>, PrepareError> {
        let mut headers = Vec::with_capacity(self.fixed_headers.len() + 4);
        headers.extend(self.fixed_headers.iter().cloned());
        headers.push((CONTENT_LENGTH, HeaderValue::from(body.len())));
        match self.kind {
            ProviderKind::Anthropic => {
                let version = request
                    .headers
                    .get(ANTHROPIC_VERSION_HEADER)
                    .cloned()
                    .unwrap_or(HeaderValue::from_static(ANTHROPIC_VERSION));
                headers.push((ANTHROPIC_VERSION_HEADER, version));
                if let Some(beta) = request.headers.get(ANTHROPIC_BETA_HEADER) {
                    headers.push((ANTHROPIC_BETA_HEADER, beta.clone()));
                }
            }
            ProviderKind::Bedrock => {
                let accept = if request.stream {
                    "application/vnd.amazon.eventstream"
                } else {
                    "application/json"
                };
                headers.push((ACCEPT, HeaderValue::from_static(accept)));
                let signed = self.sign(path, &headers, body)?;
                headers.extend(signed);
            }
            ProviderKind::Openai | ProviderKind::AzureOpenai | ProviderKind::Vertex => {}
        }
        Ok(headers)
    }

    /// Bedrock's SigV4 headers for a request with these headers and body.
    fn sign(
        &self,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: &[u8],
    ) -> Result<Vec<(HeaderName, HeaderValue)>, PrepareError> {
        let failed = |reason: String| PrepareError::Sign {
            provider: self.name.clone(),
            reason,
        };
        let secret = |s: &Option<Secret>| s.as_ref().map(|s| s.expose().to_string());
        let credentials = bedrock::Credentials {
            access_key_id: secret(&self.config.access_key_id).unwrap_or_default(),
            secret_access_key: secret(&self.config.secret_access_key).unwrap_or_default(),
            session_token: secret(&self.config.session_token),
        };
        let texts = headers
            .iter()
            .map(|(name, value)| {
                let value = value
                    .to_str()
                    .map_err(|_| failed(format!("header `{name}` is not visible ASCII")))?;
                Ok((name.as_str().to_string(), value.to_string()))
            })
            .collect::<Result<Vec<_>, PrepareError>>()?;
        let scheme = if self.address.tls { "https" } else { "http" };
        let url = format!("{scheme}://{}{path}", self.authority);
        let signed = bedrock::sign(
            &credentials,
            self.config.region.as_deref().unwrap_or_default(),
            "POST",
            &url,
            &texts,
            body,
            SystemTime::now(),
        )
        .map_err(|e| failed(e.to_string()))?;
        signed
            .into_iter()
            .map(|(name, value)| {
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| failed(format!("signed header name `{name}` is not valid")))?;
                let mut value = HeaderValue::from_str(&value)
                    .map_err(|_| failed(format!("signed header `{name}` has an invalid value")))?;
                value.set_sensitive(true);
                Ok((name, value))
            })
            .collect()
    }
}

/// The headers that do not change from one request to a provider to the next.
fn fixed_headers(
    config: &sluice_conf::Provider,
    authority: &str,
) -> Result<Vec<(HeaderName, HeaderValue)>, BadProvider> {
    let bad = |header: &str| BadProvider::Header {
        name: config.name.clone(),
        header: header.to_string(),
    };
    let sensitive = |header: &str, value: &str| {
        let mut value = HeaderValue::from_bytes(value.as_bytes()).map_err(|_| bad(header))?;
        value.set_sensitive(true);
        Ok::<_, BadProvider>(value)
    };
    let mut headers = vec![
        (
            HOST,
            HeaderValue::from_str(authority).map_err(|_| bad("host"))?,
        ),
        (CONTENT_TYPE, HeaderValue::from_static("application/json")),
        (ACCEPT_ENCODING, HeaderValue::from_static("identity")),
    ];
    let api_key = config.api_key.as_ref().map(Secret::expose);
    let credential = match config.kind {
        ProviderKind::Anthropic => api_key.map(|key| ("x-api-key", key.to_string())),
        ProviderKind::Openai => api_key.map(|key| ("authorization", format!("Bearer {key}"))),
        ProviderKind::AzureOpenai => api_key.map(|key| ("api-key", key.to_string())),
        ProviderKind::Vertex => (config.access_token.as_ref())
            .map(|token| ("authorization", format!("Bearer {}", token.expose()))),
        // Signed per request.
        ProviderKind::Bedrock => None,
    };
    if let Some((name, value)) = credential {
        headers.push((HeaderName::from_static(name), sensitive(name, &value)?));
    }
    for (name, value) in &config.headers {
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad(name))?;
        headers.push((header, sensitive(name, value.expose())?));
    }
    Ok(headers)
}

/// What a provider needs to know of a client request.
pub struct Request<'a> {
    pub api: Api,
    pub client: Format,
    /// The model the client asked for.
    pub model: &'a str,
    pub stream: bool,
    pub raw: &'a Bytes,
    /// `raw` parsed, once, when a provider needs it changed.
    pub parsed: &'a OnceLock<Value>,
    pub headers: &'a HeaderMap,
}

impl<'a> Request<'a> {
    fn parsed(&self) -> &'a Value {
        self.parsed
            .get_or_init(|| serde_json::from_slice(self.raw).unwrap_or(Value::Null))
    }
}

fn wire_of(format: Format, stream: bool) -> Wire {
    if stream {
        Wire::Sse(format)
    } else {
        Wire::Json(format)
    }
}

fn json_bytes(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// Percent-encode a path segment (model ids hold `:` and `@`, deployments anything).
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(yaml: &str) -> Provider {
        let conf: sluice_conf::Provider = serde_yaml_ng(yaml);
        Provider::new(&conf).unwrap()
    }

    fn serde_yaml_ng(yaml: &str) -> sluice_conf::Provider {
        let text = format!("listen: [{{address: 127.0.0.1:1}}]\nproviders:\n  - {yaml}\n");
        sluice_conf::parse(std::path::Path::new("t.yaml"), &text, &|_| None)
            .unwrap()
            .providers
            .remove(0)
    }

    fn outgoing(p: &Provider, body: Value, stream: bool, model: &str) -> Outgoing {
        let raw = Bytes::from(body.to_string());
        let parsed = OnceLock::new();
        let headers = HeaderMap::new();
        p.prepare(
            &Request {
                api: Api::Messages,
                client: Format::Anthropic,
                model: "claude-x",
                stream,
                raw: &raw,
                parsed: &parsed,
                headers: &headers,
            },
            model,
        )
        .unwrap()
    }

    fn header<'a>(o: &'a Outgoing, name: &str) -> Option<&'a str> {
        o.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.to_str().ok())
    }

    #[test]
    fn anthropic_passes_the_body_as_it_came() {
        let p =
            provider("{name: a, kind: anthropic, base_url: 'http://127.0.0.1:9/', api_key: k1}");
        let body = serde_json::json!({"model": "claude-x", "max_tokens": 5, "messages": []});
        let o = outgoing(&p, body.clone(), false, "claude-x");
        assert_eq!(o.path, "/v1/messages");
        assert_eq!(o.body, Bytes::from(body.to_string()));
        assert_eq!(header(&o, "x-api-key"), Some("k1"));
        assert_eq!(header(&o, "host"), Some("127.0.0.1:9"));
        assert_eq!(header(&o, "anthropic-version"), Some(ANTHROPIC_VERSION));
        assert_eq!(o.address.port, 9);
        assert!(!o.address.tls);
    }

    #[test]
    fn headers_carry_credentials_extras_and_the_client_beta() {
        let p = provider(
            "{name: o, kind: openai, base_url: 'https://api.test/v1', api_key: k2, headers: {X-Team: blue}}",
        );
        let body = serde_json::json!({"model": "claude-x", "max_tokens": 5, "messages": []});
        let o = outgoing(&p, body, false, "gpt-x");
        assert_eq!(header(&o, "authorization"), Some("Bearer k2"));
        assert_eq!(header(&o, "x-team"), Some("blue"));
        assert_eq!(header(&o, "host"), Some("api.test"));
        let length = o.body.len().to_string();
        assert_eq!(header(&o, "content-length"), Some(length.as_str()));
        let credential = o
            .headers
            .iter()
            .find(|(n, _)| n == http::header::AUTHORIZATION);
        assert!(credential.is_some_and(|(_, v)| v.is_sensitive()));
        assert!(header(&o, "anthropic-version").is_none());

        let a = provider("{name: a, kind: anthropic, base_url: 'http://127.0.0.1:9', api_key: k1}");
        let raw = Bytes::from_static(b"{}");
        let mut client = HeaderMap::new();
        client.insert("anthropic-beta", HeaderValue::from_static("tools-2025"));
        client.insert("anthropic-version", HeaderValue::from_static("2024-01-01"));
        client.insert("x-api-key", HeaderValue::from_static("the-virtual-key"));
        let o = a
            .prepare(
                &Request {
                    api: Api::Messages,
                    client: Format::Anthropic,
                    model: "claude-x",
                    stream: false,
                    raw: &raw,
                    parsed: &OnceLock::new(),
                    headers: &client,
                },
                "claude-x",
            )
            .unwrap();
        assert_eq!(header(&o, "anthropic-beta"), Some("tools-2025"));
        assert_eq!(header(&o, "anthropic-version"), Some("2024-01-01"));
        let keys: Vec<_> = o.headers.iter().filter(|(n, _)| n == "x-api-key").collect();
        assert_eq!(keys.len(), 1, "never the client's key");
        assert_eq!(header(&o, "x-api-key"), Some("k1"));
    }

    #[test]
    fn vertex_and_azure_paths() {
        let v = provider(
            "{name: v, kind: vertex, base_url: 'https://x.test', region: us-east5, project: p1, access_token: t}",
        );
        let o = outgoing(
            &v,
            serde_json::json!({"model": "claude-x"}),
            true,
            "claude@1",
        );
        assert_eq!(
            o.path,
            "/v1/projects/p1/locations/us-east5/publishers/anthropic/models/claude%401:streamRawPredict"
        );
        assert_eq!(header(&o, "authorization"), Some("Bearer t"));
        assert_eq!(header(&o, "host"), Some("x.test"));
        let body: Value = serde_json::from_slice(&o.body).unwrap();
        assert_eq!(body["anthropic_version"], VERTEX_ANTHROPIC_VERSION);
        assert!(body.get("model").is_none());

        let a = provider(
            "{name: az, kind: azure-openai, base_url: 'https://r.test', api_key: k, deployments: {gpt-4o: prod}}",
        );
        let o = outgoing(
            &a,
            serde_json::json!({"model": "claude-x", "max_tokens": 5, "messages": []}),
            false,
            "gpt-4o",
        );
        assert_eq!(
            o.path,
            "/openai/deployments/prod/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(header(&o, "api-key"), Some("k"));
    }
}
