//! Replays a [`Trace`] in memory against a cleaning policy: dockgc's planner (as the governor
//! runs it), the peers' rules (docuum's least-recently-used eviction, a nightly
//! `docker system prune -af`, a nightly dangling-image prune), and an offline reference that
//! knows the future. Pure: the trace's clock is the only clock.
//!
//! The host model: usage is the trace's other bytes plus every layer referenced by an image
//! (shared layers once), stopped containers' writable layers and volumes, plus the engine's
//! per-layer and per-container overhead the trace states (its `overhead`: directories,
//! metadata, block rounding; what `df` counts and a watermark sees). A job that finds its
//! image gone loads it again (a miss; its missing layers count as bytes re-loaded). An arrival
//! that does not fit on the disk fails (a disk-full failure).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::history::{History, ImageUse};
use crate::model::{
    Container, ContainerState, Filesystem, Image, Layer, Snapshot, Timestamp, Volume, VolumeKind,
    SNAPSHOT_VERSION,
};
use crate::plan::{plan, Goal, Kind, Request};
use crate::policy::Policy;
use crate::trace::{Event, Overhead, Trace, TraceLayer};

/// A cleaning policy under test.
#[derive(Debug, Clone)]
pub enum Contender {
    /// dockgc's governor: a watermark check after every arrival (freeing down to `low` once
    /// above `high`) and a routine cycle at 02:00 every day.
    Dockgc(Box<Policy>),
    /// docuum: after every arrival, least recently used images are removed until images take
    /// at most `threshold_bytes`.
    Docuum {
        /// Image bytes allowed.
        threshold_bytes: u64,
    },
    /// `docker system prune -af` at 02:00: every unused image and stopped container (volumes
    /// stay: `system prune` takes them only with `--volumes`).
    NightlyPruneAll,
    /// `docker image prune -f` at 02:00: dangling images only.
    NightlyDangling,
    /// Knows the future: before an arrival that would take usage above `budget_bytes`, evicts
    /// the images whose next use is farthest away (never used again first). Leftover
    /// containers and volumes go at once. The reference for bytes re-loaded at that budget.
    Offline {
        /// Usage allowed.
        budget_bytes: u64,
    },
    /// Ideal least-recently-used: like the offline reference, evicts before an arrival to
    /// stay within `budget_bytes`, but by oldest use instead of the future.
    Lru {
        /// Usage allowed.
        budget_bytes: u64,
    },
    /// Deletes nothing.
    Nothing,
}

impl Contender {
    /// A short name for reports.
    pub fn name(&self) -> String {
        match self {
            Self::Dockgc(p) => format!("dockgc (low {})", p.disk.low),
            Self::Docuum { threshold_bytes } => {
                format!(
                    "docuum (threshold {})",
                    crate::model::format_bytes(*threshold_bytes)
                )
            }
            Self::NightlyPruneAll => "nightly docker system prune -af".into(),
            Self::NightlyDangling => "nightly docker image prune".into(),
            Self::Offline { budget_bytes } => {
                format!(
                    "offline reference (budget {})",
                    crate::model::format_bytes(*budget_bytes)
                )
            }
            Self::Lru { budget_bytes } => {
                format!(
                    "ideal LRU (budget {})",
                    crate::model::format_bytes(*budget_bytes)
                )
            }
            Self::Nothing => "no cleaning".into(),
        }
    }
}

/// What a replay measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The contender.
    pub policy: String,
    /// Jobs that found their image gone.
    pub misses: u64,
    /// Bytes loaded again for them.
    pub bytes_reloaded: u64,
    /// Arrivals (builds, re-loads, leftovers) that did not fit on the disk.
    pub disk_full: u64,
    /// Highest usage (bytes).
    pub peak_bytes: u64,
    /// Time-weighted mean usage (bytes).
    pub mean_bytes: u64,
    /// Images deleted.
    pub images_deleted: u64,
    /// Other objects deleted (containers, volumes).
    pub others_deleted: u64,
    /// Usage over time: (seconds since start, bytes), one point per hour and at every peak.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage: Vec<(Timestamp, u64)>,
}

