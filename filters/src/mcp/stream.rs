//! A session's notification stream (`GET /mcp`): `notifications/*/list_changed` when what the
//! caller may see changes (an upstream re-synced, a server added or removed, the key's grants
//! reloaded), and `notifications/resources/updated` for the resources it subscribed to.
//!
//! The stream is bounded: a client that stops reading while notifications pile up is dropped
//! (it reconnects and lists again), never buffered without end.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};

use super::http::Response;
use super::live::SessionTag;
use super::{McpEndpoint, Policy};
use crate::auth::KeyEntry;
use crate::catalog::{Catalog, Kind};
use crate::sse;

/// Notifications waiting for a slow reader before it is dropped.
const QUEUE: usize = 32;
/// A comment every so often keeps proxies from closing an idle stream and finds dead clients.
const KEEP_ALIVE: Duration = Duration::from_secs(20);

/// What a caller can see of each list, as one hash per list (tools, resources with templates,
/// prompts): a change of the hash is a change the caller must hear of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Visible([u64; 3]);

impl Visible {
    fn of(caller: &KeyEntry, catalog: &Catalog) -> Self {
        let allowed = caller.grants.allowed(catalog);
        let hash = |kinds: &[Kind]| {
            let mut hasher = DefaultHasher::new();
            for &kind in kinds {
                for (index, item) in catalog.list(kind).items().iter().enumerate() {
                    if allowed.contains_in(kind, index) {
                        item.definition.get().hash(&mut hasher);
                    }
                }
            }
            hasher.finish()
        };
        Visible([
            hash(&[Kind::Tools]),
            hash(&[Kind::Resources, Kind::Templates]),
            hash(&[Kind::Prompts]),
        ])
    }
}

const LIST_CHANGED: [&[u8]; 3] = [
    br#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#,
    br#"{"jsonrpc":"2.0","method":"notifications/resources/list_changed"}"#,
    br#"{"jsonrpc":"2.0","method":"notifications/prompts/list_changed"}"#,
];

/// Open the stream of `session`, opened by `caller`.
pub(super) fn open(endpoint: &McpEndpoint, caller: Arc<KeyEntry>, session: SessionTag) -> Response {
    let (out, stream) = mpsc::channel::<Bytes>(QUEUE);
    let catalogs = endpoint.upstreams().catalog().clone();
    let mut catalog_changes = catalogs.subscribe();
    let mut policy_changes = endpoint.policy_changes.subscribe();
    let mut updates = endpoint.upstreams().resource_updates();
    let policy = endpoint.policy.clone();
    let live = endpoint.live.clone();
    let mut caller = caller;
    let mut seen = Visible::of(&caller, &catalogs.load());
    // An empty first event tells the client the stream is open.
    let _ = out.try_send(sse::keep_alive());
    let open = endpoint.services.metrics.notification_streams.clone();
    tokio::spawn(async move {
        open.inc();
        let _open = scopeguard(move || open.dec());
        let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
        keep_alive.tick().await;
        loop {
            let sent = tokio::select! {
                () = out.closed() => return,
                changed = catalog_changes.changed() => {
                    if changed.is_err() { return; }
                    notify_changes(&out, &caller, &catalogs.load(), &mut seen)
                }
                changed = policy_changes.changed() => {
                    if changed.is_err() { return; }
                    let policy: Arc<Policy> = policy.load_full();
                    // A key removed or disabled by the reload ends its streams.
                    let Some(now) = policy.keys.by_name(&caller.name) else { return };
                    caller = now;
                    notify_changes(&out, &caller, &catalogs.load(), &mut seen)
                }
                update = updates.recv() => match update {
                    Ok(update) => {
                        let uri = catalogs.load().exposed_uri(&update.server, &update.uri);
                        if live.is_subscribed(session, &uri) {
                            let message = serde_json::json!({
                                "jsonrpc": "2.0",
                                "method": "notifications/resources/updated",
                                "params": { "uri": uri },
                            });
                            out.try_send(sse::message_event(message.to_string().as_bytes())).is_ok()
                        } else {
                            true
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = keep_alive.tick() => out.try_send(sse::keep_alive()).is_ok(),
            };
            if !sent {
                tracing::debug!("dropping a notification stream whose client does not read");
                return;
            }
        }
    });
    Response::events(stream)
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// Send a `list_changed` for each list whose visible part changed; false if the client is not
/// keeping up.
fn notify_changes(
    out: &mpsc::Sender<Bytes>,
    caller: &KeyEntry,
    catalog: &Catalog,
    seen: &mut Visible,
) -> bool {
    let now = Visible::of(caller, catalog);
    for (i, message) in LIST_CHANGED.iter().enumerate() {
        if now.0[i] != seen.0[i] && out.try_send(sse::message_event(message)).is_err() {
            return false;
        }
    }
    *seen = now;
    true
}
