//! Sluice's configuration: the typed model ([`model`]), loading a YAML file into it with
//! `${VAR}` substitution, and validation whose messages name the file, the line and the fix.
//!
//! The rest of the program never sees YAML: it receives a validated [`Config`] snapshot, which
//! can be swapped as a whole on reload.

mod env;
mod llm;
pub mod model;
mod secret;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

pub use model::*;
pub use secret::{Secret, redact_url};

/// A configuration that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, when the problem can be placed.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Read, substitute and validate the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: None,
        message: format!("cannot read the configuration file: {e}"),
    })?;
    parse(path, &text, &|name| std::env::var(name).ok())
}

/// Parse configuration `text` (named `file` in errors), looking variables up with `lookup`.
pub fn parse(
    file: &Path,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let error = |line: Option<usize>, message: String| ConfigError {
        file: file.to_path_buf(),
        line,
        message,
    };
    let mut value: serde_yaml::Value = serde_yaml::from_str(text)
        .map_err(|e| error(e.location().map(|l| l.line()), yaml_message(&e)))?;
    env::substitute(&mut value, lookup).map_err(|missing| {
        let needle = format!("${{{}}}", missing.name);
        error(
            line_of(text, &needle),
            format!(
                "environment variable `{}` is not set; export it or remove `{needle}`",
                missing.name
            ),
        )
    })?;
    // Deserialize from the text for serde_yaml's line numbers on type errors, then again from
    // the substituted value for the real content.
    if let Err(e) = serde_yaml::from_str::<Config>(text)
        && e.location().is_some()
        && !text.contains("${")
    {
        return Err(error(e.location().map(|l| l.line()), yaml_message(&e)));
    }
    let config: Config = serde_yaml::from_value(value).map_err(|e| {
        let line = e
            .location()
            .map(|l| l.line())
            .or_else(|| guess_line(text, &e));
        error(line, yaml_message(&e))
    })?;
    validate(&config, text).map_err(|(line, message)| error(line, message))?;
    Ok(config)
}

fn yaml_message(e: &serde_yaml::Error) -> String {
    // serde_yaml appends " at line L column C"; the line is reported separately.
    let msg = e.to_string();
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    }
}

/// Place an error without a location by the first backquoted word it names.
fn guess_line(text: &str, e: &serde_yaml::Error) -> Option<usize> {
    let msg = e.to_string();
    let start = msg.find('`')? + 1;
    let len = msg[start..].find('`')?;
    line_of(text, &msg[start..start + len])
}

/// The 1-based line of the first occurrence of `needle` in `text`.
pub(crate) fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