#[derive(Debug, Clone)]
struct SimImage {
    tags: Vec<String>,
    layers: Vec<TraceLayer>,
    arrived: Timestamp,
    last_used: Timestamp,
}

#[derive(Debug, Clone)]
struct Leftover {
    id: String,
    image: Option<String>,
    bytes: u64,
    created: Timestamp,
}

/// The simulated host.
struct Host {
    capacity: u64,
    other: u64,
    images: BTreeMap<String, SimImage>,
    tags: HashMap<String, String>,
    layers: HashMap<String, (u64, usize)>,
    layer_bytes: u64,
    containers: Vec<Leftover>,
    volumes: Vec<Leftover>,
    overhead: Overhead,
    /// docuum reads every image event as a use of the image it names, the `untag` of an
    /// image that a build left dangling among them.
    untag_is_use: bool,
}

impl Host {
    /// What statvfs would count: content and the engine's overhead for each object.
    fn usage(&self) -> u64 {
        self.other
            + self.layer_bytes
            + self.layers.len() as u64 * self.overhead.layer_bytes
            + self
                .containers
                .iter()
                .map(|c| c.bytes + self.overhead.container_bytes)
                .sum::<u64>()
            + self.volumes.iter().map(|v| v.bytes).sum::<u64>()
    }

    fn image_bytes(&self) -> u64 {
        self.layer_bytes
    }

    /// Bytes an image's arrival would carry (a pull's download), and what it would add to
    /// the disk (with the engine's overhead for each new layer).
    fn missing_bytes(&self, layers: &[TraceLayer]) -> (u64, u64) {
        let mut seen = std::collections::HashSet::new();
        let (count, bytes) = layers
            .iter()
            .filter(|l| !self.layers.contains_key(&l.id) && seen.insert(&l.id))
            .fold((0, 0), |(n, b), l| (n + 1, b + l.bytes));
        (bytes, bytes + count * self.overhead.layer_bytes)
    }

    fn add_image(&mut self, id: &str, tag: &str, layers: &[TraceLayer], t: Timestamp) {
        if !self.images.contains_key(id) {
            for l in layers {
                let e = self.layers.entry(l.id.clone()).or_insert((l.bytes, 0));
                if e.1 == 0 {
                    self.layer_bytes += l.bytes;
                }
                e.1 += 1;
            }
            self.images.insert(
                id.to_string(),
                SimImage {
                    tags: Vec::new(),
                    layers: layers.to_vec(),
                    arrived: t,
                    last_used: t,
                },
            );
        }
        if !tag.is_empty() {
            if let Some(old) = self.tags.insert(tag.to_string(), id.to_string()) {
                if let Some(o) = self.images.get_mut(&old) {
                    o.tags.retain(|x| x != tag);
                    if self.untag_is_use && old != id {
                        o.last_used = t;
                    }
                }
            }
            if let Some(image) = self.images.get_mut(id) {
                if !image.tags.iter().any(|x| x == tag) {
                    image.tags.push(tag.to_string());
                }
                image.last_used = t;
            }
        }
    }

    fn remove_image(&mut self, id: &str) -> bool {
        if self
            .containers
            .iter()
            .any(|c| c.image.as_deref() == Some(id))
        {
            return false;
        }
        let Some(image) = self.images.remove(id) else {
            return false;
        };
        for tag in &image.tags {
            if self.tags.get(tag).is_some_and(|i| i == id) {
                self.tags.remove(tag);
            }
        }
        for l in &image.layers {
            if let Some(e) = self.layers.get_mut(&l.id) {
                e.1 -= 1;
                if e.1 == 0 {
                    self.layer_bytes -= e.0;
                    self.layers.remove(&l.id);
                }
            }
        }
        true
    }

    /// The disk as statvfs would show it.
    fn filesystem(&self) -> Filesystem {
        let used = self.usage();
        Filesystem {
            total_bytes: self.capacity,
            used_bytes: used,
            available_bytes: self.capacity.saturating_sub(used),
            total_inodes: 10_000_000,
            free_inodes: 9_000_000,
        }
    }

