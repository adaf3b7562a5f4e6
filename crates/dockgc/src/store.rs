//! The state database (SQLite, bundled): use history, the event cursor, the audit trail and
//! the governor's cycles and status. One file in the state directory; versioned schema with
//! migrations; WAL so a crash never leaves it half-written.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use dockgc_core::{History, ImageUse};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::audit::{AuditSink, Event, Record};

/// Schema version this build writes. Older databases are migrated on open; newer ones are
/// refused (a newer dockgc wrote them).
pub const SCHEMA_VERSION: i64 = 2;

/// File name of the database in the state directory.
pub const DB_FILE: &str = "dockgc.db";

/// How long an opener waits for another connection (the daemon, a `dockgc status`) to let go.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Switches the database to WAL. Switching needs the database to itself, and SQLite answers a
/// switch that meets another connection with "busy" at once instead of calling the busy
/// handler, so a daemon and a `dockgc status` opening a new database together would make one
/// of them fail: retry until the busy timeout. Once one opener has switched, the others find
/// WAL already set (it is stored in the file).
fn use_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

/// The default state directory: `/var/lib/dockgc` as root, else `$XDG_STATE_HOME/dockgc`
/// (or `~/.local/state/dockgc`).
pub fn default_state_dir() -> PathBuf {
    if crate::audit::is_root() {
        return PathBuf::from("/var/lib/dockgc");
    }
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir)
        .join("dockgc")
}

/// One governor cycle, as `dockgc status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cycle {
    /// Cycle number.
    pub id: i64,
    /// Start (Unix seconds).
    pub started: i64,
    /// End (Unix seconds).
    pub finished: i64,
    /// What triggered it (`watermark`, `schedule`, `manual`, `event`, `start`).
    pub trigger: String,
    /// `done`, `target_not_reached`, `error`.
    pub status: String,
    /// Disk bytes the plan predicted.
    pub planned_disk_bytes: u64,
    /// Disk bytes freed (statvfs), when measured.
    pub freed_disk_bytes: Option<u64>,
    /// Objects removed.
    pub removed: u64,
    /// Deletions failed.
    pub failed: u64,
    /// A line for people.
    pub message: String,
}

