//! The planner: from a snapshot, a history and a policy to an ordered [`Plan`].
//!
//! [`plan`] is deterministic and infallible. Every step carries the exact marginal bytes it
//! frees given the steps before it; every candidate not chosen is listed with why.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::graph::{Freed, LayerGraph};
use crate::history::History;
use crate::model::{
    format_age, format_bytes, Container, Filesystem, Image, NetworkKind, Snapshot, Timestamp,
    VolumeKind,
};
use crate::policy::{repository_of, Policy, Removal, UnderPressure, UnusedImages};

/// Version of the plan JSON format (see `docs/plan-format.md`).
pub const PLAN_VERSION: u32 = 1;

/// What a plan should achieve beyond the routine rules.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// Routine rules, plus eviction down to the low watermark when usage is above high.
    Watermarks,
    /// Free at least this many bytes on disk.
    FreeBytes(u64),
    /// Bring the filesystem's used percentage down to this.
    UsedPercent(f64),
}

/// Which objects the plan may consider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Everything the policy's rules select.
    Policy,
    /// Only these images (IDs, ID prefixes or tags), each still under every safety rule.
    Images(Vec<String>),
}

/// Input of [`plan`] besides the world and the policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// What to achieve.
    pub goal: Goal,
    /// What may be considered.
    pub selection: Selection,
    /// Measured-over-predicted ratio of disk bytes from earlier deletions; scales estimates.
    pub disk_correction: f64,
}

impl Default for Request {
    fn default() -> Self {
        Self {
            goal: Goal::Watermarks,
            selection: Selection::Policy,
            disk_correction: 1.0,
        }
    }
}

/// Kind of object a step deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A container.
    Container,
    /// An image (all its tags).
    Image,
    /// A volume.
    Volume,
    /// A network.
    Network,
    /// BuildKit cache.
    BuildCache,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Container => "container",
            Self::Image => "image",
            Self::Volume => "volume",
            Self::Network => "network",
            Self::BuildCache => "build_cache",
        })
    }
}

/// Why a step deletes its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A container stopped longer than its grace period.
    StoppedContainer,
    /// An untagged image older than its grace period.
    DanglingImage,
    /// An unused image removed by `images.unused = "remove"`.
    UnusedImage,
    /// An unused image evicted, least recently used first, to reach the disk target.
    DiskPressure,
    /// An image the user asked to remove (`--image`), checked by every safety rule.
    Requested,
    /// An unused anonymous volume older than its grace period.
    AnonymousVolume,
    /// An unused named volume, with `volumes.named = "remove"`.
    NamedVolume,
    /// A custom network no container uses.
    UnusedNetwork,
    /// BuildKit cache older than `max_age` or beyond `keep`.
    BuildCache,
}

impl Reason {
    /// The name in JSON, the audit trail, logs and metric labels (`disk_pressure`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StoppedContainer => "stopped_container",
            Self::DanglingImage => "dangling_image",
            Self::UnusedImage => "unused_image",
            Self::DiskPressure => "disk_pressure",
            Self::Requested => "requested",
            Self::AnonymousVolume => "anonymous_volume",
            Self::NamedVolume => "named_volume",
            Self::UnusedNetwork => "unused_network",
            Self::BuildCache => "build_cache",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::StoppedContainer => "stopped container",
            Self::DanglingImage => "dangling image",
            Self::UnusedImage => "unused image",
            Self::DiskPressure => "disk pressure (least recently used)",
            Self::Requested => "requested",
            Self::AnonymousVolume => "unused anonymous volume",
            Self::NamedVolume => "unused named volume",
            Self::UnusedNetwork => "unused network",
            Self::BuildCache => "build cache",
        })
    }
}

/// One deletion in a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Kind of object.
    pub kind: Kind,
    /// Object ID (image/container/network ID, volume name, `build-cache`).
    pub id: String,
    /// Name a person recognises.
    pub name: String,
    /// Image tags the step removes (images only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Bytes freed in Docker's accounting, given the steps before it.
    pub bytes: u64,
    /// Bytes predicted to be freed on disk, given the steps before it.
    pub disk_bytes: u64,
    /// Why.
    pub reason: Reason,
    /// The policy key that chose it.
    pub rule: String,
    /// Effective last use (images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<Timestamp>,
    /// One line of detail for people.
    pub detail: String,
}

