//! Amazon Bedrock (Anthropic models): SigV4 request signing, the invoke endpoint paths, the request
//! body Bedrock wants, and decoding of the `invoke-with-response-stream` event-stream framing into
//! Anthropic SSE events.
//!
//! Signing and frame parsing are done by the maintained AWS crates (`aws-sigv4`,
//! `aws-smithy-eventstream`); this module only adapts them to the gateway.

use std::fmt;
use std::time::SystemTime;

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_eventstream::frame::read_message_from;
use aws_smithy_types::event_stream::Message;
use base64::Engine as _;
use serde_json::{Value, json};

/// The SigV4 service name of the Bedrock runtime.
const SERVICE: &str = "bedrock";

/// The `anthropic_version` Bedrock requires in Anthropic request bodies.
pub const ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";

/// Largest event-stream frame accepted. The frame format allows 4 GiB; a streamed event is a
/// few KiB, so anything near this is corrupt or hostile and must not make us buffer it.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Prelude (total length, headers length, prelude CRC) plus the trailing message CRC.
const MIN_FRAME_LEN: usize = 16;

/// AWS credentials of a Bedrock provider.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

/// By hand so that the secret key and session token never reach logs.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "** redacted **"),
            )
            .finish()
    }
}

/// What can go wrong signing a request or decoding a Bedrock event stream. Messages never carry
/// credentials.
#[derive(Debug, thiserror::Error)]
pub enum BedrockError {
    #[error("cannot sign Bedrock request: invalid URL ({reason})")]
    InvalidUrl { reason: String },
    /// `detail` is the error chain of aws-sigv4 (which names what is wrong, never a value).
    #[error("cannot sign Bedrock request: {detail}")]
    Signing { detail: String },
    #[error("corrupt Bedrock event stream frame: {0}")]
    Frame(aws_smithy_eventstream::error::Error),
    #[error(
        "Bedrock event stream frame declares {declared} bytes (accepted: {MIN_FRAME_LEN}..={MAX_FRAME_LEN})"
    )]
    FrameLength { declared: u32 },
    #[error("bad Bedrock stream chunk: {reason}")]
    BadChunk { reason: String },
    #[error("Bedrock event stream ended inside a frame ({buffered} bytes pending)")]
    Truncated { buffered: usize },
    #[error("Bedrock event stream already failed")]
    Failed,
}

/// The headers to add to a request so Bedrock accepts it: `authorization`, `x-amz-date`,
/// `x-amz-security-token` (when a session token is set) and whatever else the signer produces.
///
/// `url` must be exactly the URL sent (already percent-encoded, see [`invoke_path`]); `headers`
/// are the other headers that will be sent, all of which get signed, so pass at least `host` (or
/// let it be derived from `url`) and `content-type`, and nothing a proxy may rewrite.
pub fn sign(
    credentials: &Credentials,
    region: &str,
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
    time: SystemTime,
) -> Result<Vec<(String, String)>, BedrockError> {
    // aws-sigv4 panics on a URL without authority when no host header is given; check first.
    let uri: http::Uri =
        url.parse()
            .map_err(|e: http::uri::InvalidUri| BedrockError::InvalidUrl {
                reason: e.to_string(),
            })?;
    if uri.scheme().is_none() || uri.authority().is_none() {
        return Err(BedrockError::InvalidUrl {
            reason: "not absolute".into(),
        });
    }

    let identity = aws_credential_types::Credentials::new(
        credentials.access_key_id.clone(),
        credentials.secret_access_key.clone(),
        credentials.session_token.clone(),
        None,
        "sluice",
    )
    .into();
    // Default settings: double-encoded canonical URI (right for every service but S3), no
    // x-amz-content-sha256 header, session token signed.
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(signing_error)?
        .into();
    let request = SignableRequest::new(
        method,
        url,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .map_err(signing_error)?;
    let (instructions, _signature) = aws_sigv4::http_request::sign(request, &params)
        .map_err(signing_error)?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect())
}

/// A signing error with its causes, which aws-sigv4 keeps out of its top-level message.
fn signing_error(error: impl std::error::Error) -> BedrockError {
    let mut detail = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    BedrockError::Signing { detail }
}

/// The path of a model's invoke endpoint, the model id percent-encoded as one path segment (so
/// `:` in `anthropic.claude-3-5-sonnet-20241022-v2:0` and `/` in inference-profile ARNs are
/// escaped, as the AWS SDKs do).
pub fn invoke_path(model: &str, stream: bool) -> String {
    let action = if stream {
        "invoke-with-response-stream"
    } else {
        "invoke"
    };
    format!("/model/{}/{action}", encode_segment(model))
}

