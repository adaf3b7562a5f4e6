//! Back-pressure: after each event the replay waits, its clock standing still, until the
//! policy under test has handled every engine event so far (and whatever it set off). On a
//! real host a policy reacts within a second, which is nothing between one job and the next;
//! compressed two thousand times, the same second is half an hour of simulated time in which
//! the policy lags behind the disk, and docuum, lagging, meets containers that are gone by
//! the time it inspects them and restarts (its issue #237).
//!
//! The signal is a marker: the replay renames a container of its own (a `container rename`
//! event, which neither policy reads as a use), then waits until the policy has handled that
//! event. Both handle events in order, so that means they have handled everything before it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dockgc_core::trace::TraceLayer;
use dockgc_docker::engine::Engine;
use dockgc_docker::workload::NewContainer;

use crate::synth::Workshop;

/// The longest the replay waits for one marker before it counts a timeout and goes on.
const PATIENCE: Duration = Duration::from_secs(120);

const MARKER_PREFIX: &str = "dockgc-bench-marker-";
const MARKER_TAG: &str = "dockgc-bench/marker:latest";

/// How to tell that the policy under test has handled an event.
pub enum Policy {
    /// docuum, from its log at `LOG_LEVEL=trace`: it logs "Incoming event: …" as it starts on
    /// an event, after finishing the one before, and "Retrying in 5 seconds" when it restarts.
    Docuum(PeerLog),
    /// `dockgc run`, from `dockgc status`: `events_handled` is the engine time of the newest
    /// event it has handled, with any cycle that event started.
    Dockgc {
        /// The dockgc binary.
        bin: PathBuf,
        /// Its state directory.
        state: PathBuf,
    },
}

/// Waits for the policy under test after each event.
pub struct Settle {
    policy: Policy,
    marker: String,
    sent: u64,
    /// Markers the policy did not handle within [`PATIENCE`].
    pub timeouts: u64,
}

enum Heard {
    Handled,
    /// The peer restarted: the marker may have fallen into the gap; send another.
    Restarted,
    Waiting,
}

impl Settle {
    /// Loads the marker's image (one small layer) and creates its container: in use, so no
    /// policy deletes it.
    pub async fn prepare(engine: &Engine, workshop: &mut Workshop, policy: Policy) -> Result<Self> {
        let layer = TraceLayer {
            id: "dockgc-bench-marker".into(),
            bytes: 1024,
        };
        let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let made = workshop.image("dockgc-bench-marker", &[layer], &created);
        let (tar, _) = workshop.archive(&made, Some(MARKER_TAG), |_| false);
        engine
            .load_archive(tar)
            .await
            .context("load the marker image")?;
        let name = format!("{MARKER_PREFIX}0");
        let marker = engine
            .create_container(&NewContainer {
                name: &name,
                image: MARKER_TAG,
                volume: None,
                // dockgc's default protection: it would remove the stopped container.
                label: Some("dockgc.keep"),
            })
            .await
            .context("create the marker container")?;
        Ok(Self {
            policy,
            marker,
            sent: 0,
            timeouts: 0,
        })
    }

    /// The log of docuum, if that is the policy (for its restarts).
    pub fn peer_log(&mut self) -> Option<&mut PeerLog> {
        match &mut self.policy {
            Policy::Docuum(log) => Some(log),
            Policy::Dockgc { .. } => None,
        }
    }