    /// The host as the planner sees it.
    fn snapshot(&self, now: Timestamp) -> (Snapshot, History) {
        let mut history = History::default();
        let images = self
            .images
            .iter()
            .map(|(id, i)| {
                history.images.insert(
                    id.clone(),
                    ImageUse {
                        first_seen: i.arrived,
                        last_used: i.last_used,
                    },
                );
                Image {
                    id: id.clone(),
                    tags: i.tags.clone(),
                    created: i.arrived,
                    arrived: i.arrived,
                    last_tagged: Some(i.arrived),
                    layers: i.layers.iter().map(|l| l.id.clone()).collect(),
                    ..Image::default()
                }
            })
            .collect();
        let layers = self
            .layers
            .iter()
            .map(|(id, (bytes, _))| Layer {
                chain_id: id.clone(),
                bytes: *bytes,
                disk_bytes: Some(*bytes),
                inodes: None,
            })
            .collect();
        let containers = self
            .containers
            .iter()
            .map(|c| Container {
                id: c.id.clone(),
                names: vec![c.id.clone()],
                image_id: c.image.clone().unwrap_or_default(),
                image: String::new(),
                state: ContainerState::Exited,
                created: c.created,
                started: Some(c.created),
                finished: Some(c.created),
                labels: Default::default(),
                size_rw: Some(c.bytes),
                disk_bytes: Some(c.bytes),
                volumes: Vec::new(),
                networks: Vec::new(),
            })
            .collect();
        let volumes = self
            .volumes
            .iter()
            .map(|v| Volume {
                name: v.id.clone(),
                kind: VolumeKind::Anonymous,
                driver: "local".into(),
                labels: Default::default(),
                created: Some(v.created),
                bytes: Some(v.bytes),
                containers: Vec::new(),
            })
            .collect();
        let snapshot = Snapshot {
            version: SNAPSHOT_VERSION,
            taken_at: now,
            filesystem: Some(self.filesystem()),
            images,
            layers,
            containers,
            volumes,
            ..Snapshot::default()
        };
        (snapshot, history)
    }
}