/// Percent-encodes everything but RFC 3986 unreserved characters. `.` and `..` are encoded whole
/// so that no client or signer treats them as dot segments.
fn encode_segment(segment: &str) -> String {
    if segment == "." || segment == ".." {
        return "%2E".repeat(segment.len());
    }
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// An Anthropic Messages request body as Bedrock wants it: the model and streaming are chosen by
/// the URL, so `model` and `stream` go; `anthropic_version` is required. Other fields are kept.
pub fn request_body(anthropic_body: &Value) -> Value {
    let mut body = anthropic_body.clone();
    if let Some(object) = body.as_object_mut() {
        object.remove("model");
        object.remove("stream");
        object
            .entry("anthropic_version")
            .or_insert_with(|| Value::from(ANTHROPIC_VERSION));
    }
    body
}

/// The message of a Bedrock error body (`{"message": "..."}`, some services say `Message`).
pub fn error_message(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let message = value.get("message").or_else(|| value.get("Message"))?;
    message.as_str().map(str::to_owned)
}

/// Decodes the body of `invoke-with-response-stream` (`application/vnd.amazon.eventstream`) into
/// Anthropic SSE bytes, chunk by chunk: frames may be split anywhere across chunks. Buffers at
/// most one frame ([`MAX_FRAME_LEN`]) plus the last chunk.
#[derive(Debug, Default)]
pub struct EventStreamDecoder {
    buffer: Vec<u8>,
    failed: bool,
}

impl EventStreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the SSE events of every frame completed by `chunk` to `out`.
    ///
    /// A `chunk` event carries `{"bytes": "<base64 of one Anthropic streaming event>"}` and
    /// becomes `event: <type>\ndata: <json>\n\n`; an exception becomes an Anthropic `error`
    /// event. Corrupt framing is an `Err`, after which the decoder refuses further input (the
    /// stream cannot be resynchronised); events of frames before the corrupt one are in `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), BedrockError> {
        if self.failed {
            return Err(BedrockError::Failed);
        }
        self.buffer.extend_from_slice(chunk);
        let mut consumed = 0;
        let result = decode_frames(&self.buffer, &mut consumed, out);
        if result.is_err() {
            self.failed = true;
            self.buffer = Vec::new();
        } else {
            self.buffer.drain(..consumed);
        }
        result
    }

    /// The stream ended; `Err` if it ended inside a frame.
    pub fn finish(&mut self) -> Result<(), BedrockError> {
        if self.buffer.is_empty() {
            Ok(())
        } else {
            Err(BedrockError::Truncated {
                buffered: self.buffer.len(),
            })
        }
    }
}

/// Decodes the complete frames at the start of `buffer`, counting their bytes in `consumed`.
fn decode_frames(
    buffer: &[u8],
    consumed: &mut usize,
    out: &mut Vec<u8>,
) -> Result<(), BedrockError> {
    loop {
        let rest = &buffer[*consumed..];
        // Only the declared length is read here, to know how much to wait for and to cap it;
        // the frame itself (lengths, CRCs, headers) is parsed by aws-smithy-eventstream.
        let Some(prefix) = rest.first_chunk::<4>() else {
            return Ok(());
        };
        let declared = u32::from_be_bytes(*prefix);
        let total = usize::try_from(declared).unwrap_or(usize::MAX);
        if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&total) {
            return Err(BedrockError::FrameLength { declared });
        }
        let Some(frame) = rest.get(..total) else {
            return Ok(());
        };
        let message = read_message_from(frame).map_err(BedrockError::Frame)?;
        write_message(&message, out)?;
        *consumed += total;
    }
}

/// Writes the SSE event of one decoded frame, if it has one.
fn write_message(message: &Message, out: &mut Vec<u8>) -> Result<(), BedrockError> {
    match header(message, ":message-type") {
        Some("event") if header(message, ":event-type") == Some("chunk") => {
            write_chunk(message.payload(), out)
        }
        Some("exception") => {
            let kind = header(message, ":exception-type").unwrap_or("exception");
            let text = error_message(message.payload()).unwrap_or_else(|| kind.to_owned());
            write_error(error_type(kind), &text, out);
            Ok(())
        }
        // Smithy's unmodelled errors: code and message in headers.
        Some("error") => {
            let text = header(message, ":error-message")
                .or_else(|| header(message, ":error-code"))
                .unwrap_or("Bedrock stream error");
            write_error("api_error", text, out);
            Ok(())
        }
        // Other events (none are documented for this operation) carry nothing for the client.
        _ => Ok(()),
    }
}

