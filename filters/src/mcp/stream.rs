//! Notification streams: a session's `GET /mcp` (session era) and `subscriptions/listen`
//! (stateless era). Both carry `notifications/*/list_changed` when what the caller may see
//! changes (an upstream re-synced, a server added or removed, the key's grants reloaded), and
//! `notifications/resources/updated` for the resources it subscribed to; a `listen` stream
//! carries only what it asked for, each message tagged with its subscription id.
//!
//! The stream is bounded: a client that stops reading while notifications pile up is dropped
//! (it reconnects and lists again), never buffered without end.

use std::collections::HashSet;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};

use super::http::Response;
use super::live::{Live, SessionTag};
use super::modern::META_SUBSCRIPTION;
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

const LISTS: [&str; 3] = ["tools", "resources", "prompts"];

/// Who listens, and to what.
pub(super) struct Subscriber {
    /// Which `list_changed` to send: tools, resources, prompts.
    pub lists: [bool; 3],
    pub uris: Uris,
    /// The `subscriptions/listen` request id (raw JSON) that tags every message.
    pub tag: Option<String>,
    /// Runs when the stream ends (a listen stream's upstream subscriptions are released).
    pub on_close: Option<Box<dyn FnOnce() + Send>>,
}

/// Where the subscribed resource URIs are kept.
pub(super) enum Uris {
    /// A session's `resources/subscribe` calls.
    Session(SessionTag),
    /// Listed in the `subscriptions/listen` request.
    Listed(HashSet<String>),
}

impl Subscriber {
    /// A session's GET stream: every list, its session's subscriptions.
    pub fn session(session: SessionTag) -> Self {
        Subscriber {
            lists: [true; 3],
            uris: Uris::Session(session),
            tag: None,
            on_close: None,
        }
    }

    fn meta(&self) -> String {
        match &self.tag {
            Some(tag) => format!("\"_meta\":{{\"{META_SUBSCRIPTION}\":{tag}}}"),
            None => String::new(),
        }
    }

    fn list_changed(&self, list: usize) -> Bytes {
        let params = match &self.tag {
            Some(_) => format!(",\"params\":{{{}}}", self.meta()),
            None => String::new(),
        };
        sse::message_event(
            format!(
                "{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/{}/list_changed\"{params}}}",
                LISTS[list]
            )
            .as_bytes(),
        )
    }

    fn updated(&self, uri: &str) -> Bytes {
        let meta = self.meta();
        let sep = if meta.is_empty() { "" } else { "," };
        let uri = serde_json::Value::from(uri);
        sse::message_event(
            format!("{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/resources/updated\",\"params\":{{{meta}{sep}\"uri\":{uri}}}}}")
                .as_bytes(),
        )
    }

    fn wants(&self, live: &Live, uri: &str) -> bool {
        match &self.uris {
            Uris::Session(session) => live.is_subscribed(*session, uri),
            Uris::Listed(uris) => uris.contains(uri),
        }
    }
}

/// Open a notification stream for `caller`; `first` is written before anything else (the
/// acknowledgement of a `subscriptions/listen`).
pub(super) fn open(
    endpoint: &McpEndpoint,
    caller: Arc<KeyEntry>,
    subscriber: Subscriber,
    first: Option<Bytes>,
) -> Response {
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
    let _ = out.try_send(first.unwrap_or_else(sse::keep_alive));
    let open = endpoint.services.metrics.notification_streams.clone();
    let mut subscriber = subscriber;
    let on_close = subscriber.on_close.take();
    tokio::spawn(async move {
        open.inc();
        let _open = scopeguard(move || {
            open.dec();
            if let Some(release) = on_close {
                release();
            }
        });
        let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
        keep_alive.tick().await;
        loop {
            let sent = tokio::select! {
                () = out.closed() => return,
                changed = catalog_changes.changed() => {
                    if changed.is_err() { return; }
                    notify_changes(&out, &subscriber, &caller, &catalogs.load(), &mut seen)
                }
                changed = policy_changes.changed() => {
                    if changed.is_err() { return; }
                    let policy: Arc<Policy> = policy.load_full();
                    // A key removed or disabled by the reload ends its streams.
                    let Some(now) = policy.keys.by_name(&caller.name) else { return };
                    caller = now;
                    notify_changes(&out, &subscriber, &caller, &catalogs.load(), &mut seen)
                }
                update = updates.recv() => match update {
                    Ok(update) => {
                        let uri = catalogs.load().exposed_uri(&update.server, &update.uri);
                        if subscriber.wants(&live, &uri) {
                            out.try_send(subscriber.updated(&uri)).is_ok()
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
    subscriber: &Subscriber,
    caller: &KeyEntry,
    catalog: &Catalog,
    seen: &mut Visible,
) -> bool {
    let now = Visible::of(caller, catalog);
    for list in 0..LISTS.len() {
        if subscriber.lists[list]
            && now.0[list] != seen.0[list]
            && out.try_send(subscriber.list_changed(list)).is_err()
        {
            return false;
        }
    }
    *seen = now;
    true
}