/// Checks that serde cannot express. Returns the line (if known) and a message with the fix.
fn validate(config: &Config, text: &str) -> Result<(), (Option<usize>, String)> {
    if config.listen.is_empty() {
        return Err((
            line_of(text, "listen"),
            "`listen` needs at least one address, e.g. `- address: 127.0.0.1:8080`".into(),
        ));
    }
    for listener in &config.listen {
        if let Some(tls) = &listener.tls
            && !matches!(tls.min_version.as_str(), "1.2" | "1.3")
        {
            return Err((
                line_of(text, "min_version"),
                format!(
                    "`min_version` is `{}`; use \"1.2\" or \"1.3\"",
                    tls.min_version
                ),
            ));
        }
    }
    if config.threads == 0 {
        return Err((
            line_of(text, "threads"),
            "`threads` must be at least 1".into(),
        ));
    }
    validate_limits(config, text)?;
    if config
        .mcp
        .previous_session_secrets
        .iter()
        .any(|s| s.expose().len() < 16)
    {
        return Err((
            line_of(text, "previous_session_secrets"),
            "every `mcp.previous_session_secrets` entry must be at least 16 bytes".into(),
        ));
    }
    llm::validate(config, text)?;
    if config.mcp.page_size == 0 {
        return Err((
            line_of(text, "page_size"),
            "`mcp.page_size` must be at least 1".into(),
        ));
    }
    validate_keys(config, text)?;
    let mut names = HashSet::new();
    let mut prefixes = HashSet::new();
    for server in &config.mcp.servers {
        let at = line_of(text, &format!("name: {}", server.name))
            .or_else(|| line_of(text, &server.name));
        if server.name.is_empty()
            || !server
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err((
                at,
                format!(
                    "server name `{}` must be non-empty and use only letters, digits, `-` and `_`",
                    server.name
                ),
            ));
        }
        if !names.insert(server.name.as_str()) {
            return Err((
                at,
                format!(
                    "server name `{}` is used twice; names must be unique",
                    server.name
                ),
            ));
        }
        let transports = [
            server.stdio.is_some(),
            server.http.is_some(),
            server.sse.is_some(),
        ];
        match transports.iter().filter(|t| **t).count() {
            0 => {
                return Err((
                    at,
                    format!(
                        "server `{}` needs a transport: add `stdio: {{ command: ... }}`, `http: {{ url: ... }}` (Streamable HTTP) or `sse: {{ url: ... }}` (legacy HTTP+SSE)",
                        server.name
                    ),
                ));
            }
            1 => {}
            _ => {
                return Err((
                    at,
                    format!(
                        "server `{}` has more than one of `stdio`, `http` and `sse`; keep exactly one",
                        server.name
                    ),
                ));
            }
        }
        if let Some(stdio) = &server.stdio
            && stdio.command.is_empty()
        {
            return Err((
                at,
                format!("server `{}` has an empty stdio `command`", server.name),
            ));
        }
        if let Some(http) = server.http.as_ref().or(server.sse.as_ref())
            && !(http.url.starts_with("http://") || http.url.starts_with("https://"))
        {
            return Err((
                line_of(text, &http.url).or(at),
                format!(
                    "server `{}` has url `{}`; it must start with http:// or https://",
                    server.name,
                    redact_url(&http.url)
                ),
            ));
        }
        if server.era == UpstreamEra::Stateless && server.http.is_none() {
            return Err((
                at,
                format!(
                    "server `{}`: `era: stateless` needs an `http` server (stdio and legacy SSE servers have sessions)",
                    server.name
                ),
            ));
        }
        if server.session == SessionMode::PerClient && server.era == UpstreamEra::Stateless {
            return Err((
                at,
                format!(
                    "server `{}`: `session: per_client` needs sessions; drop `era: stateless`",
                    server.name
                ),
            ));
        }
        if server.session == SessionMode::PerClient && server.stdio.is_some() {
            return Err((
                at,
                format!(
                    "server `{}`: `session: per_client` needs an `http` or `sse` server (a stdio server has one session: its process)",
                    server.name
                ),
            ));
        }
        let prefix = server.tool_prefix();
        if !prefix.is_empty() && !prefixes.insert(prefix.to_string()) {
            return Err((
                at,
                format!(
                    "tool prefix `{prefix}` of server `{}` is already used by another server; set a distinct `prefix`",
                    server.name
                ),
            ));
        }
    }
    Ok(())
}

fn validate_limits(config: &Config, text: &str) -> Result<(), (Option<usize>, String)> {
    let limits = &config.limits;
    let checks = [
        (
            limits.max_connections == 0,
            "max_connections",
            "`limits.max_connections` must be at least 1",
        ),
        (
            limits.max_header_bytes < 1024,
            "max_header_bytes",
            "`limits.max_header_bytes` must be at least 1024",
        ),
        (
            limits.header_timeout.is_zero(),
            "header_timeout",
            "`limits.header_timeout` must be longer than 0s",
        ),
        (
            limits.body_timeout.is_zero(),
            "body_timeout",
            "`limits.body_timeout` must be longer than 0s",
        ),
        (
            config.mcp.max_sessions == 0,
            "max_sessions",
            "`mcp.max_sessions` must be at least 1",
        ),
        (
            config.mcp.session_idle_timeout.is_zero(),
            "session_idle_timeout",
            "`mcp.session_idle_timeout` must be longer than 0s",
        ),
        (
            config.code_mode.workers == 0,
            "workers",
            "`code_mode.workers` must be at least 1",
        ),
        (
            config.code_mode.cpu_limit.as_secs() == 0,
            "cpu_limit",
            "`code_mode.cpu_limit` must be at least 1s",
        ),
        (
            config.code_mode.time_limit.is_zero(),
            "time_limit",
            "`code_mode.time_limit` must be longer than 0s",
        ),
        (
            config.code_mode.memory_mb < 32,
            "memory_mb",
            "`code_mode.memory_mb` must be at least 32",
        ),
        (
            config.code_mode.max_tool_calls == 0,
            "max_tool_calls",
            "`code_mode.max_tool_calls` must be at least 1",
        ),
    ];
    if let Some((_, field, message)) = checks.iter().find(|(bad, _, _)| *bad) {
        return Err((line_of(text, field), (*message).into()));
    }
    for server in &config.mcp.servers {
        if server.max_concurrent_calls == 0 {
            return Err((
                line_of(text, "max_concurrent_calls"),
                format!(
                    "server `{}`: `max_concurrent_calls` must be at least 1",
                    server.name
                ),
            ));
        }
    }
    if let Some(admin) = &config.admin
        && !admin.address.ip().is_loopback()
        && admin.token.is_none()
    {
        return Err((
            line_of(text, "admin"),
            format!(
                "the admin listener on {} is reachable beyond this machine without a token; set `admin.token: ${{SLUICE_ADMIN_TOKEN}}` or bind it to 127.0.0.1",
                admin.address
            ),
        ));
    }
    Ok(())
}