/// A `chunk` payload: `{"bytes": "<base64>"}`.
#[derive(serde::Deserialize)]
struct ChunkPayload {
    bytes: String,
}

fn write_chunk(payload: &[u8], out: &mut Vec<u8>) -> Result<(), BedrockError> {
    let bad = |reason: String| BedrockError::BadChunk { reason };
    let chunk: ChunkPayload =
        serde_json::from_slice(payload).map_err(|e| bad(format!("payload: {e}")))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(chunk.bytes)
        .map_err(|e| bad(format!("base64: {e}")))?;
    let event: Value =
        serde_json::from_slice(&decoded).map_err(|e| bad(format!("event JSON: {e}")))?;
    let kind = event
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("event without a type".into()))?;
    // The type goes on the `event:` line verbatim, so it must not be able to break the framing.
    if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(bad("event type is not a word".into()));
    }
    // Passed through as Bedrock sent it, unless it spans lines (raw line breaks can only be
    // whitespace between JSON tokens): then re-serialised compact, as SSE data is one line.
    let data = if decoded.iter().any(|b| matches!(b, b'\n' | b'\r')) {
        serde_json::to_string(&event).map_err(|e| bad(format!("event JSON: {e}")))?
    } else {
        String::from_utf8(decoded).map_err(|e| bad(format!("event JSON: {e}")))?
    };
    write_event(kind, &data, out);
    Ok(())
}

/// The Anthropic error type closest to a Bedrock stream exception.
fn error_type(exception: &str) -> &'static str {
    match exception {
        "throttlingException" => "rate_limit_error",
        "serviceUnavailableException" => "overloaded_error",
        "validationException" => "invalid_request_error",
        _ => "api_error",
    }
}

fn write_error(kind: &str, message: &str, out: &mut Vec<u8>) {
    let data = json!({"type": "error", "error": {"type": kind, "message": message}});
    write_event("error", &data.to_string(), out);
}