/// Replays `trace` against `contender`.
pub fn simulate(trace: &Trace, contender: &Contender) -> Outcome {
    let start = trace.header.start;
    let mut host = Host {
        capacity: trace.header.capacity_bytes,
        other: trace.header.other_bytes,
        images: BTreeMap::new(),
        tags: HashMap::new(),
        layers: HashMap::new(),
        layer_bytes: 0,
        containers: Vec::new(),
        volumes: Vec::new(),
        overhead: trace.header.overhead,
        untag_is_use: matches!(contender, Contender::Docuum { .. }),
    };
    let mut out = Outcome {
        policy: contender.name(),
        ..Outcome::default()
    };
    // Future uses per image, for the offline reference; each image's layers, for re-loads.
    let mut future: HashMap<&str, Vec<Timestamp>> = HashMap::new();
    let mut built: HashMap<&str, &[TraceLayer]> = HashMap::new();
    for e in &trace.events {
        match e {
            Event::Use { t, image, .. } => future.entry(image.as_str()).or_default().push(*t),
            Event::Build { image, layers, .. } => {
                built.entry(image.as_str()).or_insert(layers.as_slice());
            }
            _ => {}
        }
    }
    let mut pressure = false;
    let mut last_t = 0;
    let mut area: u128 = 0;
    let mut next_nightly = 2 * 3_600;
    let mut next_sample = 0;
    let end = trace.duration();
    for e in &trace.events {
        let t = e.time();
        // Scheduled work between the previous event and this one.
        while next_nightly <= t {
            advance(&mut host, &mut out, &mut area, &mut last_t, next_nightly);
            nightly(
                &mut host,
                contender,
                start + next_nightly,
                &mut pressure,
                &mut out,
            );
            next_nightly += 86_400;
        }
        advance(&mut host, &mut out, &mut area, &mut last_t, t);
        while next_sample <= t {
            out.usage.push((next_sample, host.usage()));
            next_sample += 3_600;
        }
        let arrived = match e {
            Event::Build {
                image, tag, layers, ..
            } => {
                let (_, need) = host.missing_bytes(layers);
                make_room(&mut host, contender, &future, t, need, image, &mut out);
                if host.usage() + need > host.capacity {
                    out.disk_full += 1;
                    false
                } else {
                    host.add_image(image, tag, layers, start + t);
                    true
                }
            }
            Event::Use { image, tag, .. } => {
                let mut arrived = false;
                if !host.images.contains_key(image) {
                    out.misses += 1;
                    let layers = built.get(image.as_str()).copied().unwrap_or_default();
                    let (carried, need) = host.missing_bytes(layers);
                    make_room(&mut host, contender, &future, t, need, image, &mut out);
                    if host.usage() + need > host.capacity {
                        out.disk_full += 1;
                    } else {
                        out.bytes_reloaded += carried;
                        host.add_image(image, tag, layers, start + t);
                        arrived = true;
                    }
                }
                if let Some(i) = host.images.get_mut(image) {
                    i.last_used = start + t;
                }
                arrived
            }
            // The references keep no leftovers: they never help a later job.
            Event::Container { .. } | Event::Volume { .. }
                if matches!(contender, Contender::Offline { .. } | Contender::Lru { .. }) =>
            {
                out.others_deleted += 1;
                false
            }
            Event::Container {
                id, image, bytes, ..
            } => {
                if host.usage() + bytes + host.overhead.container_bytes > host.capacity {
                    out.disk_full += 1;
                    false
                } else {
                    host.containers.push(Leftover {
                        id: id.clone(),
                        image: host.images.contains_key(image).then(|| image.clone()),
                        bytes: *bytes,
                        created: start + t,
                    });
                    true
                }
            }
            Event::Volume { id, bytes, .. } => {
                if host.usage() + bytes > host.capacity {
                    out.disk_full += 1;
                    false
                } else {
                    host.volumes.push(Leftover {
                        id: id.clone(),
                        image: None,
                        bytes: *bytes,
                        created: start + t,
                    });
                    true
                }
            }
        };
        if arrived {
            react(&mut host, contender, start + t, &mut pressure, &mut out);
        }
        out.peak_bytes = out.peak_bytes.max(host.usage());
    }
    advance(&mut host, &mut out, &mut area, &mut last_t, end);
    out.usage.push((end, host.usage()));
    out.mean_bytes = if end > 0 {
        (area / end as u128) as u64
    } else {
        host.usage()
    };
    out
}

fn advance(
    host: &mut Host,
    out: &mut Outcome,
    area: &mut u128,
    last: &mut Timestamp,
    t: Timestamp,
) {
    let usage = host.usage();
    out.peak_bytes = out.peak_bytes.max(usage);
    *area += usage as u128 * (t - *last).max(0) as u128;
    *last = t;
}

/// The offline reference evicts before an arrival; the others react after it.
fn make_room(
    host: &mut Host,
    contender: &Contender,
    future: &HashMap<&str, Vec<Timestamp>>,
    t: Timestamp,
    need: u64,
    arriving: &str,
    out: &mut Outcome,
) {
    let (budget_bytes, foresight) = match contender {
        Contender::Offline { budget_bytes } => (budget_bytes, true),
        Contender::Lru { budget_bytes } => (budget_bytes, false),
        _ => return,
    };
    out.others_deleted += (host.containers.len() + host.volumes.len()) as u64;
    host.containers.clear();
    host.volumes.clear();
    if host.usage() + need <= *budget_bytes {
        return;
    }
    let next_use = |id: &str| -> Timestamp {
        future
            .get(id)
            .and_then(|uses| {
                let i = uses.partition_point(|u| *u <= t);
                uses.get(i).copied()
            })
            .unwrap_or(Timestamp::MAX)
    };
    let mut candidates: Vec<(Timestamp, String)> = host
        .images
        .iter()
        .filter(|(id, _)| id.as_str() != arriving)
        .map(|(id, i)| {
            if foresight {
                (next_use(id), id.clone())
            } else {
                // Oldest use first: sorted like the farthest next use, by negated time.
                (-i.last_used, id.clone())
            }
        })
        .collect();
    // Farthest next use (or oldest use) first; never used again before anything else.
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, id) in candidates {
        if host.usage() + need <= *budget_bytes {
            break;
        }
        if host.remove_image(&id) {
            out.images_deleted += 1;
        }
    }
}

