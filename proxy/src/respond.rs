//! Writing a [`filters`](sluice_filters) response through a Pingora session: a whole body at
//! once, or server-sent events as they come.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use sluice_filters::mcp::{Body, Response};
use tokio::sync::mpsc;

/// Write `response` as the whole answer to the request. An event stream is written event by
/// event, each flushed as it comes; it ends when its producer is done, or when the client goes
/// away (then the receiver is dropped, which stops the producer and cancels its upstream work).
pub async fn write(session: &mut Session, response: Response) -> Result<()> {
    let mut header = ResponseHeader::build(response.status, Some(response.headers.len() + 2))?;
    for (name, value) in response.headers {
        header.append_header(name, value)?;
    }
    match response.body {
        Body::Full(body) => {
            header.insert_header(http::header::CONTENT_LENGTH, body.len())?;
            let empty = body.is_empty();
            session
                .write_response_header(Box::new(header), empty)
                .await?;
            if !empty {
                session.write_response_body(Some(body), true).await?;
            }
            Ok(())
        }
        Body::Events(events) => {
            session
                .write_response_header(Box::new(header), false)
                .await?;
            write_events(session, events).await
        }
    }
}

async fn write_events(session: &mut Session, mut events: mpsc::Receiver<Bytes>) -> Result<()> {
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => session.write_response_body(Some(event), false).await?,
                None => break,
            },
            // The client closed the connection: the normal end of a notification stream.
            // Stop writing (dropping `events` stops the producer).
            _ = session.downstream_session.read_body_or_idle(true) => {
                session.set_keepalive(None);
                return Ok(());
            }
        }
    }
    session.write_response_body(None, true).await?;
    Ok(())
}

/// A small JSON error for paths Sluice does not serve.
pub fn not_found(path: &str) -> Response {
    Response::json(
        http::StatusCode::NOT_FOUND,
        Bytes::from(
            serde_json::json!({ "error": format!("no route for `{path}`; MCP clients use /mcp") })
                .to_string(),
        ),
    )
}