/// Why a candidate is not deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum SkipReason {
    /// Used by containers that stay.
    InUse {
        /// Names of the containers.
        containers: Vec<String>,
    },
    /// The container is running (or paused, restarting).
    Running,
    /// A keep rule protects it.
    Protected {
        /// The matching rule (`keep.images = "miniconda:*"`).
        rule: String,
    },
    /// Arrived or created too recently.
    TooYoung {
        /// Age in seconds.
        age: i64,
        /// Required age in seconds.
        min: i64,
        /// The rule.
        rule: String,
    },
    /// Used too recently.
    RecentlyUsed {
        /// Seconds since last use (including images built on it).
        since: i64,
        /// `keep.recent` in seconds.
        recent: i64,
    },
    /// Among the N most recently used tags of its repository.
    KeptPerRepository {
        /// The repository.
        repository: String,
        /// N.
        keep: u32,
    },
    /// Images built on it stay (deleting it would only untag it).
    HasDescendants {
        /// How many images are built on it and stay.
        count: usize,
    },
    /// Deleting it frees nothing now: every layer is shared with images that stay.
    FreesNothing {
        /// The first few images that keep its layers.
        shared_with: Vec<String>,
        /// How many images keep its layers.
        count: usize,
    },
    /// The target is reached without it.
    TargetReached,
    /// No disk pressure: unused images are evicted only above the high watermark or toward a goal.
    NoPressure,
    /// The policy keeps this class of objects.
    PolicyKeeps {
        /// The rule.
        rule: String,
    },
    /// A named volume (deleted only with `volumes.named = "remove"`).
    NamedVolume,
    /// A predefined network.
    Predefined,
    /// Build cache within its keep size.
    WithinKeep,
    /// The reference named no object in the snapshot.
    NotFound,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InUse { containers } => write!(f, "in use by {}", list(containers)),
            Self::Running => f.write_str("running"),
            Self::Protected { rule } => write!(f, "protected by {rule}"),
            Self::TooYoung { age, min, rule } => write!(
                f,
                "too young: {} old, {rule} is {}",
                format_age(*age),
                format_age(*min)
            ),
            Self::RecentlyUsed { since, recent } => write!(
                f,
                "used {} ago, keep.recent is {}",
                format_age(*since),
                format_age(*recent)
            ),
            Self::KeptPerRepository { repository, keep } => write!(
                f,
                "one of the {keep} most recently used tags of {repository} (keep.per_repository)"
            ),
            Self::HasDescendants { count } => write!(f, "{count} image(s) built on it stay"),
            Self::FreesNothing { shared_with, count } => {
                write!(
                    f,
                    "frees nothing: its layers stay with {}",
                    shared_with.join(", ")
                )?;
                match count.saturating_sub(shared_with.len()) {
                    0 => Ok(()),
                    more => write!(f, " and {more} more"),
                }
            }
            Self::TargetReached => f.write_str("target reached without it"),
            Self::NoPressure => f.write_str("no disk pressure (usage below disk.high)"),
            Self::PolicyKeeps { rule } => write!(f, "policy keeps it ({rule})"),
            Self::NamedVolume => f.write_str("named volume (volumes.named = \"keep\")"),
            Self::Predefined => f.write_str("predefined network"),
            Self::WithinKeep => f.write_str("within build_cache.keep"),
            Self::NotFound => f.write_str("no such object"),
        }
    }
}

fn list(items: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut text = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        text.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    text
}

/// A candidate not chosen, with why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    /// Kind of object.
    pub kind: Kind,
    /// Object ID.
    pub id: String,
    /// Name a person recognises.
    pub name: String,
    /// Why it stays.
    pub reason: SkipReason,
}

/// Where a plan leaves the filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Projection {
    /// Used bytes.
    pub used_bytes: u64,
    /// Available bytes.
    pub available_bytes: u64,
    /// Used percentage.
    pub used_percent: f64,
}

impl Projection {
    fn of(fs: &Filesystem, freed_disk_bytes: u64) -> Self {
        let used = fs.used_bytes.saturating_sub(freed_disk_bytes);
        let capacity = fs.capacity_bytes();
        Self {
            used_bytes: used,
            available_bytes: capacity.saturating_sub(used),
            used_percent: if capacity == 0 {
                0.0
            } else {
                used as f64 * 100.0 / capacity as f64
            },
        }
    }
}

/// The goal a plan works toward, in disk bytes to free.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// What set the target (`disk.low = 70%`, `--free 20GB`).
    pub rule: String,
    /// Disk bytes that must be freed to reach it.
    pub need_disk_bytes: u64,
    /// Inodes that must be freed to reach it.
    #[serde(default)]
    pub need_inodes: u64,
    /// Used bytes at which the target is met, when the filesystem is known.
    #[serde(default)]
    pub used_bytes: Option<u64>,
}

/// Whether the plan meets its target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TargetStatus {
    /// No target: routine rules only.
    NoTarget,
    /// The plan is predicted to reach the target.
    Reached,
    /// The policy allows too little to reach it.
    Unreachable {
        /// Disk bytes still missing.
        short_disk_bytes: u64,
    },
}