/// After an arrival.
fn react(
    host: &mut Host,
    contender: &Contender,
    now: Timestamp,
    pressure: &mut bool,
    out: &mut Outcome,
) {
    match contender {
        Contender::Dockgc(policy) => {
            let fs = host.filesystem();
            let fs_used = fs.used_bytes;
            let over_high = fs_used > policy.disk.high.used_bytes_on(&fs);
            let over_low = fs_used > policy.disk.low.used_bytes_on(&fs);
            *pressure = (*pressure || over_high) && over_low;
            if *pressure {
                let goal =
                    Goal::FreeBytes(fs_used.saturating_sub(policy.disk.low.used_bytes_on(&fs)));
                run_plan(host, policy, now, goal, out);
                *pressure = host.usage() > policy.disk.low.used_bytes_on(&fs);
            }
        }
        Contender::Docuum { threshold_bytes } => {
            if host.image_bytes() <= *threshold_bytes {
                return;
            }
            let mut lru: Vec<(Timestamp, String)> = host
                .images
                .iter()
                .map(|(id, i)| (i.last_used, id.clone()))
                .collect();
            lru.sort();
            for (_, id) in lru {
                if host.image_bytes() <= *threshold_bytes {
                    break;
                }
                if host.remove_image(&id) {
                    out.images_deleted += 1;
                }
            }
        }
        _ => {}
    }
}

/// At 02:00.
fn nightly(
    host: &mut Host,
    contender: &Contender,
    now: Timestamp,
    pressure: &mut bool,
    out: &mut Outcome,
) {
    match contender {
        Contender::Dockgc(policy) => {
            run_plan(host, policy, now, Goal::Watermarks, out);
            react(host, contender, now, pressure, out);
        }
        Contender::NightlyPruneAll => {
            out.others_deleted += host.containers.len() as u64;
            host.containers.clear();
            let ids: Vec<String> = host.images.keys().cloned().collect();
            for id in ids {
                if host.remove_image(&id) {
                    out.images_deleted += 1;
                }
            }
        }
        Contender::NightlyDangling => {
            let ids: Vec<String> = host
                .images
                .iter()
                .filter(|(_, i)| i.tags.is_empty())
                .map(|(id, _)| id.clone())
                .collect();
            for id in ids {
                if host.remove_image(&id) {
                    out.images_deleted += 1;
                }
            }
        }
        _ => {}
    }
}