fn write_event(kind: &str, data: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// The value of a string header of `message`.
fn header<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message
        .headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| h.value().as_string().ok())
        .map(|s| s.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::{Header, HeaderValue};
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    use std::time::{Duration, UNIX_EPOCH};

    // ---- an independent SigV4 implementation, from the documented algorithm ----

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn hmac(key: &[u8], data: &str) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(data.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// The `Authorization` value for a request with no query string; `headers` are the signed
    /// headers, lowercase, values trimmed.
    #[allow(clippy::too_many_arguments)]
    fn reference_authorization(
        access_key: &str,
        secret: &str,
        date_time: &str,
        region: &str,
        service: &str,
        method: &str,
        canonical_uri: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> String {
        let mut headers = headers.to_vec();
        headers.sort();
        let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let signed_headers = headers
            .iter()
            .map(|(k, _)| *k)
            .collect::<Vec<_>>()
            .join(";");
        let canonical_request = format!(
            "{method}\n{canonical_uri}\n\n{canonical_headers}\n{signed_headers}\n{}",
            hex(&Sha256::digest(body))
        );
        let date = &date_time[..8];
        let scope = format!("{date}/{region}/{service}/aws4_request");
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{date_time}\n{scope}\n{}",
            hex(&Sha256::digest(canonical_request.as_bytes()))
        );
        let key = hmac(format!("AWS4{secret}").as_bytes(), date);
        let key = hmac(&key, region);
        let key = hmac(&key, service);
        let key = hmac(&key, "aws4_request");
        let signature = hex(&hmac(&key, &string_to_sign));
        format!(
            "AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
        )
    }

    /// The helper reproduces `get-vanilla` of the AWS SigV4 test suite.
    #[test]
    fn reference_matches_aws_test_suite() {
        let authorization = reference_authorization(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20150830T123600Z",
            "us-east-1",
            "service",
            "GET",
            "/",
            &[
                ("host", "example.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
            ],
            b"",
        );
        assert_eq!(
            authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    fn credentials(token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: token.map(str::to_owned),
        }
    }

    fn get<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    const MODEL: &str = "anthropic.claude-3-5-sonnet-20241022-v2:0";
    const HOST: &str = "bedrock-runtime.us-east-1.amazonaws.com";

    #[test]
    fn signs_bedrock_invoke_with_session_token() {
        let path = invoke_path(MODEL, true);
        let url = format!("https://{HOST}{path}");
        let body = br#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":10,"messages":[]}"#;
        let headers = vec![
            ("host".to_string(), HOST.to_string()),
            ("content-type".to_string(), "application/json".to_string()),
        ];
        let time = UNIX_EPOCH + Duration::from_secs(1_704_067_200);
        let signed = sign(
            &credentials(Some("token/with+chars==")),
            "us-east-1",
            "POST",
            &url,
            &headers,
            body,
            time,
        )
        .unwrap();

        assert_eq!(get(&signed, "x-amz-date"), Some("20240101T000000Z"));
        assert_eq!(
            get(&signed, "x-amz-security-token"),
            Some("token/with+chars==")
        );
        // Canonical URI of non-S3 services: the sent path encoded once more.
        let expected = reference_authorization(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20240101T000000Z",
            "us-east-1",
            "bedrock",
            "POST",
            "/model/anthropic.claude-3-5-sonnet-20241022-v2%253A0/invoke-with-response-stream",
            &[
                ("content-type", "application/json"),
                ("host", HOST),
                ("x-amz-date", "20240101T000000Z"),
                ("x-amz-security-token", "token/with+chars=="),
            ],
            body,
        );
        assert_eq!(get(&signed, "authorization"), Some(expected.as_str()));
        // The same request signed by botocore 1.43 (SigV4Auth, service bedrock).
        assert!(expected.ends_with(
            "Signature=bfa61bbcd72ddc3bf16e6c679ac0c09dff9d966c90937673657111bf7471a7ce"
        ));
    }

    #[test]
    fn signs_without_session_token_and_derives_host() {
        let url = format!("https://{HOST}{}", invoke_path(MODEL, false));
        let headers = vec![("content-type".to_string(), "application/json".to_string())];
        let time = UNIX_EPOCH + Duration::from_secs(1_704_067_200);
        let signed = sign(
            &credentials(None),
            "us-east-1",
            "POST",
            &url,
            &headers,
            b"{}",
            time,
        )
        .unwrap();
        assert_eq!(get(&signed, "x-amz-security-token"), None);
        let expected = reference_authorization(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20240101T000000Z",
            "us-east-1",
            "bedrock",
            "POST",
            "/model/anthropic.claude-3-5-sonnet-20241022-v2%253A0/invoke",
            &[
                ("content-type", "application/json"),
                ("host", HOST),
                ("x-amz-date", "20240101T000000Z"),
            ],
            b"{}",
        );
        assert_eq!(get(&signed, "authorization"), Some(expected.as_str()));
        // The same request signed by botocore 1.43 (SigV4Auth, service bedrock).
        assert!(expected.ends_with(
            "Signature=e93cd8e38d2b76b18f56e8af39c3b1a0b6a3040a14ba08255cf0f13b755b7cbf"
        ));
    }

    #[test]
    fn sign_rejects_bad_urls_and_headers() {
        let time = UNIX_EPOCH;
        let creds = credentials(Some("secret-token"));
        for url in ["/model/x/invoke", "not a url", "", "https://"] {
            let result = sign(&creds, "us-east-1", "POST", url, &[], b"", time);
            assert!(result.is_err(), "{url:?} was signed");
        }
        let bad_header = vec![("content-type".to_string(), "a\nb".to_string())];
        let url = format!("https://{HOST}/model/x/invoke");
        let error = sign(&creds, "us-east-1", "POST", &url, &bad_header, b"", time).unwrap_err();
        let text = format!("{error} {error:?}");
        assert!(text.contains("header"), "{text}");
        assert!(!text.contains("secret-token") && !text.contains("EXAMPLEKEY"));
    }

    #[test]
    fn credentials_debug_hides_secrets() {
        let text = format!("{:?}", credentials(Some("secret-token")));
        assert!(text.contains("AKIDEXAMPLE"));
        assert!(!text.contains("EXAMPLEKEY") && !text.contains("secret-token"));
    }

    #[test]
    fn invoke_paths() {
        assert_eq!(
            invoke_path(MODEL, false),
            "/model/anthropic.claude-3-5-sonnet-20241022-v2%3A0/invoke"
        );
        assert_eq!(
            invoke_path(MODEL, true),
            "/model/anthropic.claude-3-5-sonnet-20241022-v2%3A0/invoke-with-response-stream"
        );
        assert_eq!(
            invoke_path(
                "arn:aws:bedrock:us-east-1:123:inference-profile/us.anthropic.x-v1:0",
                false
            ),
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123%3Ainference-profile%2Fus.anthropic.x-v1%3A0/invoke"
        );
        assert_eq!(
            invoke_path("a b?#%é", false),
            "/model/a%20b%3F%23%25%C3%A9/invoke"
        );
        assert_eq!(invoke_path("..", false), "/model/%2E%2E/invoke");
    }

    #[test]
    fn request_bodies() {
        let body = json!({
            "model": "claude", "stream": true, "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}], "system": "s"
        });
        assert_eq!(
            request_body(&body),
            json!({
                "anthropic_version": "bedrock-2023-05-31", "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}], "system": "s"
            })
        );
        let own = json!({"anthropic_version": "other", "max_tokens": 1});
        assert_eq!(request_body(&own), own);
        assert_eq!(request_body(&json!([1])), json!([1]));
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            error_message(br#"{"message":"Too many requests"}"#).as_deref(),
            Some("Too many requests")
        );
        assert_eq!(
            error_message(br#"{"Message":"denied"}"#).as_deref(),
            Some("denied")
        );
        assert_eq!(error_message(b"<html>"), None);
        assert_eq!(error_message(br#"{"message":5}"#), None);
    }

    // ---- event stream ----

    fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
        let headers = headers
            .iter()
            .map(|(k, v)| Header::new(k.to_string(), HeaderValue::String(v.to_string().into())))
            .collect();
        let message = Message::new_from_parts(headers, payload.to_vec());
        let mut out = Vec::new();
        write_message_to(&message, &mut out).unwrap();
        out
    }

    fn chunk_frame(event: &Value) -> Vec<u8> {
        let bytes = base64::engine::general_purpose::STANDARD.encode(event.to_string());
        frame(
            &[
                (":message-type", "event"),
                (":event-type", "chunk"),
                (":content-type", "application/json"),
            ],
            json!({"bytes": bytes}).to_string().as_bytes(),
        )
    }

    fn exception_frame(kind: &str, message: &str) -> Vec<u8> {
        frame(
            &[
                (":message-type", "exception"),
                (":exception-type", kind),
                (":content-type", "application/json"),
            ],
            json!({"message": message}).to_string().as_bytes(),
        )
    }

    fn sample_events() -> Vec<Value> {
        vec![
            json!({"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 3}}}),
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": "line\nbreak"}}),
            json!({"type": "message_stop",
                   "amazon-bedrock-invocationMetrics": {"inputTokenCount": 3}}),
        ]
    }

    fn sample_stream() -> (Vec<u8>, String) {
        let mut stream = Vec::new();
        let mut sse = String::new();
        for event in sample_events() {
            stream.extend(chunk_frame(&event));
            sse.push_str(&format!(
                "event: {}\ndata: {event}\n\n",
                event["type"].as_str().unwrap()
            ));
        }
        stream.extend(frame(
            &[(":message-type", "event"), (":event-type", "other")],
            b"{}",
        ));
        stream.extend(exception_frame("throttlingException", "slow \"down\""));
        let error = json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow \"down\""}});
        sse.push_str(&format!("event: error\ndata: {error}\n\n"));
        (stream, sse)
    }

    fn decode_all(parts: &[&[u8]]) -> Result<String, BedrockError> {
        let mut decoder = EventStreamDecoder::new();
        let mut out = Vec::new();
        for part in parts {
            decoder.push(part, &mut out)?;
        }
        decoder.finish()?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn decodes_chunks_and_exceptions() {
        let (stream, sse) = sample_stream();
        assert_eq!(decode_all(&[&stream]).unwrap(), sse);
    }

    #[test]
    fn decodes_split_at_every_offset() {
        let (stream, sse) = sample_stream();
        for at in 0..=stream.len() {
            let (a, b) = stream.split_at(at);
            assert_eq!(decode_all(&[a, b]).unwrap(), sse, "split at {at}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(decode_all(&bytes).unwrap(), sse);
    }

    #[test]
    fn events_pass_verbatim_unless_multiline() {
        let raw = |json: &str| {
            let bytes = base64::engine::general_purpose::STANDARD.encode(json);
            let payload = json!({"bytes": bytes}).to_string();
            frame(
                &[(":message-type", "event"), (":event-type", "chunk")],
                payload.as_bytes(),
            )
        };
        assert_eq!(
            decode_all(&[&raw(r#"{"z":1, "type":"ping"}"#)]).unwrap(),
            "event: ping\ndata: {\"z\":1, \"type\":\"ping\"}\n\n"
        );
        assert_eq!(
            decode_all(&[&raw("{\r\n  \"type\": \"ping\"\n}")]).unwrap(),
            "event: ping\ndata: {\"type\":\"ping\"}\n\n"
        );
    }

    #[test]
    fn maps_exception_types() {
        for (exception, kind) in [
            ("throttlingException", "rate_limit_error"),
            ("serviceUnavailableException", "overloaded_error"),
            ("validationException", "invalid_request_error"),
            ("modelStreamErrorException", "api_error"),
            ("internalServerException", "api_error"),
            ("somethingNew", "api_error"),
        ] {
            let sse = decode_all(&[&exception_frame(exception, "m")]).unwrap();
            let data: Value = serde_json::from_str(
                sse.strip_prefix("event: error\ndata: ")
                    .and_then(|s| s.strip_suffix("\n\n"))
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(
                data,
                json!({"type": "error", "error": {"type": kind, "message": "m"}})
            );
        }
    }

    #[test]
    fn bad_crc_is_an_error() {
        let (stream, sse) = sample_stream();
        let first = chunk_frame(&sample_events()[0]);
        // Flip a payload byte (message CRC) and a prelude byte (prelude CRC).
        for index in [first.len() - 6, 5] {
            let mut corrupt = stream.clone();
            corrupt[index] ^= 0x01;
            assert!(matches!(
                decode_all(&[&corrupt]),
                Err(BedrockError::Frame(_))
            ));
        }
        // Events before the corrupt frame are delivered; the decoder then refuses input.
        let mut corrupt = first.clone();
        let mut second = chunk_frame(&sample_events()[1]);
        let last = second.len() - 1;
        second[last] ^= 0xff;
        corrupt.extend(second);
        let mut decoder = EventStreamDecoder::new();
        let mut out = Vec::new();
        assert!(decoder.push(&corrupt, &mut out).is_err());
        assert!(sse.starts_with(std::str::from_utf8(&out).unwrap()) && !out.is_empty());
        assert!(matches!(
            decoder.push(&first, &mut out),
            Err(BedrockError::Failed)
        ));
    }

    #[test]
    fn truncated_stream_is_an_error_at_finish() {
        let (stream, _) = sample_stream();
        for cut in [1, 4, 12, stream.len() - 1] {
            let mut decoder = EventStreamDecoder::new();
            decoder.push(&stream[..cut], &mut Vec::new()).unwrap();
            assert!(matches!(
                decoder.finish(),
                Err(BedrockError::Truncated { .. })
            ));
        }
        assert!(decode_all(&[]).is_ok());
    }

    #[test]
    fn huge_or_tiny_declared_lengths_are_errors() {
        for declared in [u32::MAX, (MAX_FRAME_LEN + 1) as u32, 0, 15] {
            let mut bytes = declared.to_be_bytes().to_vec();
            bytes.extend([0; 8]);
            assert!(matches!(
                decode_all(&[&bytes]),
                Err(BedrockError::FrameLength { .. })
            ));
        }
    }

    #[test]
    fn bad_chunks_are_errors() {
        let event_headers = [(":message-type", "event"), (":event-type", "chunk")];
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        for payload in [
            "not json".to_string(),
            json!({"bytes": "***"}).to_string(),
            json!({"bytes": b64("not json")}).to_string(),
            json!({"bytes": b64(r#"{"no":"type"}"#)}).to_string(),
            json!({"bytes": b64(r#"{"type":"x\ndata: injected"}"#)}).to_string(),
        ] {
            let bytes = frame(&event_headers, payload.as_bytes());
            assert!(
                matches!(decode_all(&[&bytes]), Err(BedrockError::BadChunk { .. })),
                "{payload}"
            );
        }
    }

    /// Garbage never panics: random bytes, and valid frames with random bytes flipped.
    #[test]
    fn garbage_never_panics() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (stream, _) = sample_stream();
        for _ in 0..2000 {
            let len = (next() % 300) as usize;
            let garbage: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = decode_all(&[&garbage]);
            let mut flipped = stream.clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % flipped.len();
                flipped[at] = next() as u8;
            }
            let _ = decode_all(&[&flipped]);
        }
    }
}
