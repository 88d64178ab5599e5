//! A store in memory, persisted to an embedded SQLite database so spend survives a restart.
//!
//! Reads and adds touch only memory. Adds are also queued as deltas, coalesced per key and
//! period, and a background thread writes them every [`FLUSH_EVERY`] in one transaction
//! (upserts that add, so a rolling restart's two overlapping processes do not overwrite each
//! other). If the database cannot be written, counting goes on in memory, the failure is
//! logged once and reported by [`SpendStore::trouble`], and the deltas of the current periods
//! are kept to be written when it works again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use rusqlite::Connection;

use super::counts::{Counts, Indexes};
use super::{Clock, Period, Spend, SpendStore, StateError, system_clock};

/// How long adds are coalesced before they are written.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// How often writing is tried again while the database fails.
const RETRY_EVERY: Duration = Duration::from_secs(2);
/// How long a write waits for a lock held by another connection before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(1);

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS spend (
    key TEXT NOT NULL,
    period TEXT NOT NULL,
    idx INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    cost_micros INTEGER NOT NULL,
    PRIMARY KEY (key, period, idx)
) WITHOUT ROWID";

const UPSERT: &str = "INSERT INTO spend (key, period, idx, requests, tokens, cost_micros)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)
    ON CONFLICT (key, period, idx) DO UPDATE SET
        requests = requests + excluded.requests,
        tokens = tokens + excluded.tokens,
        cost_micros = cost_micros + excluded.cost_micros";

/// Counted spend in memory, persisted to SQLite in the background.
pub struct SqliteStore {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// What the store and its writer thread share.
struct Shared {
    counts: Counts,
    clock: Clock,
    queue: Mutex<Queue>,
    /// Wakes the writer early (on close).
    wake: Condvar,
    trouble: Mutex<Option<String>>,
}

/// Spend added but not yet written, per key.
#[derive(Default)]
struct Queue {
    deltas: Deltas,
    closing: bool,
}

type Deltas = HashMap<String, Vec<Delta>>;

#[derive(Clone, Copy)]
struct Delta {
    period: Period,
    index: i64,
    spend: Spend,
}

impl SqliteStore {
    /// Opens (or creates) the database at `path` and reads the current periods' spend back.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        Self::open_with_clock(path, system_clock())
    }