/// An ordered list of deletions and the candidates left alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Format version ([`PLAN_VERSION`]).
    pub version: u32,
    /// The snapshot time the plan was made for.
    pub taken_at: Timestamp,
    /// Sum of the steps' bytes (Docker's accounting).
    pub reclaim_bytes: u64,
    /// Sum of the steps' predicted disk bytes.
    pub reclaim_disk_bytes: u64,
    /// The filesystem before, when known.
    pub filesystem: Option<Filesystem>,
    /// The filesystem predicted after, when known.
    pub projected: Option<Projection>,
    /// The target, if any.
    pub target: Option<Target>,
    /// Whether the target is reached.
    pub target_status: TargetStatus,
    /// Deletions, in order.
    pub steps: Vec<Step>,
    /// Candidates not chosen, with why.
    pub skipped: Vec<Skipped>,
}

/// Facts about images the planner and explain share.
pub(crate) struct ImageFacts {
    pub graph: LayerGraph,
    pub last_use: Vec<Timestamp>,
    pub effective_last_use: Vec<Timestamp>,
    pub first_seen: Vec<Timestamp>,
}

impl ImageFacts {
    pub fn new(snapshot: &Snapshot, history: &History) -> Self {
        let graph = LayerGraph::new(snapshot);
        let now = snapshot.taken_at;
        let uses: Vec<_> = snapshot
            .images
            .iter()
            .map(|i| history.use_of(&i.id, now))
            .collect();
        let last_use: Vec<_> = uses.iter().map(|u| u.last_used).collect();
        let effective_last_use = graph.effective_last_use(&last_use);
        Self {
            graph,
            last_use,
            effective_last_use,
            first_seen: uses.iter().map(|u| u.first_seen).collect(),
        }
    }
}

/// Decides what to delete. Deterministic and infallible.
pub fn plan(snapshot: &Snapshot, history: &History, policy: &Policy, request: &Request) -> Plan {
    let facts = ImageFacts::new(snapshot, history);
    Planner::new(snapshot, &facts, policy, request).run()
}

struct Planner<'a> {
    s: &'a Snapshot,
    policy: &'a Policy,
    request: &'a Request,
    facts: &'a ImageFacts,
    now: Timestamp,
    steps: Vec<Step>,
    skipped: Vec<Skipped>,
    removed_containers: HashSet<&'a str>,
    removed_images: Vec<bool>,
    /// Containers by the image they were created from.
    containers_by_image: HashMap<&'a str, Vec<&'a Container>>,
}