fn run_plan(host: &mut Host, policy: &Policy, now: Timestamp, goal: Goal, out: &mut Outcome) {
    let (snapshot, history) = host.snapshot(now);
    let request = Request {
        goal,
        ..Request::default()
    };
    let decided = plan(&snapshot, &history, policy, &request);
    for step in &decided.steps {
        match step.kind {
            Kind::Image => {
                if host.remove_image(&step.id) {
                    out.images_deleted += 1;
                }
            }
            Kind::Container => {
                let before = host.containers.len();
                host.containers.retain(|c| c.id != step.id);
                out.others_deleted += (before - host.containers.len()) as u64;
            }
            Kind::Volume => {
                let before = host.volumes.len();
                host.volumes.retain(|v| v.id != step.id);
                out.others_deleted += (before - host.volumes.len()) as u64;
            }
            Kind::Network | Kind::BuildCache => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Watermark;
    use crate::trace::{generate, TraceParams};

    fn small() -> Trace {
        generate(&TraceParams {
            days: 3,
            repositories: 20,
            builds_per_day: 15,
            uses_per_day: 120,
            capacity_bytes: 1_500_000_000,
            ..TraceParams::default()
        })
    }

    fn dockgc(low: f64, high: f64) -> Contender {
        let mut p = Policy::default();
        p.keep.min_age = std::time::Duration::ZERO;
        p.keep.recent = std::time::Duration::ZERO;
        p.keep.per_repository = 0;
        p.disk.low = Watermark::UsedPercent(low);
        p.disk.high = Watermark::UsedPercent(high);
        Contender::Dockgc(Box::new(p))
    }

    /// Two builds sharing a base layer, a leftover container; usage is their content plus the
    /// engine's overhead for each layer present and each container, while what a miss
    /// re-loads is content only.
    #[test]
    fn the_engines_overhead_counts_in_usage_not_in_bytes_reloaded() {
        let text = r#"{"version":1,"kind":"header","capacity_bytes":100000000,"other_bytes":1000000,"start":0}
{"event":"build","t":0,"image":"a","tag":"r:1","layers":[{"id":"base","bytes":10000000},{"id":"a1","bytes":2000000}]}
{"event":"build","t":10,"image":"b","tag":"r:2","layers":[{"id":"base","bytes":10000000},{"id":"b1","bytes":3000000}]}
{"event":"container","t":20,"id":"c","image":"b","bytes":500000}
"#;
        let trace = Trace::parse(text).unwrap();
        // A trace without the field gets the measured overhead.
        assert_eq!(trace.header.overhead, Overhead::MEASURED);
        let content = 1_000_000 + 15_000_000 + 500_000;
        let measured = simulate(&trace, &Contender::Nothing);
        let o = Overhead::MEASURED;
        assert_eq!(
            measured.peak_bytes,
            content + 3 * o.layer_bytes + o.container_bytes
        );
        let mut bare = trace.clone();
        bare.header.overhead = Overhead::NONE;
        assert_eq!(simulate(&bare, &Contender::Nothing).peak_bytes, content);

        // Every image evicted at 02:00, then one job: the miss re-loads content only.
        let mut again = trace.clone();
        again.events.pop();
        again.events.push(Event::Use {
            t: 3 * 3_600,
            image: "a".into(),
            tag: "r:1".into(),
        });
        let pruned = simulate(&again, &Contender::NightlyPruneAll);
        assert_eq!((pruned.misses, pruned.bytes_reloaded), (1, 12_000_000));
    }

    #[test]
    fn the_offline_reference_never_reloads_more_than_the_others_at_its_budget() {
        let trace = small();
        let budget = trace.header.capacity_bytes * 70 / 100;
        let offline = simulate(
            &trace,
            &Contender::Offline {
                budget_bytes: budget,
            },
        );
        assert!(offline.peak_bytes <= budget, "{offline:?}");
        assert_eq!(offline.disk_full, 0);
        let lru = simulate(
            &trace,
            &Contender::Lru {
                budget_bytes: budget,
            },
        );
        assert!(lru.peak_bytes <= budget);
        assert!(
            offline.bytes_reloaded <= lru.bytes_reloaded,
            "{offline:?} {lru:?}"
        );
        let prune_all = simulate(&trace, &Contender::NightlyPruneAll);
        assert!(prune_all.misses > offline.misses);
    }

    #[test]
    fn no_cleaning_fills_the_disk_and_dockgc_does_not() {
        let trace = small();
        let nothing = simulate(&trace, &Contender::Nothing);
        // Builds that do not fit fail; the jobs wanting their images then miss too.
        assert!(nothing.disk_full > 0, "{nothing:?}");
        let governed = simulate(&trace, &dockgc(60.0, 75.0));
        let mut shown = governed.clone();
        shown.usage.truncate(30);
        assert_eq!(governed.disk_full, 0, "{shown:?}");
        assert!(governed.peak_bytes <= trace.header.capacity_bytes);
        assert!(governed.images_deleted > 0);
    }

    #[test]
    fn replays_are_deterministic() {
        let trace = small();
        assert_eq!(
            simulate(&trace, &dockgc(60.0, 75.0)),
            simulate(&trace, &dockgc(60.0, 75.0))
        );
    }
}
