//! The connection to the Redis the instances share, and whether it works.
//!
//! Commands go through one multiplexed connection (`ConnectionManager`); a background task
//! pings Redis and owns the health: while Redis is unreachable, nobody else tries it, and the
//! task reconnects with a back-off. The components ([`super::RedisSpend`] and the others) only
//! talk to Redis while [`RedisShared::is_up`], and report how their exchanges went.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::runtime::Handle;
use tokio::sync::watch;

use super::sync::{self, Exchange};

/// How long connecting, and then any reply, may take before Redis counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a working Redis is pinged (to notice an outage when nothing else is sent).
const PING_EVERY: Duration = Duration::from_secs(1);
/// The back-off between attempts to reach an unreachable Redis.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Why the shared Redis cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error(
        "the Redis URL {url} is not usable: {reason}; write it as \
         redis://[user:password@]host:port[/db]"
    )]
    Url { url: String, reason: String },
    #[error("the Redis connection must be started from inside a Tokio runtime")]
    NoRuntime,
}

/// The connection to the shared Redis and its health. Starting it never waits for Redis:
/// until it answers, everything counts on this instance only.
pub struct RedisShared {
    client: ::redis::Client,
    connection: Mutex<ConnectionManager>,
    prefix: String,
    sync_interval: Duration,
    /// The URL without its password, for messages.
    url: String,
    runtime: Handle,
    /// Whether Redis answers; components wait on it to resume.
    up: watch::Sender<bool>,
    health: Mutex<Health>,
    /// The counters shared through Redis, exchanged together.
    exchange: Exchange,
}

struct Health {
    link: Link,
    /// The last error Redis answered a component with (it is reachable but refuses).
    refused: Option<String>,
}

enum Link {
    Connecting,
    Up,
    Down(String),
}

