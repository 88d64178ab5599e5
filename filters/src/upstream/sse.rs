//! A legacy HTTP+SSE upstream (protocol 2024-11-05, the `sse` transport): Sluice opens the
//! server's event stream with `GET <url>`, reads the `endpoint` event that says where to POST,
//! then POSTs every message there and reads every answer from the stream ([`super::mux`]
//! matches them to calls). When the stream ends the connection is gone: calls in flight fail
//! naming the server, and the supervisor reconnects with back-off.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use sluice_conf::HttpTransport;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::http::{build_client, error_chain};
use super::mux::{self, Inbound, Mux};
use super::{Announcements, MAX_MESSAGE_BYTES, UpstreamError};
use crate::sse::SseReader;

/// How long the server may take to name its message endpoint.
const ENDPOINT_TIMEOUT: Duration = Duration::from_secs(10);

/// One legacy HTTP+SSE upstream.
pub struct SseConnection {
    mux: Mux,
    /// Stops the stream reader and the writer when the connection goes.
    _tasks: DropGuard,
}

impl SseConnection {
    /// Open the event stream and learn the endpoint; nothing is initialized yet.
    pub async fn connect(
        server: Arc<str>,
        config: &HttpTransport,
        timeout: Duration,
        announcements: Arc<Announcements>,
    ) -> Result<Self, UpstreamError> {
        let (client, url, _) = build_client(&server, config)?;
        let connect_error = |detail: String| UpstreamError::Connect {
            server: server.clone(),
            detail,
        };
        let response = client
            .get(url.clone())
            .header(ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|e| connect_error(error_chain(e)))?;
        if !response.status().is_success() {
            return Err(UpstreamError::Http {
                server: server.clone(),
                status: response.status().as_u16(),
                detail: "the event stream was refused".into(),
            });
        }
        let mut events = SseReader::new(response.bytes_stream(), MAX_MESSAGE_BYTES);
        let endpoint = tokio::time::timeout(ENDPOINT_TIMEOUT, async {
            while let Some(event) = events.next_event().await {
                let event = event.map_err(|e| e.to_string())?;
                if event.event == "endpoint" {
                    return url
                        .join(event.data.trim())
                        .map_err(|e| format!("the endpoint it named is not a URL: {e}"));
                }
            }
            Err("the event stream ended before naming its endpoint".to_string())
        })
        .await
        .map_err(|_| {
            connect_error(format!(
                "the server did not name its endpoint within {ENDPOINT_TIMEOUT:?}"
            ))
        })?
        .map_err(connect_error)?;

        let (mux, inbound, mut outgoing) = mux::new(server.clone(), timeout, announcements);
        let stop = CancellationToken::new();

        // Reader: every message from the server comes on the stream.
        {
            let inbound = inbound.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let reason = tokio::select! {
                    reason = read_stream(&mut events, &inbound) => reason,
                    () = stop.cancelled() => "Sluice closed the connection".to_string(),
                };
                inbound.close(reason);
            });
        }

        // Writer: one POST per message, in order.
        {
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    let message = tokio::select! {
                        message = outgoing.recv() => message,
                        () = stop.cancelled() => None,
                    };
                    let Some(message) = message else { return };
                    let sent = client
                        .post(endpoint.clone())
                        .header(CONTENT_TYPE, "application/json")
                        .body(message)
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => {}
                        Ok(r) => {
                            tracing::warn!(server = %server, status = r.status().as_u16(), "the upstream refused a message")
                        }
                        Err(e) => {
                            inbound.close(format!(
                                "posting to its endpoint failed: {}",
                                error_chain(e)
                            ));
                            return;
                        }
                    }
                }
            });
        }

        Ok(SseConnection {
            mux,
            _tasks: stop.drop_guard(),
        })
    }
}

/// Hand every `message` event to the connection; returns why the stream ended.
async fn read_stream<S, E>(events: &mut SseReader<S>, inbound: &Inbound) -> String
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    while let Some(event) = events.next_event().await {
        match event {
            Ok(event) if event.event.is_empty() || event.event == "message" => {
                inbound.handle(&event.data)
            }
            Ok(_) => {}
            Err(e) => return format!("its event stream failed: {e}"),
        }
    }
    "its event stream ended".to_string()
}

/// Calls go through the multiplexed connection.
impl std::ops::Deref for SseConnection {
    type Target = Mux;

    fn deref(&self) -> &Mux {
        &self.mux
    }
}