/// The state database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (creating and migrating) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path)
            .with_context(|| format!("cannot open the state database {}", path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        use_wal(&conn).with_context(|| format!("cannot use WAL on {}", path.display()))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let store = Self { conn, path };
        store.migrate()?;
        Ok(store)
    }

    /// Opens the database read-only if it exists (for `plan`, `explain`, `status`, `log`).
    pub fn open_existing(dir: &Path) -> Result<Option<Self>> {
        if !dir.join(DB_FILE).exists() {
            return Ok(None);
        }
        Self::open(dir).map(Some)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn migrate(&self) -> Result<()> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            bail!(
                "{} has schema version {version}; this dockgc knows up to {SCHEMA_VERSION} (a newer dockgc wrote it)",
                self.path.display()
            );
        }
        if version < 1 {
            // IMMEDIATE: two openers migrating together wait for each other (the busy handler)
            // instead of one failing to upgrade its read lock.
            self.conn.execute_batch(
                "BEGIN IMMEDIATE;
                 CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS images (
                     id TEXT PRIMARY KEY, first_seen INTEGER NOT NULL, last_used INTEGER NOT NULL);
                 CREATE TABLE IF NOT EXISTS audit (
                     id INTEGER PRIMARY KEY, time TEXT NOT NULL, unix INTEGER NOT NULL,
                     run TEXT NOT NULL, seq INTEGER NOT NULL, event TEXT NOT NULL,
                     kind TEXT, record TEXT NOT NULL);
                 CREATE INDEX IF NOT EXISTS audit_run_seq ON audit (run, seq);
                 CREATE INDEX IF NOT EXISTS audit_unix ON audit (unix);
                 CREATE TABLE IF NOT EXISTS cycles (
                     id INTEGER PRIMARY KEY, started INTEGER NOT NULL, finished INTEGER NOT NULL,
                     trigger TEXT NOT NULL, status TEXT NOT NULL, planned_disk_bytes INTEGER NOT NULL,
                     freed_disk_bytes INTEGER, removed INTEGER NOT NULL, failed INTEGER NOT NULL,
                     message TEXT NOT NULL);
                 PRAGMA user_version = 1;
                 COMMIT;",
            )?;
        }
        if version < 2 {
            // `dockgc audit`'s results per layer (layers never change) and each image's layers
            // with their commands.
            self.conn.execute_batch(
                "BEGIN IMMEDIATE;
                 CREATE TABLE IF NOT EXISTS layer_scans (
                     diff_id TEXT PRIMARY KEY, version INTEGER NOT NULL, data BLOB NOT NULL);
                 CREATE TABLE IF NOT EXISTS image_layers (id TEXT PRIMARY KEY, data TEXT NOT NULL);
                 PRAGMA user_version = 2;
                 COMMIT;",
            )?;
        }
        Ok(())
    }

    /// A layer's scan from an earlier audit, if made by this scanner version.
    pub fn layer_scan(&self, diff_id: &str) -> Result<Option<dockgc_content::LayerIndex>> {
        let row: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT data FROM layer_scans WHERE diff_id = ?1 AND version = ?2",
                params![diff_id, dockgc_content::layer::SCAN_VERSION],
                |r| r.get(0),
            )
            .optional()?;
        let Some(compressed) = row else {
            return Ok(None);
        };
        let json = zstd::decode_all(&compressed[..]).context("a corrupt layer scan")?;
        Ok(Some(
            serde_json::from_slice(&json).context("a corrupt layer scan")?,
        ))
    }

    /// Keeps a layer's scan (zstd-compressed JSON: file lists compress well).
    pub fn save_layer_scan(&self, diff_id: &str, index: &dockgc_content::LayerIndex) -> Result<()> {
        let json = serde_json::to_vec(index)?;
        let compressed = zstd::encode_all(&json[..], 3)?;
        self.conn.execute(
            "INSERT OR REPLACE INTO layer_scans (diff_id, version, data) VALUES (?1, ?2, ?3)",
            params![diff_id, index.version, compressed],
        )?;
        Ok(())
    }

    /// An image's layers and their commands, from an earlier audit.
    pub fn image_layers(&self, id: &str) -> Result<Option<Vec<dockgc_content::ImageLayer>>> {
        let row: Option<String> = self
            .conn
            .query_row(
                "SELECT data FROM image_layers WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        row.map(|json| serde_json::from_str(&json).context("corrupt image layers"))
            .transpose()
    }

    /// Keeps an image's layers and their commands (an image ID never changes content).
    pub fn save_image_layers(&self, id: &str, layers: &[dockgc_content::ImageLayer]) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO image_layers (id, data) VALUES (?1, ?2)",
            params![id, serde_json::to_string(layers)?],
        )?;
        Ok(())
    }

    /// The use history.
    pub fn history(&self) -> Result<History> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, first_seen, last_used FROM images")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                ImageUse {
                    first_seen: r.get(1)?,
                    last_used: r.get(2)?,
                },
            ))
        })?;
        let mut history = History::default();
        for row in rows {
            let (id, use_) = row?;
            history.images.insert(id, use_);
        }
        Ok(history)
    }

    /// Records that `image` was seen at `seen` (first arrival is kept) and used at `used`.
    pub fn record_use(&mut self, image: &str, seen: i64, used: Option<i64>) -> Result<()> {
        self.conn.execute(
            "INSERT INTO images (id, first_seen, last_used) VALUES (?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET first_seen = MIN(first_seen, excluded.first_seen),
                 last_used = MAX(last_used, excluded.last_used)",
            params![image, seen, used.unwrap_or(seen)],
        )?;
        Ok(())
    }

    /// Merges a whole history (reconciliation after a gap) in one transaction, and forgets
    /// images that no longer exist.
    pub fn merge_history(&mut self, history: &History, existing: &[String]) -> Result<()> {
        let tx = self.conn.transaction()?;
        for (id, u) in &history.images {
            tx.execute(
                "INSERT INTO images (id, first_seen, last_used) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET first_seen = MIN(first_seen, excluded.first_seen),
                     last_used = MAX(last_used, excluded.last_used)",
                params![id, u.first_seen, u.last_used],
            )?;
        }
        let known: Vec<String> = {
            let mut stmt = tx.prepare("SELECT id FROM images")?;
            let ids = stmt
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            ids
        };
        for id in known.iter().filter(|id| !existing.contains(id)) {
            tx.execute("DELETE FROM images WHERE id = ?1", params![id])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// A value of the meta table.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Sets a value of the meta table.
    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// Records a finished cycle; returns its number.
    pub fn record_cycle(&mut self, cycle: &Cycle) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO cycles (started, finished, trigger, status, planned_disk_bytes,
                 freed_disk_bytes, removed, failed, message)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                cycle.started,
                cycle.finished,
                cycle.trigger,
                cycle.status,
                cycle.planned_disk_bytes as i64,
                cycle.freed_disk_bytes.map(|b| b as i64),
                cycle.removed as i64,
                cycle.failed as i64,
                cycle.message
            ],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// The last `n` cycles, newest first.
    pub fn cycles(&self, n: usize) -> Result<Vec<Cycle>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, started, finished, trigger, status, planned_disk_bytes, freed_disk_bytes,
                    removed, failed, message FROM cycles ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![n as i64], |r| {
            Ok(Cycle {
                id: r.get(0)?,
                started: r.get(1)?,
                finished: r.get(2)?,
                trigger: r.get(3)?,
                status: r.get(4)?,
                planned_disk_bytes: r.get::<_, i64>(5)? as u64,
                freed_disk_bytes: r.get::<_, Option<i64>>(6)?.map(|b| b as u64),
                removed: r.get::<_, i64>(7)? as u64,
                failed: r.get::<_, i64>(8)? as u64,
                message: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Audit records since `since` (Unix seconds), oldest first. With `kind`, only the intents
    /// and outcomes of deletions of that kind.
    pub fn audit_records(&self, since: i64, kind: Option<&str>) -> Result<Vec<Record>> {
        let mut stmt = self.conn.prepare(
            "SELECT record FROM audit a WHERE unix >= ?1 AND (?2 IS NULL OR EXISTS (
                 SELECT 1 FROM audit i WHERE i.run = a.run AND i.seq = a.seq
                     AND i.event = 'intent' AND i.kind = ?2))
             ORDER BY id",
        )?;
        let rows = stmt.query_map(params![since, kind], |r| r.get::<_, String>(0))?;
        let mut records = Vec::new();
        for row in rows {
            records.push(serde_json::from_str(&row?).context("a corrupt audit record")?);
        }
        Ok(records)
    }

    /// Intents without an outcome, as (run, seq, object id, kind).
    pub fn open_intents(&self) -> Result<Vec<(String, u64, Record)>> {
        let mut stmt = self.conn.prepare(
            "SELECT i.run, i.seq, i.record FROM audit i
             WHERE i.event = 'intent' AND NOT EXISTS (
                 SELECT 1 FROM audit o WHERE o.run = i.run AND o.seq = i.seq AND o.event = 'outcome')
             ORDER BY i.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut open = Vec::new();
        for row in rows {
            let (run, seq, record) = row?;
            open.push((
                run,
                seq as u64,
                serde_json::from_str(&record).context("a corrupt audit record")?,
            ));
        }
        Ok(open)
    }

    /// Closes every open intent as `interrupted`; returns how many.
    pub fn close_open_intents(&mut self) -> Result<usize> {
        let open = self.open_intents()?;
        for (run, seq, _) in &open {
            self.append(&Record::interrupted(
                run.clone(),
                *seq,
                crate::audit::NO_OUTCOME,
            ))?;
        }
        Ok(open.len())
    }

    /// Appends a record under an explicit run (used to close other runs' intents).
    pub fn append(&mut self, record: &Record) -> Result<()> {
        let kind = match &record.event {
            Event::Intent { kind, .. } => Some(kind.clone()),
            _ => None,
        };
        let event = serde_json::to_value(&record.event)?
            .get("event")
            .and_then(|v| v.as_str())
            .unwrap_or("unknown")
            .to_string();
        self.conn.execute(
            "INSERT INTO audit (time, unix, run, seq, event, kind, record) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                record.time,
                chrono::DateTime::parse_from_rfc3339(&record.time).map(|t| t.timestamp()).unwrap_or(0),
                record.run,
                record.seq as i64,
                event,
                kind,
                serde_json::to_string(record)?
            ],
        )?;
        Ok(())
    }
}

/// The audit trail of one run, in the state database. A failed write (a full disk) never
/// stops a run that frees space: the record is kept in memory, reported, and written with
/// the next record that goes through.
#[derive(Debug)]
pub struct DbAudit<'a> {
    /// The database.
    pub store: &'a mut Store,
    /// The run.
    pub run: String,
    /// Records not written yet.
    pub pending: Vec<Record>,
}