fn validate_keys(config: &Config, text: &str) -> Result<(), (Option<usize>, String)> {
    for group in config.mcp.tool_groups.keys() {
        if group.is_empty() {
            return Err((
                line_of(text, "tool_groups"),
                "a tool group needs a name".into(),
            ));
        }
    }
    let mut names = HashSet::new();
    for key in &config.keys {
        let at = line_of(text, &format!("name: {}", key.name)).or_else(|| line_of(text, &key.name));
        if key.name.is_empty() {
            return Err((line_of(text, "keys"), "every key needs a `name`".into()));
        }
        if !names.insert(key.name.as_str()) {
            return Err((
                at,
                format!(
                    "key name `{}` is used twice; names must be unique",
                    key.name
                ),
            ));
        }
        match (&key.key, &key.key_sha256) {
            (None, None) => {
                return Err((
                    at,
                    format!(
                        "key `{}` needs `key: ${{SOME_VAR}}` or `key_sha256: <64 hex digits>`",
                        key.name
                    ),
                ));
            }
            (Some(_), Some(_)) => {
                return Err((
                    at,
                    format!(
                        "key `{}` has both `key` and `key_sha256`; keep one",
                        key.name
                    ),
                ));
            }
            (Some(secret), None) if secret.expose().len() < 8 => {
                return Err((
                    at,
                    format!(
                        "key `{}` is shorter than 8 characters; use a long random secret",
                        key.name
                    ),
                ));
            }
            (None, Some(hash))
                if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                return Err((
                    line_of(text, hash).or(at),
                    format!("`key_sha256` of key `{}` must be 64 hex digits", key.name),
                ));
            }
            _ => {}
        }
        for group in &key.tool_groups {
            if !config.mcp.tool_groups.contains_key(group) {
                return Err((
                    line_of(text, group).or(at),
                    format!(
                        "key `{}` names tool group `{group}`, which `mcp.tool_groups` does not define",
                        key.name
                    ),
                ));
            }
        }
        if let Some(expiry) = &key.expires_at
            && humantime::parse_rfc3339_weak(expiry).is_err()
        {
            return Err((
                line_of(text, expiry).or(at),
                format!(
                    "`expires_at` of key `{}` must be an RFC 3339 time such as 2027-01-31T00:00:00Z",
                    key.name
                ),
            ));
        }
        if let Some(limit) = &key.rate_limit
            && limit.requests_per_minute == Some(0)
        {
            return Err((
                at,
                format!(
                    "`requests_per_minute` of key `{}` must be at least 1 (remove it for no limit)",
                    key.name
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("sluice.yaml"), text, &|n| {
            (n == "TOKEN").then(|| "t0k".to_string())
        })
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse_str("listen:\n  - address: 127.0.0.1:8080\n").unwrap();
        assert_eq!(c.mcp.page_size, 100);
        assert!(c.mcp.servers.is_empty());
    }

    #[test]
    fn substitutes_environment() {
        let c = parse_str(
            "listen: [{address: 127.0.0.1:1}]\nmcp:\n  servers:\n    - name: docs\n      http: { url: http://h/mcp, headers: { Authorization: \"Bearer ${TOKEN}\" } }\n      sync_interval: 10m\n",
        )
        .unwrap();
        let http = c.mcp.servers[0].http.as_ref().unwrap();
        assert_eq!(http.headers["Authorization"].expose(), "Bearer t0k");
        assert!(!format!("{c:?}").contains("t0k"), "Debug shows no secret");
        assert_eq!(c.mcp.servers[0].sync_interval.as_secs(), 600);
    }

    #[test]
    fn missing_variable_names_line_and_variable() {
        let err = parse_str("listen: [{address: 127.0.0.1:1}]\nmcp:\n  servers:\n    - name: a\n      http: { url: \"${NOPE}\" }\n").unwrap_err();
        assert_eq!(err.line, Some(5));
        assert!(err.to_string().contains("NOPE"), "{err}");
        assert!(err.to_string().starts_with("sluice.yaml:5:"), "{err}");
    }

    #[test]
    fn unknown_field_is_placed() {
        let err = parse_str("listen: [{address: 127.0.0.1:1}]\nmcpp: {}\n").unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
        assert!(err.message.contains("mcpp"), "{err}");
    }

    #[test]
    fn server_without_transport_is_refused() {
        let err =
            parse_str("listen: [{address: 127.0.0.1:1}]\nmcp:\n  servers:\n    - name: lonely\n")
                .unwrap_err();
        assert_eq!(err.line, Some(4));
        assert!(err.message.contains("needs a transport"), "{err}");
    }

    #[test]
    fn keys_are_checked() {
        let err = parse_str("listen: [{address: 127.0.0.1:1}]\nkeys:\n  - name: alice\n    key: ${TOKEN}xxxxxxxx\n    tool_groups: [missing]\n").unwrap_err();
        assert!(err.message.contains("missing"), "{err}");
        let err =
            parse_str("listen: [{address: 127.0.0.1:1}]\nkeys:\n  - name: bob\n").unwrap_err();
        assert!(err.message.contains("key_sha256"), "{err}");
        let ok = parse_str("listen: [{address: 127.0.0.1:1}]\nmcp:\n  tool_groups:\n    ro: [a__*]\nkeys:\n  - name: alice\n    key: ${TOKEN}xxxxxxxx\n    tool_groups: [ro]\n    expires_at: 2030-01-01T00:00:00Z\n").unwrap();
        assert_eq!(
            ok.keys[0].key.as_ref().map(Secret::expose),
            Some("t0kxxxxxxxx")
        );
        assert!(ok.enforce_auth);
    }

    #[test]
    fn provider_headers_must_be_sendable() {
        let with = |extra: &str| {
            parse_str(&format!(
                "listen: [{{address: 127.0.0.1:1}}]\nproviders:\n  - name: p\n    kind: openai\n    base_url: http://h\n{extra}"
            ))
        };
        let err = with("    api_key: \"sk-secret\\r\\nx-evil: 1\"\n").unwrap_err();
        assert!(
            err.message.contains("`api_key` holds a line break"),
            "{err}"
        );
        assert!(!err.message.contains("sk-secret"), "{err}");
        let err = with("    headers: {\"x team\": blue}\n").unwrap_err();
        assert!(err.message.contains("header `x team`"), "{err}");
        let err = with("    headers: {x-team: \"blue\\nx\"}\n").unwrap_err();
        assert!(err.message.contains("header `x-team`"), "{err}");
        with("    api_key: ${TOKEN}\n    headers: {X-Team: blue}\n").unwrap();
    }

    #[test]
    fn duplicate_server_is_refused() {
        let err = parse_str("listen: [{address: 127.0.0.1:1}]\nmcp:\n  servers:\n    - name: a\n      stdio: {command: x}\n    - name: a\n      stdio: {command: y}\n").unwrap_err();
        assert!(err.message.contains("used twice"), "{err}");
    }

    #[test]
    fn transports_eras_and_session_modes_are_checked() {
        let server = |body: &str| {
            parse_str(&format!(
                "listen: [{{address: 127.0.0.1:1}}]\nmcp:\n  servers:\n    - name: a\n{body}"
            ))
        };
        let ok = server("      sse: {url: http://h/sse}\n      session: per_client\n").unwrap();
        assert!(matches!(ok.mcp.servers[0].transport(), Transport::Sse(_)));
        assert_eq!(ok.mcp.servers[0].session, SessionMode::PerClient);
        let ok = server("      http: {url: http://h/mcp}\n      era: stateless\n").unwrap();
        assert_eq!(ok.mcp.servers[0].era, UpstreamEra::Stateless);
        for (body, says) in [
            (
                "      http: {url: http://h/mcp}\n      sse: {url: http://h/sse}\n",
                "more than one",
            ),
            (
                "      stdio: {command: x}\n      session: per_client\n",
                "per_client",
            ),
            (
                "      sse: {url: http://h/sse}\n      era: stateless\n",
                "era: stateless",
            ),
            (
                "      http: {url: http://h/mcp}\n      era: stateless\n      session: per_client\n",
                "needs sessions",
            ),
            ("      sse: {url: ftp://h/sse}\n", "http://"),
        ] {
            let err = server(body).unwrap_err();
            assert!(err.message.contains(says), "{body}: {err}");
        }
    }
}
