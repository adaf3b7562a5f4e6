//! The governor's Prometheus metrics (OpenMetrics text).
//!
//! Every value is set by the governor from what it already measured or did: the last
//! statvfs of the Docker filesystem, the last snapshot, the last cycle. Encoding reads atomics
//! and never calls the engine, so a scrape costs microseconds whatever a cycle is doing.
//! `docs/metrics.md` lists every series; the alert rules and the Grafana dashboard in
//! `contrib/` use only these names (a test checks it).

use std::sync::atomic::AtomicU64;

use dockgc_core::model::Filesystem;
use dockgc_core::plan::{Kind, Reason};
use dockgc_core::usage::Usage;
use dockgc_core::Policy;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry, Unit};

use crate::executor::{Cause, Outcome, StepResult};
use crate::store::Cycle;

/// `kind` and `reason` of a deletion.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindReason {
    /// Object kind (`image`, `container`, …).
    pub kind: String,
    /// Why it was chosen (`disk_pressure`, `dangling_image`, …).
    pub reason: String,
}

/// `kind` and `cause` of a deletion left alone or failed.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindCause {
    /// Object kind.
    pub kind: String,
    /// Why it was skipped or failed (`in_use`, `engine_error`, …).
    pub cause: String,
}

/// A class of objects.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    /// Class of objects: `images`, `containers`, `volumes`, `build_cache`.
    pub class: String,
}

/// A webhook receiver.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceiverLabel {
    /// The receiver's configured name.
    pub receiver: String,
}

/// Which watermark.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatermarkLabel {
    /// `high` or `low`.
    pub watermark: String,
}

/// `trigger` and `status` of a cycle.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CycleLabels {
    /// What set it off.
    pub trigger: String,
    /// `done`, `target_not_reached`, `error`.
    pub status: String,
}

/// A webhook receiver's delivery outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// The receiver's configured name (never its URL).
    pub receiver: String,
    /// `delivered`, `failed` (every attempt failed) or `dropped` (its queue was full).
    pub outcome: String,
}

/// The build's version.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// dockgc's version.
    pub version: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every series the governor exports, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    fs_size: Gauge,
    fs_used: Gauge,
    fs_available: Gauge,
    fs_inodes: Gauge,
    fs_inodes_used: Gauge,
    last_check: Gauge,
    watermark_bytes: Family<WatermarkLabel, Gauge>,
    inode_watermark: Family<WatermarkLabel, FloatGauge>,
    pressure: Gauge,
    class_bytes: Family<ClassLabel, Gauge>,
    class_in_use_bytes: Family<ClassLabel, Gauge>,
    class_reclaimable_bytes: Family<ClassLabel, Gauge>,
    class_objects: Family<ClassLabel, Gauge>,
    class_active_objects: Family<ClassLabel, Gauge>,
    snapshot_time: Gauge,
    deletions: Family<KindReason, Counter>,
    reclaimed_bytes: Family<KindReason, Counter>,
    skipped: Family<KindCause, Counter>,
    failed: Family<KindCause, Counter>,
    cycles: Family<CycleLabels, Counter>,
    cycle_duration: Histogram,
    cycle_in_progress: Gauge,
    freed_bytes: Counter,
    last_cycle_time: Gauge,
    last_success_time: Gauge,
    last_target_reached: Gauge,
    last_planned: Gauge,
    last_freed: Gauge,
    engine_up: Gauge,
    store_writable: Gauge,
    config_reload_ok: Gauge,
    notifications: Family<DeliveryLabels, Counter>,
    notification_retries: Family<ReceiverLabel, Counter>,
    start_time: Gauge,
}

/// Content type of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every kind of object, as labels name them.
const KINDS: [Kind; 5] = [
    Kind::Container,
    Kind::Image,
    Kind::Volume,
    Kind::Network,
    Kind::BuildCache,
];

/// Every reason with the kind it applies to.
const REASONS: [(Kind, Reason); 9] = [
    (Kind::Container, Reason::StoppedContainer),
    (Kind::Image, Reason::DanglingImage),
    (Kind::Image, Reason::UnusedImage),
    (Kind::Image, Reason::DiskPressure),
    (Kind::Image, Reason::Requested),
    (Kind::Volume, Reason::AnonymousVolume),
    (Kind::Volume, Reason::NamedVolume),
    (Kind::Network, Reason::UnusedNetwork),
    (Kind::BuildCache, Reason::BuildCache),
];

