//! Writing a [`filters`](sluice_filters) response through a Pingora session.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use sluice_filters::mcp::Response;

/// Write `response` as the whole answer to the request.
pub async fn write(session: &mut Session, response: Response) -> Result<()> {
    let mut header = ResponseHeader::build(response.status, Some(response.headers.len() + 2))?;
    for (name, value) in response.headers {
        header.append_header(name, value)?;
    }
    header.insert_header(http::header::CONTENT_LENGTH, response.body.len())?;
    let empty = response.body.is_empty();
    session
        .write_response_header(Box::new(header), empty)
        .await?;
    if !empty {
        session
            .write_response_body(Some(response.body), true)
            .await?;
    }
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
