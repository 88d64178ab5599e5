//! Writing a [`filters`](sluice_filters) response through a Pingora session: a whole body at
//! once, or server-sent events as they come.

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use sluice_filters::mcp::{Body, BodyStream, Response};
use tokio::sync::mpsc;

/// Write `response` as the whole answer to the request. An event stream is written event by
/// event, each flushed as it comes; it ends when its producer is done, or when the client goes
/// away (then the receiver is dropped, which stops the producer and cancels its upstream work).
pub async fn write(session: &mut Session, response: Response) -> Result<()> {
    // The head is built as `http` parts: Pingora's setters would parse each name again and
    // keep a case map. Standard names go out title-cased, the others as they are.
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = response.status;
    parts.headers.reserve(response.headers.len() + 1);
    for (name, value) in response.headers {
        parts.headers.append(name, value);
    }
    let (name, value) = match &response.body {
        Body::Full(body) => (http::header::CONTENT_LENGTH, HeaderValue::from(body.len())),
        // Chunked on HTTP/1.1, so the connection stays reusable (Pingora drops the header on
        // HTTP/2).
        Body::Events(_) | Body::Stream(_) => (
            http::header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        ),
    };
    parts.headers.insert(name, value);
    let header = Box::new(ResponseHeader::from(parts));
    match response.body {
        Body::Full(body) => {
            let empty = body.is_empty();
            session.write_response_header(header, empty).await?;
            if !empty {
                session.write_response_body(Some(body), true).await?;
            }
            Ok(())
        }
        Body::Events(events) => {
            session.write_response_header(header, false).await?;
            write_events(session, events).await
        }
        Body::Stream(body) => {
            session.write_response_header(header, false).await?;
            write_stream(session, body).await
        }
    }
}

/// Write a body piece by piece as it comes; pieces already waiting go out together, as one
/// chunk (Pingora writes and flushes each chunk: one system call each). A body that breaks off
/// closes the connection, so the client sees an error rather than a truncated answer that looks
/// complete.
async fn write_stream(session: &mut Session, mut body: BodyStream) -> Result<()> {
    // What the last gathering took from the body that was not a piece (its end or an error).
    let mut taken: Option<Option<std::result::Result<Bytes, String>>> = None;
    loop {
        let item = match taken.take() {
            Some(item) => item,
            None => tokio::select! {
                item = body.next() => item,
                _ = session.downstream_session.read_body_or_idle(true) => return client_gone(session),
            },
        };
        match item {
            Some(Ok(piece)) => {
                let (piece, after) = gather(piece, &mut body);
                taken = after;
                if session
                    .write_response_body(Some(piece), false)
                    .await
                    .is_err()
                {
                    return client_gone(session);
                }
            }
            Some(Err(reason)) => {
                return Error::e_explain(ErrorType::ReadError, reason);
            }
            None => break,
        }
    }
    if session.write_response_body(None, true).await.is_err() {
        return client_gone(session);
    }
    Ok(())
}

/// Most bytes one write gathers.
const GATHER_UP_TO: usize = 256 * 1024;

/// `first` and the pieces that are ready right after it, joined (never waiting for one); and
/// what ended the gathering if it was not a piece.
fn gather(
    first: Bytes,
    body: &mut BodyStream,
) -> (Bytes, Option<Option<std::result::Result<Bytes, String>>>) {
    let mut joined: Option<BytesMut> = None;
    let mut taken = None;
    while joined.as_ref().map_or(first.len(), BytesMut::len) < GATHER_UP_TO {
        match body.next().now_or_never() {
            Some(Some(Ok(next))) => joined
                .get_or_insert_with(|| BytesMut::from(&first[..]))
                .extend_from_slice(&next),
            Some(other) => {
                taken = Some(other);
                break;
            }
            None => break,
        }
    }
    (joined.map_or(first, BytesMut::freeze), taken)
}

async fn write_events(session: &mut Session, mut events: mpsc::Receiver<Bytes>) -> Result<()> {
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => {
                    if session.write_response_body(Some(event), false).await.is_err() {
                        return client_gone(session);
                    }
                }
                None => break,
            },
            // The client closed the connection: the normal end of a notification stream.
            // Stop writing (dropping `events` stops the producer).
            _ = session.downstream_session.read_body_or_idle(true) => return client_gone(session),
        }
    }
    if session.write_response_body(None, true).await.is_err() {
        return client_gone(session);
    }
    Ok(())
}

/// 408: the body did not arrive within `limits.body_timeout`.
pub fn too_slow(timeout: std::time::Duration) -> Response {
    Response::refuse(
        http::StatusCode::REQUEST_TIMEOUT,
        None,
        sluice_filters::jsonrpc::code::INVALID_REQUEST,
        &format!(
            "the request body did not arrive within {} s (`limits.body_timeout`)",
            timeout.as_secs_f64()
        ),
    )
}

/// 431: the request line and headers are over `limits.max_header_bytes`.
pub fn header_too_large(limit: usize) -> Response {
    Response::refuse(
        http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        None,
        sluice_filters::jsonrpc::code::INVALID_REQUEST,
        &format!(
            "the request line and headers are larger than {limit} bytes (`limits.max_header_bytes`)"
        ),
    )
}

/// A small JSON error for paths Sluice does not serve (the path is echoed, shortened).
pub fn not_found(path: &str) -> Response {
    let path: String = path.chars().take(200).collect();
    Response::json(
        http::StatusCode::NOT_FOUND,
        Bytes::from(
            serde_json::json!({ "error": format!("no route for `{path}`; MCP clients use /mcp") })
                .to_string(),
        ),
    )
}

/// A client that leaves in the middle of a stream is its normal end, not a gateway error:
/// the connection is not reused, and nothing is logged as a failure.
fn client_gone(session: &mut Session) -> Result<()> {
    session.set_keepalive(None);
    Ok(())
}