/// The rule an eviction names when a soft keep yielded to the disk target.
fn yielded_rule(kept: &SkipReason) -> String {
    let keep = match kept {
        SkipReason::KeptPerRepository { .. } => "keep.per_repository",
        _ => "keep.recent",
    };
    format!("images.unused; {keep} yielded (keep.under_pressure = \"yield\")")
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl<'a> Planner<'a> {
    fn new(
        s: &'a Snapshot,
        facts: &'a ImageFacts,
        policy: &'a Policy,
        request: &'a Request,
    ) -> Self {
        Self {
            s,
            policy,
            request,
            facts,
            now: s.taken_at,
            steps: Vec::new(),
            skipped: Vec::new(),
            removed_containers: HashSet::new(),
            removed_images: vec![false; s.images.len()],
            containers_by_image: s.containers.iter().fold(HashMap::new(), |mut m, c| {
                m.entry(c.image_id.as_str())
                    .or_insert_with(Vec::new)
                    .push(c);
                m
            }),
        }
    }

    fn disk(&self, predicted: u64) -> u64 {
        (predicted as f64 * self.request.disk_correction.max(0.0)).round() as u64
    }

    fn run(mut self) -> Plan {
        let facts = self.facts;
        let mut tally = facts.graph.tally();
        match &self.request.selection {
            Selection::Policy => {
                self.plan_containers();
                self.plan_dangling_images(&mut tally);
                self.plan_unused_images(&mut tally);
            }
            Selection::Images(refs) => {
                let refs = refs.clone();
                self.plan_requested_images(&refs, &mut tally);
            }
        }
        if self.request.selection == Selection::Policy {
            self.plan_volumes();
            self.plan_networks();
            self.plan_build_cache();
        }
        self.finish()
    }

    fn skip(&mut self, kind: Kind, id: &str, name: String, reason: SkipReason) {
        self.skipped.push(Skipped {
            kind,
            id: id.to_string(),
            name,
            reason,
        });
    }

    fn age_guard(
        &self,
        since: Timestamp,
        min: std::time::Duration,
        rule: &str,
    ) -> Option<SkipReason> {
        let age = self.now - since;
        (age < secs(min)).then(|| SkipReason::TooYoung {
            age,
            min: secs(min),
            rule: rule.to_string(),
        })
    }

    fn label_guard(&self, labels: &crate::model::Labels) -> Option<SkipReason> {
        self.policy
            .keep
            .labels
            .iter()
            .find(|p| p.matches(labels))
            .map(|p| SkipReason::Protected {
                rule: format!("keep.labels = \"{p}\""),
            })
    }

    // ----- containers -----

    fn plan_containers(&mut self) {
        for c in &self.s.containers {
            let name = c.display_name();
            if !c.state.is_stopped() {
                self.skip(Kind::Container, &c.id, name, SkipReason::Running);
                continue;
            }
            if self.policy.containers.stopped == Removal::Keep {
                let rule = "containers.stopped = \"keep\"".into();
                self.skip(
                    Kind::Container,
                    &c.id,
                    name,
                    SkipReason::PolicyKeeps { rule },
                );
                continue;
            }
            let guard = self.label_guard(&c.labels).or_else(|| {
                self.age_guard(
                    c.last_activity(),
                    self.policy.containers.stopped_after,
                    "containers.stopped_after",
                )
            });
            if let Some(reason) = guard {
                self.skip(Kind::Container, &c.id, name, reason);
                continue;
            }
            let bytes = c.size_rw.unwrap_or(0);
            self.removed_containers.insert(c.id.as_str());
            self.steps.push(Step {
                kind: Kind::Container,
                id: c.id.clone(),
                name,
                tags: Vec::new(),
                bytes,
                disk_bytes: self.disk(
                    c.disk_bytes
                        .unwrap_or_else(|| crate::graph::estimate_layer_disk_bytes(bytes)),
                ),
                reason: Reason::StoppedContainer,
                rule: "containers.stopped_after".into(),
                last_used: Some(c.last_activity()),
                detail: format!(
                    "{:?} {} ago, image {}",
                    c.state,
                    format_age(self.now - c.last_activity()),
                    c.image
                )
                .to_lowercase(),
            });
        }
    }

    fn containers_keeping(&self, pred: impl Fn(&Container) -> bool) -> Vec<String> {
        self.s
            .containers
            .iter()
            .filter(|c| !self.removed_containers.contains(c.id.as_str()) && pred(c))
            .map(Container::display_name)
            .collect()
    }

    // ----- images -----

    /// Safety rules every image deletion obeys, whatever chose it.
    fn image_guard(&self, i: usize) -> Option<SkipReason> {
        let image = &self.s.images[i];
        let users: Vec<String> = self
            .containers_by_image
            .get(image.id.as_str())
            .into_iter()
            .flatten()
            .filter(|c| !self.removed_containers.contains(c.id.as_str()))
            .map(|c| c.display_name())
            .collect();
        if !users.is_empty() {
            return Some(SkipReason::InUse { containers: users });
        }
        if let Some(p) = self
            .policy
            .keep
            .images
            .iter()
            .find(|p| p.matches_image(image))
        {
            return Some(SkipReason::Protected {
                rule: format!("keep.images = \"{}\"", p.as_str()),
            });
        }
        if let Some(r) = self.label_guard(&image.labels) {
            return Some(r);
        }
        self.age_guard(
            self.facts.first_seen[i],
            self.policy.keep.min_age,
            "keep.min_age",
        )
    }

    /// Rules for evicting tagged images: recency and per-repository keeps.
    fn recency_guard(&self, i: usize, kept_tags: &HashMap<&str, String>) -> Option<SkipReason> {
        let since = self.now - self.facts.effective_last_use[i];
        if since < secs(self.policy.keep.recent) {
            return Some(SkipReason::RecentlyUsed {
                since,
                recent: secs(self.policy.keep.recent),
            });
        }
        self.s.images[i].tags.iter().find_map(|t| {
            kept_tags
                .get(t.as_str())
                .map(|repository| SkipReason::KeptPerRepository {
                    repository: repository.clone(),
                    keep: self.policy.keep.per_repository,
                })
        })
    }

    fn live_descendants(&self, i: usize) -> usize {
        self.facts.graph.descendants[i]
            .iter()
            .filter(|&&d| !self.removed_images[d])
            .count()
    }

    fn image_step(&mut self, i: usize, freed: Freed, reason: Reason, rule: &str) {
        let image = &self.s.images[i];
        self.removed_images[i] = true;
        let metadata = image.metadata_disk_bytes.unwrap_or(4096);
        let step = Step {
            kind: Kind::Image,
            id: image.id.clone(),
            name: image.display_name(),
            tags: image.tags.clone(),
            bytes: freed.bytes,
            disk_bytes: self.disk(freed.disk_bytes + metadata),
            reason,
            rule: rule.to_string(),
            last_used: Some(self.facts.effective_last_use[i]),
            detail: format!(
                "{} layer(s) freed, last used {} ago",
                freed.layers,
                format_age(self.now - self.facts.effective_last_use[i])
            ),
        };
        self.steps.push(step);
    }

    fn plan_dangling_images(&mut self, tally: &mut crate::graph::Tally<'_>) {
        for i in self.lru_order() {
            let image = &self.s.images[i];
            if !image.is_dangling() {
                continue;
            }
            let name = image.display_name();
            let id = image.id.clone();
            if self.policy.images.dangling == Removal::Keep {
                let rule = "images.dangling = \"keep\"".into();
                self.skip(Kind::Image, &id, name, SkipReason::PolicyKeeps { rule });
                continue;
            }
            let guard = self.image_guard(i).or_else(|| {
                self.age_guard(
                    self.facts.first_seen[i],
                    self.policy.images.dangling_after,
                    "images.dangling_after",
                )
            });
            let guard = guard.or_else(|| match self.live_descendants(i) {
                0 => None,
                count => Some(SkipReason::HasDescendants { count }),
            });
            if let Some(reason) = guard {
                self.skip(Kind::Image, &id, name, reason);
                continue;
            }
            let freed = tally.remove(i);
            self.image_step(i, freed, Reason::DanglingImage, "images.dangling_after");
        }
    }

    /// Images oldest effective use first; children before their parents on ties.
    fn lru_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.s.images.len()).collect();
        order.sort_by(|&a, &b| {
            self.facts.effective_last_use[a]
                .cmp(&self.facts.effective_last_use[b])
                .then(self.facts.last_use[a].cmp(&self.facts.last_use[b]))
                .then(
                    self.facts.graph.image_layers[b]
                        .len()
                        .cmp(&self.facts.graph.image_layers[a].len()),
                )
                .then(self.s.images[a].id.cmp(&self.s.images[b].id))
        });
        order
    }

    /// Tags protected by `keep.per_repository`, mapped to their repository.
    fn kept_tags(&self) -> HashMap<&'a str, String> {
        let keep = self.policy.keep.per_repository as usize;
        let mut by_repo: BTreeMap<&str, Vec<(usize, &str)>> = BTreeMap::new();
        for (i, image) in self.s.images.iter().enumerate() {
            for t in &image.tags {
                by_repo.entry(repository_of(t)).or_default().push((i, t));
            }
        }
        let mut kept = HashMap::new();
        for (repo, mut tags) in by_repo {
            tags.sort_by(|a, b| {
                self.facts.effective_last_use[b.0]
                    .cmp(&self.facts.effective_last_use[a.0])
                    .then(self.facts.first_seen[b.0].cmp(&self.facts.first_seen[a.0]))
                    .then(a.1.cmp(b.1))
            });
            for (_, t) in tags.into_iter().take(keep) {
                kept.insert(t, repo.to_string());
            }
        }
        kept
    }

    fn target(&self) -> Option<Target> {
        let fs = self.s.filesystem;
        let (rule, need_disk_bytes, used_bytes, need_inodes) = match self.request.goal {
            Goal::FreeBytes(n) => (
                format!("--free {}", format_bytes(n)),
                n,
                fs.map(|f| f.used_bytes.saturating_sub(n)),
                0,
            ),
            Goal::UsedPercent(p) => {
                let fs = fs?;
                let goal = crate::policy::Watermark::UsedPercent(p).used_bytes_on(&fs);
                (
                    format!("--target-usage {p}%"),
                    fs.used_bytes.saturating_sub(goal),
                    Some(goal),
                    0,
                )
            }
            Goal::Watermarks => {
                let fs = fs?;
                let disk = &self.policy.disk;
                let over_bytes = fs.used_bytes > disk.high.used_bytes_on(&fs);
                let over_inodes = fs.used_inodes_percent() > disk.inodes_high;
                if !over_bytes && !over_inodes {
                    return None;
                }
                let goal = disk.low.used_bytes_on(&fs);
                let inode_goal = (fs.total_inodes as f64 * disk.inodes_low / 100.0) as u64;
                let need_inodes = if over_inodes {
                    fs.used_inodes().saturating_sub(inode_goal)
                } else {
                    0
                };
                let rule = if over_bytes {
                    format!("disk.low = {}", disk.low)
                } else {
                    format!("disk.inodes_low = {}%", disk.inodes_low)
                };
                let need = if over_bytes {
                    fs.used_bytes.saturating_sub(goal)
                } else {
                    0
                };
                (rule, need, Some(goal), need_inodes)
            }
        };
        Some(Target {
            rule,
            need_disk_bytes,
            need_inodes,
            used_bytes,
        })
    }

    fn plan_unused_images(&mut self, tally: &mut crate::graph::Tally<'_>) {
        let target = self.target();
        let kept = self.kept_tags();
        // Soft keeps yield only toward a target, after every other candidate.
        let yielding = target.is_some()
            && self.policy.images.unused == UnusedImages::Lru
            && self.policy.keep.under_pressure == UnderPressure::Yield;
        let mut candidates = Vec::new();
        let mut held = Vec::new();
        for i in self.lru_order() {
            let image = &self.s.images[i];
            if image.is_dangling() {
                continue; // handled by the dangling rule
            }
            let name = image.display_name();
            let id = image.id.clone();
            if let Some(reason) = self.image_guard(i) {
                self.skip(Kind::Image, &id, name, reason);
                continue;
            }
            if self.policy.images.unused == UnusedImages::Keep {
                let rule = "images.unused = \"keep\"".into();
                self.skip(Kind::Image, &id, name, SkipReason::PolicyKeeps { rule });
                continue;
            }
            match self.recency_guard(i, &kept) {
                Some(reason) if yielding => held.push((i, reason)),
                Some(reason) => self.skip(Kind::Image, &id, name, reason),
                None => candidates.push(i),
            }
        }
        match (self.policy.images.unused, target) {
            (UnusedImages::Remove, _) => self.evict(
                candidates,
                Vec::new(),
                tally,
                None,
                Reason::UnusedImage,
                "images.unused",
            ),
            (_, Some(target)) => {
                let goal = (target.need_disk_bytes, target.need_inodes);
                self.evict(
                    candidates,
                    held,
                    tally,
                    Some(goal),
                    Reason::DiskPressure,
                    "images.unused",
                )
            }
            (_, None) => {
                for i in candidates {
                    let image = &self.s.images[i];
                    self.skip(
                        Kind::Image,
                        &image.id.clone(),
                        image.display_name(),
                        SkipReason::NoPressure,
                    );
                }
            }
        }
    }

    /// Least-recently-used eviction. An image that frees nothing now waits until the images
    /// sharing its layers are gone, so a base is never untagged while its children remain.
    /// `held` images (kept by `keep.recent` or `keep.per_repository`, least recently used
    /// first) come after every candidate; those not needed keep their reason.
    fn evict(
        &mut self,
        mut candidates: Vec<usize>,
        held: Vec<(usize, SkipReason)>,
        tally: &mut crate::graph::Tally<'_>,
        goal: Option<(u64, u64)>,
        reason: Reason,
        rule: &str,
    ) {
        let mut held: HashMap<usize, SkipReason> = held
            .into_iter()
            .map(|(i, why)| {
                candidates.push(i);
                (i, why)
            })
            .collect();
        let mut freed_disk: u64 = self.steps.iter().map(|s| s.disk_bytes).sum();
        let mut freed_inodes: u64 = 0;
        let reached = |disk: u64, inodes: u64| {
            goal.is_some_and(|(need_disk, need_inodes)| disk >= need_disk && inodes >= need_inodes)
        };
        let graph = &self.facts.graph;
        let rank: HashMap<usize, usize> = candidates
            .iter()
            .enumerate()
            .map(|(r, &i)| (i, r))
            .collect();
        // Images that free nothing now, and those of them whose sharers have since gone.
        let mut waiting: HashSet<usize> = HashSet::new();
        let mut ready: BTreeSet<(usize, usize)> = BTreeSet::new();
        let mut left: Vec<usize> = Vec::new();
        let mut queue = candidates.into_iter();
        loop {
            if reached(freed_disk, freed_inodes) {
                left.extend(ready.iter().map(|&(_, i)| i));
                let mut rest: Vec<usize> = waiting.drain().collect();
                rest.sort_by_key(|i| rank[i]);
                left.extend(rest);
                left.extend(queue.by_ref());
                break;
            }
            // A waiting image whose sharers are now gone goes first, in LRU order.
            let next = match ready.pop_first() {
                Some((_, i)) => i,
                None => match queue.next() {
                    Some(i) => i,
                    None => break,
                },
            };
            if tally.peek(next).layers == 0 && !graph.image_layers[next].is_empty() {
                waiting.insert(next);
                continue;
            }
            let freed = tally.remove(next);
            for &l in &graph.image_layers[next] {
                // A layer now held by one image: if that image waits, it frees bytes now.
                if tally.remaining(l) == 1 {
                    for &u in &graph.layer_users[l] {
                        if waiting.remove(&u) {
                            ready.insert((rank[&u], u));
                        }
                    }
                }
            }
            match held.remove(&next) {
                Some(kept) => {
                    self.image_step(next, freed, reason, &yielded_rule(&kept));
                }
                None => self.image_step(next, freed, reason, rule),
            }
            freed_disk += self.steps.last().map_or(0, |s| s.disk_bytes);
            freed_inodes += freed.inodes;
        }
        let mut waiting: Vec<usize> = waiting.into_iter().collect();
        waiting.sort_by_key(|i| rank[i]);
        for i in waiting {
            let why = held.remove(&i).unwrap_or_else(|| {
                let (shared_with, count) = self.sharers(i);
                SkipReason::FreesNothing { shared_with, count }
            });
            let image = &self.s.images[i];
            self.skip(Kind::Image, &image.id.clone(), image.display_name(), why);
        }
        for i in left {
            let why = held.remove(&i).unwrap_or(SkipReason::TargetReached);
            let image = &self.s.images[i];
            self.skip(Kind::Image, &image.id.clone(), image.display_name(), why);
        }
    }

    /// Images that stay and keep the layers of image `i`: the first few names, and how many.
    fn sharers(&self, i: usize) -> (Vec<String>, usize) {
        const NAMED: usize = 5;
        let mut seen = HashSet::new();
        let mut names = Vec::new();
        for &l in &self.facts.graph.image_layers[i] {
            for &u in &self.facts.graph.layer_users[l] {
                if u != i && !self.removed_images[u] && seen.insert(u) && names.len() < NAMED {
                    names.push(self.s.images[u].display_name());
                }
            }
        }
        (names, seen.len())
    }

    fn plan_requested_images(&mut self, refs: &[String], tally: &mut crate::graph::Tally<'_>) {
        let mut seen = HashSet::new();
        for r in refs {
            let Some(i) = find_image(self.s, r) else {
                self.skip(Kind::Image, r, r.clone(), SkipReason::NotFound);
                continue;
            };
            if !seen.insert(i) {
                continue;
            }
            let image = &self.s.images[i];
            if let Some(reason) = self.image_guard(i) {
                self.skip(Kind::Image, &image.id.clone(), image.display_name(), reason);
                continue;
            }
            let freed = tally.remove(i);
            self.image_step(i, freed, Reason::Requested, "--image");
        }
    }

    // ----- volumes, networks, build cache -----

    fn plan_volumes(&mut self) {
        for v in &self.s.volumes {
            let users = self.containers_keeping(|c| c.volumes.contains(&v.name));
            let (removal, after, rule, reason) = match v.kind {
                VolumeKind::Anonymous => (
                    self.policy.volumes.anonymous,
                    self.policy.volumes.anonymous_after,
                    "volumes.anonymous_after",
                    Reason::AnonymousVolume,
                ),
                VolumeKind::Named => (
                    self.policy.volumes.named,
                    self.policy.volumes.named_after,
                    "volumes.named_after",
                    Reason::NamedVolume,
                ),
            };
            let guard = if !users.is_empty() {
                Some(SkipReason::InUse { containers: users })
            } else if removal == Removal::Keep {
                Some(match v.kind {
                    VolumeKind::Named => SkipReason::NamedVolume,
                    VolumeKind::Anonymous => SkipReason::PolicyKeeps {
                        rule: "volumes.anonymous = \"keep\"".into(),
                    },
                })
            } else {
                self.label_guard(&v.labels).or_else(|| {
                    let created = v.created.unwrap_or(self.now);
                    self.age_guard(created, after, rule).or_else(|| {
                        self.age_guard(created, self.policy.keep.min_age, "keep.min_age")
                    })
                })
            };
            // Anonymous volumes have 64-digit generated names: show them short, like Docker.
            let name = match v.kind {
                VolumeKind::Anonymous => crate::model::short_id(&v.name).to_string(),
                VolumeKind::Named => v.name.clone(),
            };
            if let Some(reason) = guard {
                self.skip(Kind::Volume, &v.name, name, reason);
                continue;
            }
            let bytes = v.bytes.unwrap_or(0);
            self.steps.push(Step {
                kind: Kind::Volume,
                id: v.name.clone(),
                name,
                tags: Vec::new(),
                bytes,
                disk_bytes: self.disk(crate::graph::estimate_layer_disk_bytes(bytes)),
                reason,
                rule: rule.into(),
                last_used: None,
                detail: format!(
                    "{} volume, driver {}",
                    format!("{:?}", v.kind).to_lowercase(),
                    v.driver
                ),
            });
        }
    }

    fn plan_networks(&mut self) {
        for n in &self.s.networks {
            let users = self.containers_keeping(|c| c.networks.contains(&n.name));
            let guard = if n.kind == NetworkKind::Predefined {
                Some(SkipReason::Predefined)
            } else if !users.is_empty() {
                Some(SkipReason::InUse { containers: users })
            } else if self.policy.networks.unused == Removal::Keep {
                Some(SkipReason::PolicyKeeps {
                    rule: "networks.unused = \"keep\"".into(),
                })
            } else {
                self.label_guard(&n.labels).or_else(|| {
                    self.age_guard(
                        n.created.unwrap_or(self.now),
                        self.policy.keep.min_age,
                        "keep.min_age",
                    )
                })
            };
            if let Some(reason) = guard {
                if n.kind == NetworkKind::Custom {
                    self.skip(Kind::Network, &n.id, n.name.clone(), reason);
                }
                continue;
            }
            self.steps.push(Step {
                kind: Kind::Network,
                id: n.id.clone(),
                name: n.name.clone(),
                tags: Vec::new(),
                bytes: 0,
                disk_bytes: 0,
                reason: Reason::UnusedNetwork,
                rule: "networks.unused".into(),
                last_used: None,
                detail: format!("driver {}", n.driver),
            });
        }
    }

    fn plan_build_cache(&mut self) {
        let policy = &self.policy.build_cache;
        let mut records: Vec<_> = self
            .s
            .build_cache
            .iter()
            .filter(|r| r.is_reclaimable())
            .collect();
        if records.is_empty() {
            return;
        }
        if policy.prune == Removal::Keep {
            let rule = "build_cache.prune = \"keep\"".into();
            self.skip(
                Kind::BuildCache,
                "build-cache",
                "build cache".into(),
                SkipReason::PolicyKeeps { rule },
            );
            return;
        }
        // Oldest use first, as BuildKit's own pruning goes.
        records.sort_by_key(|r| (r.last_used.or(r.created).unwrap_or(0), r.id.clone()));
        let max_age = secs(policy.max_age);
        let total: u64 = records.iter().map(|r| r.bytes).sum();
        let mut freed = 0u64;
        let mut count = 0usize;
        for r in &records {
            let used = r.last_used.or(r.created).unwrap_or(self.now);
            let too_old = self.now - used >= max_age;
            let over_keep = total - freed > policy.keep_bytes;
            if too_old || over_keep {
                freed += r.bytes;
                count += 1;
            }
        }
        if count == 0 {
            self.skip(
                Kind::BuildCache,
                "build-cache",
                "build cache".into(),
                SkipReason::WithinKeep,
            );
            return;
        }
        self.steps.push(Step {
            kind: Kind::BuildCache,
            id: "build-cache".into(),
            name: "build cache".into(),
            tags: Vec::new(),
            bytes: freed,
            disk_bytes: self.disk(freed),
            reason: Reason::BuildCache,
            rule: "build_cache.keep, build_cache.max_age".into(),
            last_used: None,
            detail: format!(
                "{count} of {} reclaimable record(s), keep {}",
                records.len(),
                format_bytes(policy.keep_bytes)
            ),
        });
    }

    fn finish(self) -> Plan {
        let reclaim_bytes = self.steps.iter().map(|s| s.bytes).sum();
        let reclaim_disk_bytes: u64 = self.steps.iter().map(|s| s.disk_bytes).sum();
        let target = if self.request.selection == Selection::Policy {
            self.target()
        } else {
            None
        };
        let target_status = match &target {
            None => TargetStatus::NoTarget,
            Some(t) if reclaim_disk_bytes >= t.need_disk_bytes => TargetStatus::Reached,
            Some(t) => TargetStatus::Unreachable {
                short_disk_bytes: t.need_disk_bytes - reclaim_disk_bytes,
            },
        };
        Plan {
            version: PLAN_VERSION,
            taken_at: self.now,
            reclaim_bytes,
            reclaim_disk_bytes,
            filesystem: self.s.filesystem,
            projected: self
                .s
                .filesystem
                .map(|fs| Projection::of(&fs, reclaim_disk_bytes)),
            target,
            target_status,
            steps: self.steps,
            skipped: self.skipped,
        }
    }
}