impl RedisShared {
    /// Checks the URL and starts connecting in the background. Fails only on a malformed URL
    /// or outside a Tokio runtime; an unreachable Redis is reported by [`RedisShared::trouble`].
    pub fn start(config: &sluice_conf::Redis) -> Result<Arc<Self>, RedisError> {
        let runtime = Handle::try_current().map_err(|_| RedisError::NoRuntime)?;
        let url = sluice_conf::redact_url(config.url.expose());
        let client = ::redis::Client::open(config.url.expose()).map_err(|e| RedisError::Url {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let connection = {
            let _entered = runtime.enter();
            new_connection(&client).map_err(|e| RedisError::Url {
                url: url.clone(),
                reason: e.to_string(),
            })?
        };
        let shared = Arc::new(RedisShared {
            client,
            connection: Mutex::new(connection),
            prefix: config.key_prefix.clone(),
            sync_interval: config.sync_interval.max(Duration::from_millis(1)),
            url,
            runtime,
            up: watch::Sender::new(false),
            health: Mutex::new(Health {
                link: Link::Connecting,
                refused: None,
            }),
            exchange: Exchange::default(),
        });
        shared.runtime.spawn(watch_health(Arc::downgrade(&shared)));
        sync::spawn(&shared);
        Ok(shared)
    }

    /// `None` when Redis works; otherwise why not, for `/readyz` detail.
    pub fn trouble(&self) -> Option<String> {
        let health = lock(&self.health);
        match &health.link {
            Link::Connecting => Some(format!(
                "connecting to Redis at {}; counting on this instance only until it answers",
                self.url
            )),
            Link::Down(why) => Some(why.clone()),
            Link::Up => health.refused.clone(),
        }
    }

    /// Whether Redis answers (for the `sluice_redis_up` gauge).
    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// The connection for commands (cheap to clone; reconnects by itself).
    pub(super) fn connection(&self) -> ConnectionManager {
        lock(&self.connection).clone()
    }

    pub(super) fn client(&self) -> &::redis::Client {
        &self.client
    }

    pub(super) fn runtime(&self) -> &Handle {
        &self.runtime
    }

    /// Where counters register to be shared, and tell that they counted.
    pub(super) fn exchange(&self) -> &Exchange {
        &self.exchange
    }

    pub(super) fn sync_interval(&self) -> Duration {
        self.sync_interval
    }

    /// What every Redis key Sluice writes starts with.
    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Tells when Redis comes and goes.
    pub(super) fn watch_up(&self) -> watch::Receiver<bool> {
        self.up.subscribe()
    }

    /// An exchange worked: Redis is reachable and does what it is asked.
    pub(super) fn succeeded(&self) {
        self.link_up();
        let mut health = lock(&self.health);
        if health.refused.take().is_some() {
            tracing::info!(url = %self.url, "Redis accepts Sluice's commands again");
        }
    }

    /// An exchange failed. Errors Redis answered with leave the link up; any other means Redis
    /// is unreachable until the health task reaches it again.
    pub(super) fn failed(&self, what: &str, error: &::redis::RedisError) {
        if answered(error) {
            let message = format!(
                "Redis at {} refuses to {what}: {error}; that state is counted on this instance \
                 only until it accepts",
                self.url
            );
            let mut health = lock(&self.health);
            if health.refused.is_none() {
                tracing::error!("{message}");
            }
            health.refused = Some(message);
        } else {
            self.link_down(error);
        }
    }

    fn link_up(&self) {
        let mut health = lock(&self.health);
        match health.link {
            Link::Up => return,
            Link::Connecting => tracing::info!(url = %self.url, "connected to the shared Redis"),
            Link::Down(_) => {
                tracing::info!(url = %self.url, "the shared Redis is reachable again; sharing resumes")
            }
        }
        health.link = Link::Up;
        drop(health);
        self.up.send_replace(true);
    }

    /// Logs only the first failure of an outage.
    fn link_down(&self, error: &::redis::RedisError) {
        let message = format!(
            "Redis at {} is unreachable: {error}; rate limits, spend and ended sessions are \
             counted on this instance only until it is back, then shared again",
            self.url
        );
        let mut health = lock(&self.health);
        if !matches!(health.link, Link::Down(_)) {
            tracing::error!("{message}");
        }
        health.link = Link::Down(message);
        drop(health);
        self.up.send_replace(false);
    }

    /// Replaces the connection: a fresh one is tried at the next command.
    fn reconnect(&self) {
        let _entered = self.runtime.enter();
        match new_connection(&self.client) {
            Ok(connection) => *lock(&self.connection) = connection,
            // Only a configuration error, which `start` already ruled out.
            Err(e) => tracing::warn!(url = %self.url, "cannot renew the Redis connection: {e}"),
        }
    }
}

/// A connection that connects at its first command, once (the health task does the retrying,
/// with its own back-off), and gives up on a silent Redis after the timeouts.
fn new_connection(client: &::redis::Client) -> ::redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(0)
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
}

/// Pings Redis every [`PING_EVERY`] while it answers, and with a back-off from [`RETRY_FIRST`]
/// to [`RETRY_MAX`] while it does not; stops when the connection is dropped.
async fn watch_health(shared: Weak<RedisShared>) {
    let mut retry = RETRY_FIRST;
    let mut up = match shared.upgrade() {
        Some(shared) => shared.watch_up(),
        None => return,
    };
    loop {
        let wait = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let mut connection = shared.connection();
            let pong: ::redis::RedisResult<String> =
                ::redis::cmd("PING").query_async(&mut connection).await;
            match pong {
                Ok(_) => {
                    shared.link_up();
                    retry = RETRY_FIRST;
                    PING_EVERY
                }
                Err(e) => {
                    shared.link_down(&e);
                    shared.reconnect();
                    let wait = retry;
                    retry = (retry * 2).min(RETRY_MAX);
                    wait
                }
            }
        };
        if wait == PING_EVERY {
            // A component finding Redis gone starts the back-off now, not at the next ping.
            let went_down = async { up.wait_for(|up| !*up).await.is_ok() };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                went_down = went_down => {
                    if !went_down {
                        return;
                    }
                    tokio::time::sleep(RETRY_FIRST).await;
                }
            }
        } else {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Whether Redis itself answered with this error (so it is reachable).
fn answered(error: &::redis::RedisError) -> bool {
    error.code().is_some() || garbled(error)
}

/// A reply that could not be read: Redis did run the commands.
fn garbled(error: &::redis::RedisError) -> bool {
    matches!(
        error.kind(),
        ::redis::ErrorKind::Parse | ::redis::ErrorKind::UnexpectedReturnType
    )
}

/// Whether a failed exchange can be sent again without counting twice: it never reached
/// Redis, or Redis refused it before running anything. A connection lost after Redis ran a
/// transaction but before its reply came is the one case where sending again counts twice.
pub(super) fn resend_safe(error: &::redis::RedisError) -> bool {
    if garbled(error) {
        return false;
    }
    match error.code() {
        None => true,
        Some(code) => matches!(
            code,
            "EXECABORT"
                | "LOADING"
                | "BUSY"
                | "MASTERDOWN"
                | "READONLY"
                | "OOM"
                | "NOAUTH"
                | "NOPERM"
                | "TRYAGAIN"
                | "CLUSTERDOWN"
        ),
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
