//! The append-only JSON-lines audit trail: every intent before a deletion, every outcome
//! after it. An intent without an outcome means a run was interrupted; [`Audit::open`] closes
//! such intents with an `interrupted` outcome so the trail stays consistent.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Version of the audit record format.
pub const AUDIT_VERSION: u32 = 1;

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Format version.
    pub version: u32,
    /// RFC 3339 time.
    pub time: String,
    /// The run (one `dockgc prune`).
    pub run: String,
    /// Step number within the run (0 for run records).
    pub seq: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

impl Record {
    /// A record of `event`, now.
    pub fn new(run: String, seq: u64, event: Event) -> Self {
        Self {
            version: AUDIT_VERSION,
            time: now_rfc3339(),
            run,
            seq,
            event,
        }
    }

    /// The outcome that closes an intent a run left open.
    pub fn interrupted(run: String, seq: u64, detail: &str) -> Self {
        Self::new(
            run,
            seq,
            Event::Outcome {
                outcome: "interrupted".into(),
                detail: Some(detail.to_string()),
            },
        )
    }
}

/// The detail of an intent closed without a check against the engine.
pub const NO_OUTCOME: &str = "the run ended before recording an outcome";

/// What an audit record says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A run starts.
    RunStart {
        /// Steps planned.
        steps: usize,
        /// Bytes planned (Docker's accounting).
        planned_bytes: u64,
        /// Disk bytes planned.
        planned_disk_bytes: u64,
    },
    /// About to delete.
    Intent {
        /// Kind of object.
        kind: String,
        /// Object ID.
        id: String,
        /// Name.
        name: String,
        /// Reason.
        reason: String,
        /// Rule.
        rule: String,
        /// Planned bytes.
        bytes: u64,
        /// Planned disk bytes.
        disk_bytes: u64,
    },
    /// What came of an intent.
    Outcome {
        /// `removed`, `already_gone`, `skipped`, `failed`, `interrupted`.
        outcome: String,
        /// Why, for skipped, failed and interrupted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// A run ends.
    RunEnd {
        /// Objects removed.
        removed: usize,
        /// Disk bytes freed (statvfs), when measured.
        #[serde(default)]
        freed_disk_bytes: Option<u64>,
        /// How the run ended.
        status: String,
    },
}

/// Where a run's intents and outcomes go.
pub trait AuditSink {
    /// Appends one event of the run.
    fn write(&mut self, seq: u64, event: Event) -> Result<()>;
    /// Makes what was written durable.
    fn sync(&mut self) -> Result<()>;
}

impl AuditSink for Audit {
    fn write(&mut self, seq: u64, event: Event) -> Result<()> {
        Audit::write(self, seq, event)
    }

    fn sync(&mut self) -> Result<()> {
        Audit::sync(self)
    }
}

/// An open audit trail in a JSON-lines file.
#[derive(Debug)]
pub struct Audit {
    file: File,
    path: PathBuf,
    run: String,
}

/// Whether dockgc runs as root.
pub fn is_root() -> bool {
    // /proc/self is owned by the effective user.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Now, as audit records write it.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Audit {
    /// Opens (creating) the trail and closes intents left open by an interrupted run.
    /// Returns the trail and how many intents it closed.
    pub fn open(path: &Path, run: String) -> Result<(Self, usize)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the audit directory {}", dir.display()))?;
        }
        let open_intents = open_intents(path)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the audit file {}", path.display()))?;
        let mut audit = Self {
            file,
            path: path.to_path_buf(),
            run,
        };
        let closed = open_intents.len();
        for (run, seq) in open_intents {
            audit.write_record(&Record::interrupted(run, seq, NO_OUTCOME))?;
        }
        audit.sync()?;
        Ok((audit, closed))
    }

    /// Appends one event of this run. It reaches the disk at the next [`Audit::sync`].
    pub fn write(&mut self, seq: u64, event: Event) -> Result<()> {
        let record = Record::new(self.run.clone(), seq, event);
        self.write_record(&record)
    }

    fn write_record(&mut self, record: &Record) -> Result<()> {
        // serde_json cannot fail on these plain structs.
        let mut line = serde_json::to_string(record).context("encoding an audit record")?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .with_context(|| format!("cannot write the audit file {}", self.path.display()))
    }

    /// Makes every record written so far durable. The executor syncs a chunk's intents before
    /// deleting anything, and its outcomes before the next chunk.
    pub fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .with_context(|| format!("cannot sync the audit file {}", self.path.display()))
    }
}

/// Intents without an outcome, as (run, seq).
pub fn open_intents(path: &Path) -> Result<Vec<(String, u64)>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read the audit file {}", path.display()))
        }
    };
    let mut open: BTreeMap<(String, u64), ()> = BTreeMap::new();
    for line in BufReader::new(file).lines() {
        let line =
            line.with_context(|| format!("cannot read the audit file {}", path.display()))?;
        // A torn last line (crash mid-write) is not a record.
        let Ok(record) = serde_json::from_str::<Record>(&line) else {
            continue;
        };
        match record.event {
            Event::Intent { .. } => {
                open.insert((record.run, record.seq), ());
            }
            Event::Outcome { .. } => {
                open.remove(&(record.run, record.seq));
            }
            _ => {}
        }
    }
    Ok(open.into_keys().collect())
}

/// Reads every record.
#[cfg(test)]
pub fn read(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the audit file {}", path.display()))?;
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad audit line: {l}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_intents_are_closed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/audit.jsonl");
        let (mut audit, closed) = Audit::open(&path, "r1".into()).unwrap();
        assert_eq!(closed, 0);
        let intent = |id: &str| Event::Intent {
            kind: "image".into(),
            id: id.into(),
            name: id.into(),
            reason: "x".into(),
            rule: "y".into(),
            bytes: 1,
            disk_bytes: 2,
        };
        audit.write(1, intent("a")).unwrap();
        audit
            .write(
                1,
                Event::Outcome {
                    outcome: "removed".into(),
                    detail: None,
                },
            )
            .unwrap();
        audit.write(2, intent("b")).unwrap();
        drop(audit);
        assert_eq!(open_intents(&path).unwrap(), vec![("r1".to_string(), 2)]);
        let (_audit, closed) = Audit::open(&path, "r2".into()).unwrap();
        assert_eq!(closed, 1);
        assert!(open_intents(&path).unwrap().is_empty());
        assert_eq!(read(&path).unwrap().len(), 4);
    }
}