/// The classes of `dockgc_class_*`.
const CLASSES: [&str; 4] = ["images", "containers", "volumes", "build_cache"];

fn gauge_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every series. Label combinations that alerts compute `increase()` over start
    /// at zero, so the first deletion or failure is an increase, not a new series.
    pub fn new() -> Self {
        let mut r = Registry::default();
        let m = Self {
            registry: Registry::default(),
            fs_size: Gauge::default(),
            fs_used: Gauge::default(),
            fs_available: Gauge::default(),
            fs_inodes: Gauge::default(),
            fs_inodes_used: Gauge::default(),
            last_check: Gauge::default(),
            watermark_bytes: Family::default(),
            inode_watermark: Family::default(),
            pressure: Gauge::default(),
            class_bytes: Family::default(),
            class_in_use_bytes: Family::default(),
            class_reclaimable_bytes: Family::default(),
            class_objects: Family::default(),
            class_active_objects: Family::default(),
            snapshot_time: Gauge::default(),
            deletions: Family::default(),
            reclaimed_bytes: Family::default(),
            skipped: Family::default(),
            failed: Family::default(),
            cycles: Family::default(),
            cycle_duration: Histogram::new(exponential_buckets(0.05, 2.5, 12)),
            cycle_in_progress: Gauge::default(),
            freed_bytes: Counter::default(),
            last_cycle_time: Gauge::default(),
            last_success_time: Gauge::default(),
            last_target_reached: Gauge::default(),
            last_planned: Gauge::default(),
            last_freed: Gauge::default(),
            engine_up: Gauge::default(),
            store_writable: Gauge::default(),
            config_reload_ok: Gauge::default(),
            notifications: Family::default(),
            notification_retries: Family::default(),
            start_time: Gauge::default(),
        };
        fn bytes(r: &mut Registry, name: &str, help: &str, metric: impl Metric) {
            r.register_with_unit(name, help, Unit::Bytes, metric)
        }
        bytes(
            &mut r,
            "dockgc_filesystem_size",
            "Size of the filesystem holding Docker's data root",
            m.fs_size.clone(),
        );
        bytes(
            &mut r,
            "dockgc_filesystem_used",
            "Used bytes of the Docker filesystem at the last check",
            m.fs_used.clone(),
        );
        bytes(
            &mut r,
            "dockgc_filesystem_available",
            "Bytes available to unprivileged users on the Docker filesystem",
            m.fs_available.clone(),
        );
        r.register(
            "dockgc_filesystem_inodes",
            "Inodes of the Docker filesystem",
            m.fs_inodes.clone(),
        );
        r.register(
            "dockgc_filesystem_inodes_used",
            "Used inodes of the Docker filesystem",
            m.fs_inodes_used.clone(),
        );
        r.register_with_unit(
            "dockgc_last_check_timestamp",
            "When the governor last measured the filesystem (Unix time)",
            Unit::Seconds,
            m.last_check.clone(),
        );
        bytes(
            &mut r,
            "dockgc_watermark",
            "Used bytes at which a watermark lies on the current filesystem",
            m.watermark_bytes.clone(),
        );
        r.register_with_unit(
            "dockgc_inode_watermark",
            "Used fraction of inodes at which an inode watermark lies",
            Unit::Other("ratio".into()),
            m.inode_watermark.clone(),
        );
        r.register(
            "dockgc_pressure",
            "1 while usage has crossed the high watermark and is not back under low",
            m.pressure.clone(),
        );
        bytes(
            &mut r,
            "dockgc_class",
            "Bytes by class of objects, shared layers counted once (last snapshot)",
            m.class_bytes.clone(),
        );
        bytes(
            &mut r,
            "dockgc_class_in_use",
            "Bytes held by objects in use, by class (last snapshot)",
            m.class_in_use_bytes.clone(),
        );
        bytes(
            &mut r,
            "dockgc_class_reclaimable",
            "Bytes deleting every unused object of the class would free (last snapshot)",
            m.class_reclaimable_bytes.clone(),
        );
        r.register(
            "dockgc_class_objects",
            "Objects by class (last snapshot)",
            m.class_objects.clone(),
        );
        r.register(
            "dockgc_class_active_objects",
            "Objects in use by class: images used by containers, running containers, volumes \
             mounted, build cache in use (last snapshot)",
            m.class_active_objects.clone(),
        );
        r.register_with_unit(
            "dockgc_snapshot_timestamp",
            "When the figures of dockgc_class_* were taken (Unix time)",
            Unit::Seconds,
            m.snapshot_time.clone(),
        );
        r.register(
            "dockgc_deletions",
            "Objects deleted, by kind and reason",
            m.deletions.clone(),
        );
        bytes(
            &mut r,
            "dockgc_reclaimed",
            "Disk bytes reclaimed by deletions (the plan's exact figure per object), by kind \
             and reason",
            m.reclaimed_bytes.clone(),
        );
        r.register(
            "dockgc_skipped_deletions",
            "Planned deletions left alone at execution, by kind and cause",
            m.skipped.clone(),
        );
        r.register(
            "dockgc_failed_deletions",
            "Deletions the engine failed, by kind and cause",
            m.failed.clone(),
        );
        r.register(
            "dockgc_cycles",
            "Cycles run, by trigger and status",
            m.cycles.clone(),
        );
        r.register_with_unit(
            "dockgc_cycle_duration",
            "Duration of cycles",
            Unit::Seconds,
            m.cycle_duration.clone(),
        );
        r.register(
            "dockgc_cycle_in_progress",
            "1 while a cycle runs",
            m.cycle_in_progress.clone(),
        );
        bytes(
            &mut r,
            "dockgc_freed",
            "Disk bytes freed by cycles, measured by statvfs before and after",
            m.freed_bytes.clone(),
        );
        r.register_with_unit(
            "dockgc_last_cycle_timestamp",
            "When the last cycle ended (Unix time)",
            Unit::Seconds,
            m.last_cycle_time.clone(),
        );
        r.register_with_unit(
            "dockgc_last_success_timestamp",
            "When the last cycle that reached its target ended (Unix time)",
            Unit::Seconds,
            m.last_success_time.clone(),
        );
        r.register(
            "dockgc_last_cycle_target_reached",
            "1 if the last cycle reached its target, 0 if not (or it failed)",
            m.last_target_reached.clone(),
        );
        bytes(
            &mut r,
            "dockgc_last_cycle_planned",
            "Disk bytes the last cycle's plan predicted to free",
            m.last_planned.clone(),
        );
        bytes(
            &mut r,
            "dockgc_last_cycle_freed",
            "Disk bytes the last cycle freed (statvfs)",
            m.last_freed.clone(),
        );
        r.register(
            "dockgc_engine_up",
            "1 if the Docker engine answered the governor, 0 if not",
            m.engine_up.clone(),
        );
        r.register(
            "dockgc_store_writable",
            "1 if the last write to the state database succeeded",
            m.store_writable.clone(),
        );
        r.register(
            "dockgc_config_last_reload_successful",
            "1 if the config in force is the file's latest content, 0 if a reload was refused",
            m.config_reload_ok.clone(),
        );
        r.register(
            "dockgc_notifications",
            "Webhook notifications by receiver and outcome",
            m.notifications.clone(),
        );
        r.register(
            "dockgc_notification_retries",
            "Webhook delivery attempts after the first, by receiver",
            m.notification_retries.clone(),
        );
        r.register_with_unit(
            "dockgc_start_time",
            "When the governor started (Unix time)",
            Unit::Seconds,
            m.start_time.clone(),
        );
        m.start_time.set(chrono::Utc::now().timestamp());
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        r.register("dockgc_build_info", "dockgc's version", build);

        for (kind, reason) in REASONS {
            let labels = KindReason {
                kind: kind.to_string(),
                reason: reason.as_str().into(),
            };
            let _ = m.deletions.get_or_create(&labels);
            let _ = m.reclaimed_bytes.get_or_create(&labels);
        }
        for kind in KINDS {
            for cause in Cause::ALL {
                let labels = KindCause {
                    kind: kind.to_string(),
                    cause: cause.label().into(),
                };
                if cause.is_failure() {
                    let _ = m.failed.get_or_create(&labels);
                } else {
                    let _ = m.skipped.get_or_create(&labels);
                }
            }
        }
        m.config_reload_ok.set(1);
        m.store_writable.set(1);
        Self { registry: r, ..m }
    }

    /// The exposition, OpenMetrics text ending in `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The exposition in Prometheus' text format 0.0.4, for clients that do not ask for
    /// OpenMetrics (curl, `promtool check metrics`): no `# UNIT` or `# EOF` lines, and a
    /// counter's family is named like its `_total` samples.
    pub fn encode_text(&self) -> String {
        let open = self.encode();
        let counters: std::collections::HashSet<&str> = open
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.strip_suffix(" counter"))
            .collect();
        let mut out = String::with_capacity(open.len());
        for line in open.lines() {
            if line.starts_with("# UNIT ") || line == "# EOF" {
                continue;
            }
            let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
                let rest = line.strip_prefix(prefix)?;
                let (name, tail) = rest.split_once(' ')?;
                counters
                    .contains(name)
                    .then(|| format!("{prefix}{name}_total {tail}"))
            });
            out.push_str(renamed.as_deref().unwrap_or(line));
            out.push('\n');
        }
        out
    }

    /// A measurement of the Docker filesystem under `policy`'s watermarks.
    pub fn observe_filesystem(&self, fs: &Filesystem, policy: &Policy, at: i64) {
        self.fs_size.set(gauge_of(fs.total_bytes));
        self.fs_used.set(gauge_of(fs.used_bytes));
        self.fs_available.set(gauge_of(fs.available_bytes));
        self.fs_inodes.set(gauge_of(fs.total_inodes));
        self.fs_inodes_used.set(gauge_of(fs.used_inodes()));
        self.last_check.set(at);
        for (name, mark, inodes) in [
            ("high", &policy.disk.high, policy.disk.inodes_high),
            ("low", &policy.disk.low, policy.disk.inodes_low),
        ] {
            let label = WatermarkLabel {
                watermark: name.into(),
            };
            self.watermark_bytes
                .get_or_create(&label)
                .set(gauge_of(mark.used_bytes_on(fs)));
            self.inode_watermark
                .get_or_create(&label)
                .set(inodes / 100.0);
        }
    }

    /// Whether the governor is under pressure (between crossing high and getting under low).
    pub fn set_pressure(&self, pressure: bool) {
        self.pressure.set(i64::from(pressure));
    }

    /// The figures of the last snapshot.
    pub fn observe_usage(&self, usage: &Usage) {
        for (class, figures) in CLASSES.iter().zip([
            &usage.images,
            &usage.containers,
            &usage.volumes,
            &usage.build_cache,
        ]) {
            let label = ClassLabel {
                class: (*class).into(),
            };
            self.class_bytes
                .get_or_create(&label)
                .set(gauge_of(figures.bytes));
            self.class_in_use_bytes
                .get_or_create(&label)
                .set(gauge_of(figures.in_use_bytes));
            self.class_reclaimable_bytes
                .get_or_create(&label)
                .set(gauge_of(figures.reclaimable_bytes));
            self.class_objects
                .get_or_create(&label)
                .set(gauge_of(figures.count as u64));
            self.class_active_objects
                .get_or_create(&label)
                .set(gauge_of(figures.active as u64));
        }
        self.snapshot_time.set(usage.taken_at);
    }

    /// One step's outcome.
    pub fn observe_step(&self, result: &StepResult) {
        let kind = result.step.kind.to_string();
        match result.outcome {
            Outcome::Removed => {
                let labels = KindReason {
                    kind,
                    reason: result.step.reason.as_str().into(),
                };
                self.deletions.get_or_create(&labels).inc();
                self.reclaimed_bytes
                    .get_or_create(&labels)
                    .inc_by(result.step.disk_bytes);
            }
            Outcome::Skipped | Outcome::Failed => {
                let cause = result
                    .cause
                    .unwrap_or(if result.outcome == Outcome::Failed {
                        Cause::EngineError
                    } else {
                        Cause::Changed
                    });
                let labels = KindCause {
                    kind,
                    cause: cause.label().into(),
                };
                if result.outcome == Outcome::Failed {
                    self.failed.get_or_create(&labels).inc();
                } else {
                    self.skipped.get_or_create(&labels).inc();
                }
            }
            Outcome::AlreadyGone | Outcome::NotNeeded | Outcome::NotRun => {}
        }
    }

    /// Marks a cycle as running (or not).
    pub fn set_cycle_in_progress(&self, running: bool) {
        self.cycle_in_progress.set(i64::from(running));
    }

    /// A finished cycle.
    pub fn observe_cycle(&self, cycle: &Cycle, seconds: f64) {
        self.cycles
            .get_or_create(&CycleLabels {
                trigger: cycle.trigger.clone(),
                status: cycle.status.clone(),
            })
            .inc();
        self.cycle_duration.observe(seconds);
        self.last_cycle_time.set(cycle.finished);
        let reached = cycle.status == "done";
        self.last_target_reached.set(i64::from(reached));
        if reached {
            self.last_success_time.set(cycle.finished);
        }
        self.last_planned.set(gauge_of(cycle.planned_disk_bytes));
        self.last_freed
            .set(gauge_of(cycle.freed_disk_bytes.unwrap_or(0)));
        self.freed_bytes.inc_by(cycle.freed_disk_bytes.unwrap_or(0));
    }

    /// Whether the engine answers.
    pub fn set_engine_up(&self, up: bool) {
        self.engine_up.set(i64::from(up));
    }

    /// Whether the engine answered at the last attempt.
    pub fn engine_up(&self) -> bool {
        self.engine_up.get() == 1
    }

    /// Whether the last state database write succeeded.
    pub fn set_store_writable(&self, ok: bool) {
        self.store_writable.set(i64::from(ok));
    }

    /// Whether the last state database write succeeded.
    pub fn store_writable(&self) -> bool {
        self.store_writable.get() == 1
    }

    /// Whether the last config reload was accepted.
    pub fn set_config_reload_ok(&self, ok: bool) {
        self.config_reload_ok.set(i64::from(ok));
    }

    /// A webhook delivery ended (`delivered`, `failed`, `dropped`).
    pub fn observe_delivery(&self, receiver: &str, outcome: &str) {
        self.notifications
            .get_or_create(&DeliveryLabels {
                receiver: receiver.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// A webhook delivery attempt after the first.
    pub fn observe_retry(&self, receiver: &str) {
        self.notification_retries
            .get_or_create(&ReceiverLabel {
                receiver: receiver.into(),
            })
            .inc();
    }

    /// Makes the delivery series of a receiver exist from the start.
    pub fn register_receiver(&self, receiver: &str) {
        for outcome in ["delivered", "failed", "dropped"] {
            let _ = self.notifications.get_or_create(&DeliveryLabels {
                receiver: receiver.into(),
                outcome: outcome.into(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new();
        m.observe_filesystem(
            &Filesystem {
                total_bytes: 1000,
                used_bytes: 900,
                available_bytes: 100,
                total_inodes: 10,
                free_inodes: 5,
            },
            &Policy::default(),
            1,
        );
        let text = m.encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("dockgc_filesystem_used_bytes 900"), "{text}");
        assert!(text.contains("dockgc_watermark_bytes{watermark=\"high\"} 850"));
        assert!(text.contains("dockgc_deletions_total{kind=\"image\",reason=\"disk_pressure\"} 0"));
        assert!(text
            .contains("dockgc_failed_deletions_total{kind=\"volume\",cause=\"engine_error\"} 0"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("dockgc_"), "{line}");
        }
    }

    #[test]
    fn text_format_names_counter_families_like_their_samples() {
        let text = Metrics::new().encode_text();
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE dockgc_deletions_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP dockgc_deletions_total Objects deleted"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE dockgc_filesystem_used_bytes gauge\n"),
            "{text}"
        );
        assert!(!text.contains("# TYPE dockgc_deletions counter"), "{text}");
    }
}