    /// Returns once the policy has handled every event so far.
    pub async fn wait(&mut self, engine: &Engine) -> Result<()> {
        let began = Instant::now();
        'marker: while began.elapsed() < PATIENCE {
            self.sent += 1;
            let name = format!("{MARKER_PREFIX}{}", self.sent);
            let sent_at = chrono::Utc::now()
                .timestamp_nanos_opt()
                .context("the clock is past 2262")?;
            engine
                .rename_container(&self.marker, &name)
                .await
                .context("rename the marker container")?;
            while began.elapsed() < PATIENCE {
                match self.heard(sent_at).await? {
                    Heard::Handled => return Ok(()),
                    Heard::Restarted => {
                        // Events during the restart are lost to it; once it listens again,
                        // a new marker tells when it has caught up.
                        while self.peer_log().is_some_and(PeerLog::restarting)
                            && began.elapsed() < PATIENCE
                        {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        continue 'marker;
                    }
                    Heard::Waiting => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        }
        self.timeouts += 1;
        Ok(())
    }

    async fn heard(&mut self, sent_at: i64) -> Result<Heard> {
        match &mut self.policy {
            Policy::Docuum(log) => {
                let retries = log.retries;
                log.poll();
                Ok(if log.marker >= self.sent {
                    Heard::Handled
                } else if log.retries > retries || log.restarting() {
                    Heard::Restarted
                } else {
                    Heard::Waiting
                })
            }
            Policy::Dockgc { bin, state } => {
                let out = tokio::process::Command::new(&*bin)
                    .arg("--state-dir")
                    .arg(&*state)
                    .args(["status", "--format", "json"])
                    .output()
                    .await
                    .with_context(|| format!("run {} status", bin.display()))?;
                let status: serde_json::Value =
                    serde_json::from_slice(&out.stdout).unwrap_or_default();
                let handled = status["status"]["events_handled"].as_i64();
                Ok(if handled.is_some_and(|h| h >= sent_at) {
                    Heard::Handled
                } else {
                    Heard::Waiting
                })
            }
        }
    }
}

/// docuum's log, read as it grows: it is restarting between a "Retrying" line and the next
/// "Listening" line (docuum 0.27.3's words); "Incoming event" lines name the markers it has
/// reached.
pub struct PeerLog {
    path: PathBuf,
    offset: u64,
    pending: String,
    /// Restarts so far.
    pub retries: u64,
    listens: u64,
    /// The newest marker docuum has started on.
    marker: u64,
}

impl PeerLog {
    /// Reads `path` from its start.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            pending: String::new(),
            retries: 0,
            listens: 0,
            marker: 0,
        }
    }

    fn poll(&mut self) {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return;
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut bytes = Vec::new();
        if let Ok(n) = file.read_to_end(&mut bytes) {
            self.offset += n as u64;
        }
        self.pending.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = self.pending.find('\n') {
            let line: String = self.pending.drain(..=end).collect();
            self.read_line(&line);
        }
    }

    fn read_line(&mut self, line: &str) {
        if line.contains("Retrying in 5 seconds") {
            self.retries += 1;
        } else if line.contains("Listening for Docker events") {
            self.listens += 1;
        } else if line.contains("Incoming event") {
            // A rename event names the new name as `"name":"…"` (the old one is `oldName`).
            let key = format!("\"name\":\"{MARKER_PREFIX}");
            if let Some(at) = line.find(&key) {
                let digits: String = line[at + key.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                if let Ok(n) = digits.parse::<u64>() {
                    self.marker = self.marker.max(n);
                }
            }
        }
    }

    /// Whether docuum is between a restart and listening again.
    pub fn restarting(&mut self) -> bool {
        self.poll();
        self.listens <= self.retries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docuum_lines_are_read_as_markers_and_restarts() {
        let mut log = PeerLog::new(PathBuf::new());
        log.read_line("[2026-12-04 20:00:00 +00:00 INFO] Listening for Docker events…");
        log.read_line(
            "[2026-12-04 20:00:01 +00:00 TRACE] Incoming event: `{\"status\":\"rename\",\"Type\":\"container\",\"Action\":\"rename\",\"Actor\":{\"ID\":\"c1\",\"Attributes\":{\"image\":\"dockgc-bench/marker:latest\",\"name\":\"dockgc-bench-marker-12\",\"oldName\":\"/dockgc-bench-marker-11\"}}}`",
        );
        assert_eq!(log.marker, 12);
        // Another container's name is not a marker.
        log.read_line("[…] Incoming event: `{\"Actor\":{\"Attributes\":{\"name\":\"job-40\"}}}`");
        assert_eq!(log.marker, 12);
        assert!(log.listens > log.retries);
        log.read_line("[2026-12-04 20:00:02 +00:00 INFO] Retrying in 5 seconds…");
        assert_eq!((log.retries, log.listens), (1, 1));
    }
}