    /// Like [`SqliteStore::open`], reading the time from `clock` (tests move it).
    pub fn open_with_clock(path: &Path, clock: Clock) -> Result<Self, StateError> {
        let mut db = Database::open(path)?;
        let counts = Counts::default();
        let now = clock();
        db.load(&counts, now)?;
        // Old rows are not needed; failing to drop them is not worth refusing to start.
        if let Err(e) = db.prune(now) {
            tracing::warn!(path = %path.display(), "cannot drop old spend rows: {e}");
        }
        let shared = Arc::new(Shared {
            counts,
            clock,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            trouble: Mutex::new(None),
        });
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("sluice-state".into())
                .spawn(move || write_until_closed(&shared, db))
                .map_err(StateError::Spawn)?
        };
        Ok(SqliteStore {
            shared,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Writes everything pending and stops the writer (on shutdown; also done on drop). Spend
    /// added afterwards is counted in memory only.
    pub fn close(&self) {
        lock(&self.shared.queue).closing = true;
        self.shared.wake.notify_all();
        let writer = lock(&self.writer).take();
        if let Some(writer) = writer
            && writer.join().is_err()
        {
            tracing::error!("the state database writer panicked; recent spend may be lost");
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl SpendStore for SqliteStore {
    fn spent(&self, key: &str, period: Period) -> Spend {
        self.shared.counts.spent(key, period, (self.shared.clock)())
    }

    fn add(&self, key: &str, spend: Spend) {
        let counted = self.shared.counts.add(key, spend, (self.shared.clock)());
        let mut queue = lock(&self.shared.queue);
        if !queue.closing {
            queue_add(&mut queue.deltas, key, counted, spend);
        }
    }

    fn trouble(&self) -> Option<String> {
        lock(&self.shared.trouble).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn queue_add(deltas: &mut Deltas, key: &str, counted: Indexes, spend: Spend) {
    let pending = match deltas.get_mut(key) {
        Some(pending) => pending,
        None => deltas.entry(key.to_string()).or_default(),
    };
    for (period, index) in Period::ALL.into_iter().zip(counted) {
        merge(
            pending,
            Delta {
                period,
                index,
                spend,
            },
        );
    }
}

/// Adds `delta` to the pending delta of its period, if there is one.
fn merge(pending: &mut Vec<Delta>, delta: Delta) {
    match pending
        .iter_mut()
        .find(|d| d.period == delta.period && d.index == delta.index)
    {
        Some(queued) => queued.spend += delta.spend,
        None => pending.push(delta),
    }
}

/// The writer thread: every [`FLUSH_EVERY`] (or [`RETRY_EVERY`] while failing) takes the
/// queued deltas and writes them, until the store closes.
fn write_until_closed(shared: &Shared, mut db: Database) {
    loop {
        let wait = if lock(&shared.trouble).is_some() {
            RETRY_EVERY
        } else {
            FLUSH_EVERY
        };
        let (batch, closing) = {
            let mut queue = lock(&shared.queue);
            if !queue.closing {
                queue = match shared.wake.wait_timeout(queue, wait) {
                    Ok((queue, _)) => queue,
                    Err(poisoned) => poisoned.into_inner().0,
                };
            }
            (std::mem::take(&mut queue.deltas), queue.closing)
        };
        let now = (shared.clock)();
        match db.write(&batch, now) {
            Ok(()) => shared.healthy(&db.path),
            Err(e) => {
                shared.failed(&db.path, &e);
                if closing {
                    tracing::error!(
                        path = %db.path.display(),
                        keys = batch.len(),
                        "spend of the last moments before shutdown could not be saved",
                    );
                } else {
                    shared.requeue(batch, now);
                }
            }
        }
        if closing {
            return;
        }
    }
}

impl Shared {
    fn healthy(&self, path: &Path) {
        if lock(&self.trouble).take().is_some() {
            tracing::info!(path = %path.display(), "the state database is writable again");
        }
    }

    /// Logs only the first failure of a run of them.
    fn failed(&self, path: &Path, error: &rusqlite::Error) {
        let message = format!(
            "cannot write the state database {}: {error}; spend is counted in memory only \
             (and lost on restart) until it can be written",
            path.display()
        );
        let mut trouble = lock(&self.trouble);
        if trouble.is_none() {
            tracing::error!("{message}");
        }
        *trouble = Some(message);
    }

    /// Puts back deltas that could not be written, except those of periods already over
    /// (nothing reads them after a restart), so the queue stays bounded however long the
    /// database fails.
    fn requeue(&self, batch: Deltas, now: SystemTime) {
        let current = Period::ALL.map(|period| period.index(now));
        let mut queue = lock(&self.queue);
        for (key, deltas) in batch {
            for delta in deltas {
                if delta.index < current[delta.period.slot()] {
                    continue;
                }
                merge(queue.deltas.entry(key.clone()).or_default(), delta);
            }
        }
    }
}

/// The connection and what the writer remembers about it.
struct Database {
    conn: Connection,
    path: PathBuf,
    /// The minute rows of past periods were last deleted in.
    pruned_minute: i64,
}

impl Database {
    /// Opens `path` (creating it, its directory and the schema), in WAL mode so readers such as
    /// `sqlite3` do not block the writer.
    fn open(path: &Path) -> Result<Self, StateError> {
        let open_error = |source| StateError::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StateError::CreateDir {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let conn = Connection::open(path).map_err(open_error)?;
        // SQLite falls back to read-only when the file is; that would fail only later.
        if conn.is_readonly(rusqlite::MAIN_DB).map_err(open_error)? {
            return Err(StateError::ReadOnly {
                path: path.to_path_buf(),
            });
        }
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
        conn.query_row("PRAGMA journal_mode = WAL", [], |row| {
            row.get::<_, String>(0)
        })
        .map_err(open_error)?;
        // In WAL mode, NORMAL loses at most the last writes on power loss, never consistency.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_error)?;
        conn.execute(SCHEMA, []).map_err(open_error)?;
        Ok(Database {
            conn,
            path: path.to_path_buf(),
            pruned_minute: i64::MIN,
        })
    }

    /// Reads the spend of the periods containing `now` into `counts`.
    fn load(&mut self, counts: &Counts, now: SystemTime) -> Result<(), StateError> {
        let read_error = |source| StateError::Read {
            path: self.path.clone(),
            source,
        };
        let mut select = self
            .conn
            .prepare(
                "SELECT key, requests, tokens, cost_micros FROM spend
                 WHERE period = ?1 AND idx = ?2",
            )
            .map_err(read_error)?;
        for period in Period::ALL {
            let index = period.index(now);
            let rows = select
                .query_map((period.as_str(), index), |row| {
                    let spend = Spend {
                        requests: from_sql(row.get(1)?),
                        tokens: from_sql(row.get(2)?),
                        cost_micros: from_sql(row.get(3)?),
                    };
                    Ok((row.get::<_, String>(0)?, spend))
                })
                .map_err(read_error)?;
            for row in rows {
                let (key, spend) = row.map_err(read_error)?;
                counts.load(&key, period, index, spend);
            }
        }
        Ok(())
    }

    /// Adds `batch` to the stored rows in one transaction (all or nothing), and once a minute
    /// deletes rows of periods that are over. An error means nothing of `batch` was written.
    fn write(&mut self, batch: &Deltas, now: SystemTime) -> rusqlite::Result<()> {
        if !batch.is_empty() {
            let tx = self.conn.transaction()?;
            {
                let mut upsert = tx.prepare_cached(UPSERT)?;
                for (key, deltas) in batch {
                    for delta in deltas {
                        upsert.execute((
                            key,
                            delta.period.as_str(),
                            delta.index,
                            to_sql(delta.spend.requests),
                            to_sql(delta.spend.tokens),
                            to_sql(delta.spend.cost_micros),
                        ))?;
                    }
                }
            }
            tx.commit()?;
        }
        // Not part of the result: the batch is committed, and must not be written again.
        if Period::Minute.index(now) != self.pruned_minute
            && let Err(e) = self.prune(now)
        {
            tracing::warn!(path = %self.path.display(), "cannot delete old spend rows: {e}");
        }
        Ok(())
    }

    /// Deletes rows of periods before those containing `now`: nothing reads them. Tried at
    /// most once a minute, failing or not.
    fn prune(&mut self, now: SystemTime) -> rusqlite::Result<()> {
        self.pruned_minute = Period::Minute.index(now);
        let mut delete = self
            .conn
            .prepare_cached("DELETE FROM spend WHERE period = ?1 AND idx < ?2")?;
        for period in Period::ALL {
            delete.execute((period.as_str(), period.index(now)))?;
        }
        Ok(())
    }
}

/// SQLite integers are signed; counts beyond `i64::MAX` are stored as that.
fn to_sql(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// A negative count can only come from someone editing the file: read it as nothing.
fn from_sql(count: i64) -> u64 {
    u64::try_from(count).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use super::super::test_clock::ManualClock;
    use super::*;

    const NOON_JAN_31_2026: u64 = 1_769_860_800; // 2026-01-31T12:00:00Z
    const DAY: Duration = Duration::from_secs(86_400);

    /// A fresh directory for one test, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "sluice-state-{name}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            TempDir(dir)
        }

        fn db(&self) -> PathBuf {
            self.0.join("nested").join("state.db")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tokens(n: u64) -> Spend {
        Spend {
            requests: 1,
            tokens: n,
            cost_micros: n * 2,
        }
    }

    /// Polls `condition` for up to ten seconds (the writer works in the background).
    fn eventually(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn spend_survives_a_restart_the_same_day() {
        let dir = TempDir::new("restart");
        let time = ManualClock::at(NOON_JAN_31_2026);
        let store = SqliteStore::open_with_clock(&dir.db(), time.clock()).expect("open");
        store.add("a", tokens(10));
        store.add("a", tokens(5));
        store.add("b", tokens(1));
        store.close();
        drop(store);

        let store = SqliteStore::open_with_clock(&dir.db(), time.clock()).expect("reopen");
        for period in Period::ALL {
            assert_eq!(
                store.spent("a", period),
                Spend {
                    requests: 2,
                    tokens: 15,
                    cost_micros: 30
                },
                "{period:?}"
            );
            assert_eq!(store.spent("b", period).tokens, 1);
        }
        // Adds after a reopen add to what was read back, in memory and on disk.
        store.add("a", tokens(1));
        assert_eq!(store.spent("a", Period::Day).tokens, 16);
        drop(store);
        let store = SqliteStore::open_with_clock(&dir.db(), time.clock()).expect("reopen");
        assert_eq!(store.spent("a", Period::Day).tokens, 16);
        assert_eq!(store.trouble(), None);
    }

    #[test]
    fn a_restart_on_the_next_day_keeps_the_month_only() {
        let dir = TempDir::new("next-day");
        let time = ManualClock::at(NOON_JAN_31_2026 - DAY.as_secs());
        let store = SqliteStore::open_with_clock(&dir.db(), time.clock()).expect("open");
        store.add("a", tokens(10));
        drop(store);

        time.advance(DAY); // January 31st
        let store = SqliteStore::open_with_clock(&dir.db(), time.clock()).expect("reopen");
        assert_eq!(store.spent("a", Period::Minute), Spend::default());
        assert_eq!(store.spent("a", Period::Day), Spend::default());
        assert_eq!(store.spent("a", Period::Month).tokens, 10);
        store.add("a", tokens(1));
        drop(store);

        time.advance(DAY); // February 1st
        let store = SqliteStore::open_with_clock(&dir.db(), time.clock()).expect("reopen");
        for period in Period::ALL {
            assert_eq!(store.spent("a", period), Spend::default(), "{period:?}");
        }
        drop(store);

        // Rows of periods that are over were deleted.
        let conn = Connection::open(dir.db()).expect("inspect");
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM spend", [], |row| row.get(0))
            .expect("count");
        assert_eq!(rows, 0);
    }

    #[test]
    fn concurrent_adds_sum_exactly() {
        let dir = TempDir::new("concurrent");
        let time = ManualClock::at(NOON_JAN_31_2026);
        let store = Arc::new(SqliteStore::open_with_clock(&dir.db(), time.clock()).expect("open"));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        store.add(if i % 2 == 0 { "even" } else { "odd" }, tokens(t + 1));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("adder");
        }
        // 8 threads, 2500 adds per key each, thread t adding t+1 tokens: 2500 * (1+..+8).
        let expected = Spend {
            requests: 20_000,
            tokens: 90_000,
            cost_micros: 180_000,
        };
        assert_eq!(store.spent("even", Period::Minute), expected);
        assert_eq!(store.spent("odd", Period::Month), expected);
        store.close();
        drop(store);
        let store = SqliteStore::open_with_clock(&dir.db(), time.clock()).expect("reopen");
        assert_eq!(store.spent("even", Period::Day), expected);
        assert_eq!(store.spent("odd", Period::Minute), expected);
    }

    #[test]
    fn an_unusable_path_is_a_clear_error() {
        let error = SqliteStore::open(Path::new("/proc/sluice-test/state.db"))
            .err()
            .expect("no database under /proc");
        assert!(matches!(error, StateError::CreateDir { .. }), "{error}");
        assert!(
            error.to_string().contains("/proc/sluice-test/state.db"),
            "{error}"
        );
        assert!(error.to_string().contains("state.path"), "{error}");

        let dir = TempDir::new("garbage");
        std::fs::create_dir_all(&dir.0).expect("mkdir");
        let garbage = dir.0.join("state.db");
        std::fs::write(&garbage, vec![b'x'; 8192]).expect("write");
        let error = SqliteStore::open(&garbage).err().expect("not a database");
        assert!(matches!(error, StateError::Open { .. }), "{error}");
        assert!(
            error.to_string().contains(&*garbage.to_string_lossy()),
            "{error}"
        );
    }

    /// Permissions do not stop root: this checks something only when run as another user.
    #[test]
    fn a_read_only_place_is_a_clear_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("read-only");
        let path = dir.db();
        drop(SqliteStore::open(&path).expect("open"));
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let chmod = |path: &Path, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod")
        };
        chmod(&path, 0o400);
        chmod(&parent, 0o500);
        if std::fs::write(parent.join("probe"), b"").is_ok() {
            chmod(&parent, 0o700);
            return; // root
        }
        let read_only = SqliteStore::open(&path).err();
        let fresh = SqliteStore::open(&parent.join("other.db")).err();
        chmod(&parent, 0o700);
        let error = read_only.expect("a read-only database");
        assert!(matches!(error, StateError::ReadOnly { .. }), "{error}");
        assert!(error.to_string().contains("write access"), "{error}");
        let error = fresh.expect("no new database in a read-only directory");
        assert!(matches!(error, StateError::Open { .. }), "{error}");
        assert!(error.to_string().contains("other.db"), "{error}");
    }

    /// The database is locked by another connection: writes fail after the busy timeout.
    /// Counting goes on in memory, `trouble` says so, and what was added is written once the
    /// lock is gone. Adds meanwhile do not wait for the database.
    #[test]
    fn a_database_that_cannot_be_written_keeps_counting() {
        let dir = TempDir::new("locked");
        let time = ManualClock::at(NOON_JAN_31_2026);
        let store = SqliteStore::open_with_clock(&dir.db(), time.clock()).expect("open");
        let blocker = Connection::open(dir.db()).expect("second connection");
        blocker
            .execute_batch("BEGIN EXCLUSIVE; INSERT INTO spend VALUES ('x','day',0,0,0,0);")
            .expect("lock");

        store.add("a", tokens(10));
        eventually("trouble is reported", || store.trouble().is_some());
        let trouble = store.trouble().unwrap_or_default();
        assert!(trouble.contains(&*dir.db().to_string_lossy()), "{trouble}");
        assert!(trouble.contains("memory"), "{trouble}");

        // Many adds while the writer is stuck: none waits on the database.
        for _ in 0..100_000 {
            store.add("a", tokens(1));
        }
        assert_eq!(store.spent("a", Period::Day).tokens, 100_010);

        blocker.execute_batch("ROLLBACK").expect("unlock");
        eventually("the store is healthy again", || store.trouble().is_none());
        drop(store);
        let store = SqliteStore::open_with_clock(&dir.db(), time.clock()).expect("reopen");
        assert_eq!(store.spent("a", Period::Day).tokens, 100_010);
        assert_eq!(store.spent("a", Period::Minute).requests, 100_001);
    }

    #[test]
    fn deltas_of_periods_over_are_not_kept_while_failing() {
        let shared = Shared {
            counts: Counts::default(),
            clock: system_clock(),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            trouble: Mutex::new(None),
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOON_JAN_31_2026);
        let before = now - Duration::from_secs(120);
        let mut batch = Deltas::new();
        queue_add(
            &mut batch,
            "a",
            Period::ALL.map(|p| p.index(before)),
            tokens(1),
        );
        queue_add(
            &mut batch,
            "a",
            Period::ALL.map(|p| p.index(now)),
            tokens(2),
        );
        shared.requeue(batch, now);
        let queue = lock(&shared.queue);
        let kept = &queue.deltas["a"];
        // The day and month of `before` are the current ones; its minute is over.
        assert_eq!(kept.len(), 3);
        assert!(kept.iter().all(|d| d.index == d.period.index(now)));
        let day = kept
            .iter()
            .find(|d| d.period == Period::Day)
            .map(|d| d.spend);
        assert_eq!(day.map(|s| s.tokens), Some(3));
    }

    #[test]
    fn adds_after_close_count_in_memory() {
        let dir = TempDir::new("after-close");
        let store = SqliteStore::open(&dir.db()).expect("open");
        store.close();
        store.add("a", tokens(3));
        assert_eq!(store.spent("a", Period::Day).tokens, 3);
        store.close();
    }
}