/// Finds an image by full ID, ID prefix (with or without `sha256:`), tag, or repository
/// (`name` means `name:latest`).
pub fn find_image(snapshot: &Snapshot, reference: &str) -> Option<usize> {
    let images = &snapshot.images;
    if let Some(i) = images
        .iter()
        .position(|i| i.tags.iter().any(|t| t == reference))
    {
        return Some(i);
    }
    let latest = format!("{reference}:latest");
    if let Some(i) = images.iter().position(|i| i.tags.contains(&latest)) {
        return Some(i);
    }
    if let Some(i) = images
        .iter()
        .position(|i| i.repo_digests.iter().any(|d| d == reference))
    {
        return Some(i);
    }
    let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
    if hex.len() < 4 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut found = images.iter().enumerate().filter(|(_, i)| {
        i.id.strip_prefix("sha256:")
            .unwrap_or(&i.id)
            .starts_with(hex)
    });
    match (found.next(), found.next()) {
        (Some((i, _)), None) => Some(i),
        _ => None,
    }
}

/// Whether `image` is still safe to delete against fresh facts from the engine, just before
/// the executor deletes it: unused by any container, unprotected, old enough.
pub fn recheck_image(
    image: &Image,
    containers: &[Container],
    policy: &Policy,
    first_seen: Timestamp,
    now: Timestamp,
) -> Result<(), SkipReason> {
    let users: Vec<String> = containers
        .iter()
        .filter(|c| c.image_id == image.id)
        .map(Container::display_name)
        .collect();
    if !users.is_empty() {
        return Err(SkipReason::InUse { containers: users });
    }
    if let Some(p) = policy.keep.images.iter().find(|p| p.matches_image(image)) {
        return Err(SkipReason::Protected {
            rule: format!("keep.images = \"{}\"", p.as_str()),
        });
    }
    if let Some(p) = policy.keep.labels.iter().find(|p| p.matches(&image.labels)) {
        return Err(SkipReason::Protected {
            rule: format!("keep.labels = \"{p}\""),
        });
    }
    let age = now - first_seen;
    if age < secs(policy.keep.min_age) {
        return Err(SkipReason::TooYoung {
            age,
            min: secs(policy.keep.min_age),
            rule: "keep.min_age".into(),
        });
    }
    Ok(())
}
