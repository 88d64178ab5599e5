//! Streamable HTTP rules for requests to `/mcp` that do not depend on the JSON-RPC body:
//! Origin, Accept, Content-Type, body size and protocol version. Each refusal carries the
//! status the MCP specification asks for and a message that says how to fix the request.

use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, ORIGIN};
use http::{HeaderMap, StatusCode};

use super::http::Response;
use crate::jsonrpc::code;
use crate::protocol;

pub use crate::protocol::{PROTOCOL_HEADER, SESSION_HEADER};

/// Refuse browser origins that are not allowed (DNS rebinding protection). Requests without
/// an `Origin` header come from non-browser clients and pass.
pub fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), Response> {
    let Some(origin) = headers.get(ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    if is_local_origin(origin) || allowed.iter().any(|a| a == origin) {
        return Ok(());
    }
    Err(Response::refuse(
        StatusCode::FORBIDDEN,
        None,
        code::INVALID_REQUEST,
        &format!(
            "Origin `{origin}` is not allowed; add it to `mcp.allowed_origins` to let that site call Sluice"
        ),
    ))
}

fn is_local_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host = if let Some(v6) = rest.strip_prefix('[') {
        v6.split(']')
            .next()
            .map(|h| if h == "::1" { "::1" } else { "" })
            .unwrap_or("")
    } else {
        rest.split(':').next().unwrap_or("")
    };
    matches!(host, "localhost" | "127.0.0.1" | "::1")
}

/// A body announced larger than the limit is refused before it is read.
pub fn check_declared_length(headers: &HeaderMap, limit: usize) -> Result<(), Response> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > limit as u64 => Err(too_large(limit)),
        _ => Ok(()),
    }
}

pub fn too_large(limit: usize) -> Response {
    Response::refuse(
        StatusCode::PAYLOAD_TOO_LARGE,
        None,
        code::INVALID_REQUEST,
        &format!("the request body is larger than {limit} bytes (`mcp.max_body_bytes`)"),
    )
}

/// A POST must accept a JSON answer and send JSON.
pub fn check_post_headers(headers: &HeaderMap) -> Result<(), Response> {
    let accepts_json = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.split(';').next().unwrap_or("").trim())
        .any(|t| {
            t.eq_ignore_ascii_case("application/json")
                || t == "*/*"
                || t.eq_ignore_ascii_case("application/*")
        });
    if !accepts_json {
        return Err(Response::refuse(
            StatusCode::NOT_ACCEPTABLE,
            None,
            code::INVALID_REQUEST,
            "the Accept header must allow application/json (MCP clients send `Accept: application/json, text/event-stream`)",
        ));
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("application/json") {
        return Err(Response::refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            code::INVALID_REQUEST,
            "the Content-Type must be application/json",
        ));
    }
    Ok(())
}

/// A GET opens an event stream: the client must accept one.
pub fn check_get_headers(headers: &HeaderMap) -> Result<(), Response> {
    let accepts_events = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.split(';').next().unwrap_or("").trim())
        .any(|t| t.eq_ignore_ascii_case("text/event-stream") || t == "*/*");
    if accepts_events {
        return Ok(());
    }
    Err(Response::refuse(
        StatusCode::NOT_ACCEPTABLE,
        None,
        code::INVALID_REQUEST,
        "GET /mcp opens an event stream: the Accept header must allow text/event-stream",
    ))
}

/// The request's `Mcp-Param-*` headers, to pass on to a stateless upstream.
pub fn param_headers(headers: &HeaderMap) -> Vec<(http::HeaderName, http::HeaderValue)> {
    headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("mcp-param-"))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// Whether the `MCP-Protocol-Version` header names a version of the stateless era.
pub fn speaks_stateless_era(headers: &HeaderMap) -> bool {
    headers
        .get(PROTOCOL_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| super::modern::VERSIONS.contains(&v.trim()))
}

/// The `MCP-Protocol-Version` header, when present, must name a version Sluice speaks.
pub fn check_protocol_version(headers: &HeaderMap) -> Result<(), Response> {
    let Some(value) = headers.get(PROTOCOL_HEADER) else {
        return Ok(());
    };
    let version = value.to_str().unwrap_or("");
    if protocol::SUPPORTED.contains(&version) {
        return Ok(());
    }
    Err(Response::refuse(
        StatusCode::BAD_REQUEST,
        None,
        code::INVALID_REQUEST,
        &format!(
            "unsupported MCP-Protocol-Version `{version}`; Sluice speaks {}",
            protocol::SUPPORTED.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn origins() {
        assert!(check_origin(&headers(&[]), &[]).is_ok());
        assert!(check_origin(&headers(&[("origin", "http://localhost:6274")]), &[]).is_ok());
        assert!(check_origin(&headers(&[("origin", "http://[::1]:3000")]), &[]).is_ok());
        assert!(check_origin(&headers(&[("origin", "http://localhost.evil.com")]), &[]).is_err());
        let err = check_origin(&headers(&[("origin", "https://evil.example")]), &[]).unwrap_err();
        assert_eq!(err.status, StatusCode::FORBIDDEN);
        assert!(
            check_origin(
                &headers(&[("origin", "https://app.example")]),
                &["https://app.example".into()]
            )
            .is_ok()
        );
    }

    #[test]
    fn post_headers() {
        let ok = headers(&[
            ("accept", "application/json, text/event-stream"),
            ("content-type", "application/json; charset=utf-8"),
        ]);
        assert!(check_post_headers(&ok).is_ok());
        let no_accept = headers(&[("content-type", "application/json")]);
        assert_eq!(
            check_post_headers(&no_accept).unwrap_err().status,
            StatusCode::NOT_ACCEPTABLE
        );
        let bad_type = headers(&[
            ("accept", "application/json"),
            ("content-type", "text/plain"),
        ]);
        assert_eq!(
            check_post_headers(&bad_type).unwrap_err().status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }

    #[test]
    fn declared_length() {
        assert!(check_declared_length(&headers(&[("content-length", "10")]), 10).is_ok());
        assert_eq!(
            check_declared_length(&headers(&[("content-length", "11")]), 10)
                .unwrap_err()
                .status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
