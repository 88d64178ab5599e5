//! What one instance keeps about the requests it is serving right now: calls in flight (so
//! `notifications/cancelled` can stop them), requests relayed to clients that wait for their
//! answers, and resource subscriptions. Everything else about a session is in its sealed id.
//!
//! These tables are per instance by nature (they hold live connections); each is bounded, and
//! each entry is removed by a guard when the request that made it ends, so nothing outlives
//! its request. A client's answer or cancellation that reaches another instance finds nothing
//! there and is refused with a message that says so.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::value::RawValue;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::upstream::Outcome;

/// Names a session in these tables: the random part of its sealed id.
pub type SessionTag = [u8; 16];

/// Relayed requests that may wait for their clients at once, on this instance.
pub const MAX_WAITING: usize = 10_000;
/// Resource subscriptions one session may hold.
pub const MAX_SUBSCRIPTIONS_PER_SESSION: usize = 1_000;
/// Sessions with subscriptions on this instance.
pub const MAX_SUBSCRIBED_SESSIONS: usize = 10_000;

type Key = (SessionTag, Box<str>);

#[derive(Default)]
pub struct Live {
    calls: Mutex<HashMap<Key, CancellationToken>>,
    waiting: Mutex<HashMap<Key, oneshot::Sender<Outcome>>>,
    subscriptions: Mutex<HashMap<SessionTag, HashSet<String>>>,
    next_id: AtomicU64,
}

/// Why a table refused an entry.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("too many requests are waiting for clients on this gateway ({MAX_WAITING})")]
    TooManyWaiting,
    #[error("this session already holds {MAX_SUBSCRIPTIONS_PER_SESSION} subscriptions")]
    TooManySubscriptions,
    #[error("too many sessions hold subscriptions on this gateway ({MAX_SUBSCRIBED_SESSIONS})")]
    TooManySessions,
}

impl Live {
    /// Track a call of `session` with request id `id` until the guard is dropped.
    pub fn track_call(self: &Arc<Self>, session: SessionTag, id: &RawValue) -> TrackedCall {
        let key: Key = (session, id.get().into());
        let token = CancellationToken::new();
        lock(&self.calls).insert(key.clone(), token.clone());
        TrackedCall {
            live: self.clone(),
            key,
            token,
        }
    }

    /// Cancel the call `id` (raw JSON) of `session`; false if it is not in flight here.
    pub fn cancel_call(&self, session: SessionTag, id: &str) -> bool {
        match lock(&self.calls).get(&(session, id.into())) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Register a request relayed to `session`'s client; returns the id the client sees (JSON)
    /// and a guard that forgets the request when dropped (its upstream then gets an error).
    pub fn wait_for_client(
        self: &Arc<Self>,
        session: SessionTag,
        reply: oneshot::Sender<Outcome>,
    ) -> Result<(String, WaitingRequest), LiveError> {
        let mut waiting = lock(&self.waiting);
        if waiting.len() >= MAX_WAITING {
            waiting.retain(|_, tx| !tx.is_closed());
            if waiting.len() >= MAX_WAITING {
                return Err(LiveError::TooManyWaiting);
            }
        }
        let id = format!(
            "\"sluice-{}\"",
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let key: Key = (session, id.as_str().into());
        waiting.insert(key.clone(), reply);
        Ok((
            id,
            WaitingRequest {
                live: self.clone(),
                key,
            },
        ))
    }

    /// A client answered request `id` (raw JSON); false if nothing here waits for it.
    pub fn client_answered(&self, session: SessionTag, id: &str, outcome: Outcome) -> bool {
        match lock(&self.waiting).remove(&(session, id.into())) {
            Some(reply) => reply.send(outcome).is_ok(),
            None => false,
        }
    }

    /// Subscribe `session` to the resource clients call `uri`.
    pub fn subscribe(&self, session: SessionTag, uri: &str) -> Result<(), LiveError> {
        let mut subscriptions = lock(&self.subscriptions);
        if !subscriptions.contains_key(&session) && subscriptions.len() >= MAX_SUBSCRIBED_SESSIONS {
            return Err(LiveError::TooManySessions);
        }
        let uris = subscriptions.entry(session).or_default();
        if uris.len() >= MAX_SUBSCRIPTIONS_PER_SESSION && !uris.contains(uri) {
            return Err(LiveError::TooManySubscriptions);
        }
        uris.insert(uri.to_string());
        Ok(())
    }

    /// Unsubscribe; returns whether any session of this instance is still subscribed to `uri`.
    pub fn unsubscribe(&self, session: SessionTag, uri: &str) -> bool {
        let mut subscriptions = lock(&self.subscriptions);
        if let Some(uris) = subscriptions.get_mut(&session) {
            uris.remove(uri);
            if uris.is_empty() {
                subscriptions.remove(&session);
            }
        }
        subscriptions.values().any(|uris| uris.contains(uri))
    }

    pub fn is_subscribed(&self, session: SessionTag, uri: &str) -> bool {
        lock(&self.subscriptions)
            .get(&session)
            .is_some_and(|uris| uris.contains(uri))
    }

    /// Forget what a session held (it was deleted, or its stream closed for good).
    pub fn end_session(&self, session: SessionTag) {
        lock(&self.subscriptions).remove(&session);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A call in flight; dropping it forgets the call.
pub struct TrackedCall {
    live: Arc<Live>,
    key: Key,
    token: CancellationToken,
}

impl TrackedCall {
    /// Resolves when the client cancels the call.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }
}

impl Drop for TrackedCall {
    fn drop(&mut self) {
        lock(&self.live.calls).remove(&self.key);
    }
}

/// A request relayed to a client; dropping it gives up waiting.
pub struct WaitingRequest {
    live: Arc<Live>,
    key: Key,
}

impl Drop for WaitingRequest {
    fn drop(&mut self) {
        lock(&self.live.waiting).remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_are_cancelled_by_session_and_id_and_forgotten_on_drop() {
        let live = Arc::new(Live::default());
        let id = RawValue::from_string("7".into()).unwrap();
        let call = live.track_call([1; 16], &id);
        assert!(!live.cancel_call([2; 16], "7"), "another session's call");
        assert!(live.cancel_call([1; 16], "7"));
        call.cancelled().await;
        drop(call);
        assert!(!live.cancel_call([1; 16], "7"));
    }

    #[tokio::test]
    async fn answers_reach_the_waiting_request_once() {
        let live = Arc::new(Live::default());
        let (tx, rx) = oneshot::channel();
        let (id, _guard) = live.wait_for_client([1; 16], tx).unwrap();
        let answer = || Outcome::Result(RawValue::from_string("{}".into()).unwrap());
        assert!(!live.client_answered([2; 16], &id, answer()));
        assert!(live.client_answered([1; 16], &id, answer()));
        assert!(rx.await.is_ok());
        assert!(!live.client_answered([1; 16], &id, answer()));
    }

    #[test]
    fn subscriptions_are_per_session() {
        let live = Live::default();
        live.subscribe([1; 16], "a").unwrap();
        live.subscribe([2; 16], "a").unwrap();
        assert!(live.is_subscribed([1; 16], "a"));
        assert!(live.unsubscribe([1; 16], "a"), "session 2 still holds it");
        assert!(!live.unsubscribe([2; 16], "a"));
    }
}
