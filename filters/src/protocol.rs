//! MCP protocol versions Sluice speaks downstream.

use http::HeaderName;
use rmcp::model::ProtocolVersion;

/// The session header of the Streamable HTTP transport, both ways (a name made once: a lookup
/// by a `&str` name parses it every time).
pub const SESSION_HEADER: HeaderName = HeaderName::from_static("mcp-session-id");
/// The protocol version header of the Streamable HTTP transport, both ways.
pub const PROTOCOL_HEADER: HeaderName = HeaderName::from_static("mcp-protocol-version");

/// Newest first; `initialize` answers with the client's version when it is listed here, or
/// with the newest otherwise (the client then decides whether it can go on).
pub const SUPPORTED: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// The version Sluice prefers.
pub const LATEST: &str = SUPPORTED[0];

/// What a request without an `MCP-Protocol-Version` header is assumed to speak (per the spec).
pub const ASSUMED_WITHOUT_HEADER: &str = "2025-03-26";

/// The version to answer a client that asked for `requested`.
pub fn negotiate(requested: Option<&str>) -> &'static str {
    requested
        .and_then(|r| SUPPORTED.iter().find(|v| **v == r))
        .copied()
        .unwrap_or(LATEST)
}

/// Index of `version` in [`SUPPORTED`], for compact storage in session tokens.
pub fn index_of(version: &str) -> Option<u8> {
    SUPPORTED
        .iter()
        .position(|v| *v == version)
        .map(|i| i as u8)
}

/// The `rmcp` value of one of the [`SUPPORTED`] versions.
pub fn to_rmcp(version: &str) -> ProtocolVersion {
    match version {
        "2025-06-18" => ProtocolVersion::V_2025_06_18,
        "2025-03-26" => ProtocolVersion::V_2025_03_26,
        "2024-11-05" => ProtocolVersion::V_2024_11_05,
        _ => ProtocolVersion::V_2025_11_25,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_known_versions_and_falls_back_to_latest() {
        assert_eq!(negotiate(Some("2025-06-18")), "2025-06-18");
        assert_eq!(negotiate(Some("1999-01-01")), LATEST);
        assert_eq!(negotiate(None), LATEST);
    }

    #[test]
    fn every_supported_version_maps_to_rmcp() {
        for v in SUPPORTED {
            assert_eq!(to_rmcp(v).to_string(), v);
        }
    }
}