impl<'a> DbAudit<'a> {
    /// The audit trail of run `run`.
    pub fn new(store: &'a mut Store, run: String) -> Self {
        Self {
            store,
            run,
            pending: Vec::new(),
        }
    }

    fn flush(&mut self) -> Result<()> {
        while let Some(record) = self.pending.first() {
            self.store.append(record)?;
            self.pending.remove(0);
        }
        Ok(())
    }
}

impl AuditSink for DbAudit<'_> {
    fn write(&mut self, seq: u64, event: Event) -> Result<()> {
        self.pending.push(Record::new(self.run.clone(), seq, event));
        if let Err(e) = self.flush() {
            eprintln!(
                "dockgc: cannot write the audit trail ({} record(s) held, will retry): {e:#}",
                self.pending.len()
            );
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        // Each statement commits with synchronous = FULL; retry what is held.
        let _ = self.flush();
        Ok(())
    }
}

impl Drop for DbAudit<'_> {
    fn drop(&mut self) {
        if self.flush().is_err() {
            eprintln!(
                "dockgc: {} audit record(s) could not be written to {}",
                self.pending.len(),
                self.store.path().display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dockgc status` started beside a starting daemon raced it to switch a new database to
    /// WAL, and SQLite answers that switch with "busy" at once, without its busy handler: the
    /// daemon died (seen in CI). Every opener must get through.
    #[test]
    fn openers_racing_on_a_new_database_all_get_through() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let barrier = std::sync::Barrier::new(4);
            std::thread::scope(|s| {
                let opens: Vec<_> = (0..4)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            Store::open(dir.path()).map(|_| ())
                        })
                    })
                    .collect();
                for open in opens {
                    open.join().unwrap().unwrap();
                }
            });
        }
    }

    #[test]
    fn history_keeps_first_arrival_and_last_use() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.record_use("a", 100, Some(150)).unwrap();
        store.record_use("a", 120, Some(140)).unwrap();
        store.record_use("a", 90, None).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let h = store.history().unwrap();
        assert_eq!(
            h.images["a"],
            ImageUse {
                first_seen: 90,
                last_used: 150
            }
        );
    }

    #[test]
    fn open_intents_and_cycles() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let mut audit = DbAudit::new(&mut store, "r1".into());
        audit
            .write(
                1,
                Event::Intent {
                    kind: "image".into(),
                    id: "x".into(),
                    name: "x".into(),
                    reason: "r".into(),
                    rule: "u".into(),
                    bytes: 1,
                    disk_bytes: 1,
                },
            )
            .unwrap();
        drop(audit);
        assert_eq!(store.open_intents().unwrap().len(), 1);
        let mut audit = DbAudit::new(&mut store, "r1".into());
        audit
            .write(
                1,
                Event::Outcome {
                    outcome: "removed".into(),
                    detail: None,
                },
            )
            .unwrap();
        drop(audit);
        assert!(store.open_intents().unwrap().is_empty());
        assert_eq!(store.audit_records(0, Some("image")).unwrap().len(), 2);
        let cycle = Cycle {
            id: 0,
            started: 1,
            finished: 2,
            trigger: "manual".into(),
            status: "done".into(),
            planned_disk_bytes: 5,
            freed_disk_bytes: Some(4),
            removed: 1,
            failed: 0,
            message: String::new(),
        };
        store.record_cycle(&cycle).unwrap();
        assert_eq!(store.cycles(5).unwrap()[0].removed, 1);
    }

    #[test]
    fn a_failed_audit_write_is_held_and_retried() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        // Writes fail as they would on a full disk.
        store.conn.pragma_update(None, "query_only", true).unwrap();
        let mut audit = DbAudit::new(&mut store, "r".into());
        let outcome = || Event::Outcome {
            outcome: "removed".into(),
            detail: None,
        };
        audit.write(1, outcome()).unwrap();
        audit.write(2, outcome()).unwrap();
        assert_eq!(audit.pending.len(), 2);
        audit
            .store
            .conn
            .pragma_update(None, "query_only", false)
            .unwrap();
        audit.write(3, outcome()).unwrap();
        assert!(audit.pending.is_empty());
        drop(audit);
        let seqs: Vec<u64> = store
            .audit_records(0, None)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3]);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("schema version 99"), "{err}");
    }

    /// A database written by schema version 1 (checked in as written): it opens, keeps its
    /// history and cycles, and gains the audit tables.
    #[test]
    fn a_version_1_database_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/state-v1.db"),
            dir.path().join(DB_FILE),
        )
        .unwrap();
        let store = Store::open(dir.path()).unwrap();
        let version: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(
            store.history().unwrap().use_of("sha256:aaaa", 0).last_used,
            1_764_800_000
        );
        assert_eq!(store.cycles(10).unwrap().len(), 1);
        let index = dockgc_content::LayerIndex {
            version: dockgc_content::layer::SCAN_VERSION,
            files: Vec::new(),
            bytes: 7,
        };
        store.save_layer_scan("sha256:l", &index).unwrap();
        assert_eq!(store.layer_scan("sha256:l").unwrap(), Some(index));
    }
}
