//! What the user allows dockgc to delete, validated. Parsing config text into a [`Policy`] is
//! the binary's job; this module only holds the validated values and their matching rules.

use std::time::Duration;

use globset::{GlobBuilder, GlobMatcher};
use serde::{Serialize, Serializer};

use crate::model::{Filesystem, Image, Labels};

/// A disk watermark: a used percentage, or a number of bytes that must stay free.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Watermark {
    /// Used percentage of the filesystem (`85%`).
    UsedPercent(f64),
    /// Bytes that must be free (`20GB free`).
    FreeBytes(u64),
}

impl Watermark {
    /// The used bytes this watermark allows on `fs`.
    pub fn used_bytes_on(&self, fs: &Filesystem) -> u64 {
        let capacity = fs.capacity_bytes();
        match *self {
            Self::UsedPercent(p) => (capacity as f64 * p / 100.0).floor() as u64,
            Self::FreeBytes(free) => capacity.saturating_sub(free),
        }
    }
}

impl std::fmt::Display for Watermark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UsedPercent(p) => write!(f, "{p}%"),
            Self::FreeBytes(b) => write!(f, "{} free", crate::model::format_bytes(*b)),
        }
    }
}

/// A reference pattern with Docker's `reference=` filter semantics: a glob where `*` does not
/// cross `/`, matched against `repo:tag` and against `repo` alone; `sha256:…` matches an image
/// ID prefix; `repo@sha256:…` matches a repository digest.
#[derive(Debug, Clone)]
pub struct RefPattern {
    source: String,
    matcher: Option<GlobMatcher>,
}

impl RefPattern {
    /// Compiles a pattern; the error says what is wrong with it.
    pub fn new(source: &str) -> Result<Self, String> {
        if source.is_empty() {
            return Err("an empty pattern matches nothing".into());
        }
        let matcher = if source.starts_with("sha256:") || source.contains('@') {
            None
        } else {
            Some(
                GlobBuilder::new(source)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| format!("invalid glob `{source}`: {}", e.kind()))?
                    .compile_matcher(),
            )
        };
        Ok(Self {
            source: source.to_string(),
            matcher,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern matches any reference of `image`.
    pub fn matches_image(&self, image: &Image) -> bool {
        match &self.matcher {
            None if self.source.starts_with("sha256:") => image.id.starts_with(&self.source),
            None => image.repo_digests.contains(&self.source),
            Some(m) => image.tags.iter().any(|t| self.matches_tag_with(m, t)),
        }
    }

    /// Whether the pattern matches one tag (`repo:tag`).
    pub fn matches_tag(&self, tag: &str) -> bool {
        self.matcher
            .as_ref()
            .is_some_and(|m| self.matches_tag_with(m, tag))
    }

    fn matches_tag_with(&self, m: &GlobMatcher, tag: &str) -> bool {
        m.is_match(tag) || m.is_match(repository_of(tag))
    }
}

impl PartialEq for RefPattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Serialize for RefPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

/// The repository part of `repo:tag` (a `:` after the last `/` starts the tag; a registry
/// port does not).
pub fn repository_of(tag: &str) -> &str {
    let slash = tag.rfind('/').map_or(0, |i| i + 1);
    match tag[slash..].rfind(':') {
        Some(colon) => &tag[..slash + colon],
        None => tag,
    }
}

/// A label rule: `key` (any value) or `key=value`.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelPattern {
    key: String,
    value: Option<String>,
}

impl LabelPattern {
    /// Parses `key` or `key=value`.
    pub fn new(source: &str) -> Result<Self, String> {
        let (key, value) = match source.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (source, None),
        };
        if key.trim().is_empty() {
            return Err(format!("`{source}` has no label key"));
        }
        Ok(Self {
            key: key.to_string(),
            value,
        })
    }

    /// Whether `labels` carries this label.
    pub fn matches(&self, labels: &Labels) -> bool {
        match (labels.get(&self.key), &self.value) {
            (Some(_), None) => true,
            (Some(v), Some(want)) => v == want,
            (None, _) => false,
        }
    }
}

impl std::fmt::Display for LabelPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={v}", self.key),
            None => write!(f, "{}", self.key),
        }
    }
}

impl Serialize for LabelPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What to do with unused tagged images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnusedImages {
    /// Evict least recently used first, only under disk pressure or toward an explicit goal.
    Lru,
    /// Remove every unused, unprotected image on every run (like `docker image prune -a`).
    Remove,
    /// Never remove tagged images.
    Keep,
}

/// What `keep.recent` and `keep.per_repository` do when the disk target cannot be reached
/// without the images they keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnderPressure {
    /// They yield, least recently used first, after every other candidate: a full disk fails
    /// every job, a re-pull fails none. `keep.images`, `keep.labels`, `keep.min_age` and
    /// images in use never yield.
    Yield,
    /// They hold even if the disk fills.
    Hold,
}

/// What to do with a class of objects that dockgc may remove or must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Removal {
    /// Remove when the other rules allow.
    Remove,
    /// Never remove.
    Keep,
}

/// The validated policy the planner obeys.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    /// Disk watermarks.
    pub disk: DiskPolicy,
    /// Keep rules that protect objects from every other rule.
    pub keep: KeepPolicy,
    /// Stopped containers.
    pub containers: ContainerPolicy,
    /// Images.
    pub images: ImagePolicy,
    /// Volumes.
    pub volumes: VolumePolicy,
    /// BuildKit cache.
    pub build_cache: BuildCachePolicy,
    /// Networks.
    pub networks: NetworkPolicy,
}

/// Watermarks on the filesystem holding `DockerRootDir`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskPolicy {
    /// Start freeing when usage crosses this.
    pub high: Watermark,
    /// Free down to this.
    pub low: Watermark,
    /// Start freeing when used inodes cross this percentage.
    pub inodes_high: f64,
    /// Free inodes down to this percentage.
    pub inodes_low: f64,
}

/// Keep rules.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeepPolicy {
    /// Images whose references match any of these are never deleted.
    pub images: Vec<RefPattern>,
    /// Objects carrying any of these labels are never deleted.
    pub labels: Vec<LabelPattern>,
    /// Never delete an image used within this.
    #[serde(serialize_with = "ser_secs")]
    pub recent: Duration,
    /// Never delete anything that arrived (or was created) locally within this.
    #[serde(serialize_with = "ser_secs")]
    pub min_age: Duration,
    /// Keep the N most recently used tags of each repository.
    pub per_repository: u32,
    /// Whether `recent` and `per_repository` yield to the disk target.
    pub under_pressure: UnderPressure,
}

/// Stopped-container rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerPolicy {
    /// Remove or keep stopped containers.
    pub stopped: Removal,
    /// Remove a stopped container once it has been stopped this long.
    #[serde(serialize_with = "ser_secs")]
    pub stopped_after: Duration,
}

/// Image rules.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImagePolicy {
    /// Remove or keep dangling images.
    pub dangling: Removal,
    /// Remove a dangling image once it has been on the host this long.
    #[serde(serialize_with = "ser_secs")]
    pub dangling_after: Duration,
    /// What to do with unused tagged images.
    pub unused: UnusedImages,
}

/// Volume rules.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VolumePolicy {
    /// Remove or keep unused anonymous volumes.
    pub anonymous: Removal,
    /// Remove an unused anonymous volume once it is this old.
    #[serde(serialize_with = "ser_secs")]
    pub anonymous_after: Duration,
    /// Named volumes: kept unless explicitly opted in.
    pub named: Removal,
    /// With `named = "remove"`: remove an unused named volume once it is this old.
    #[serde(serialize_with = "ser_secs")]
    pub named_after: Duration,
}

/// BuildKit cache rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BuildCachePolicy {
    /// Remove or keep build cache.
    pub prune: Removal,
    /// Keep at most this many bytes of reclaimable build cache.
    pub keep_bytes: u64,
    /// Remove records unused for this long.
    #[serde(serialize_with = "ser_secs")]
    pub max_age: Duration,
}

/// Network rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkPolicy {
    /// Remove or keep unused custom networks.
    pub unused: Removal,
}

fn ser_secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

const HOUR: u64 = 3_600;
const DAY: u64 = 24 * HOUR;

impl Default for Policy {
    /// The built-in defaults, documented in `docs/configuration.md` and printed by
    /// `dockgc config default`.
    fn default() -> Self {
        Self {
            disk: DiskPolicy {
                high: Watermark::UsedPercent(85.0),
                // Five points under `high`, like kubelet's image GC (85/80): each cycle frees a
                // little, so the disk stays full of cache; a wide gap evicts warm images for
                // nothing (docs/benchmarks.md: 28 % fewer bytes re-loaded than 85/70).
                low: Watermark::UsedPercent(80.0),
                inodes_high: 90.0,
                inodes_low: 80.0,
            },
            keep: KeepPolicy {
                images: Vec::new(),
                labels: vec![LabelPattern {
                    key: "dockgc.keep".into(),
                    value: None,
                }],
                recent: Duration::from_secs(DAY),
                min_age: Duration::from_secs(HOUR),
                per_repository: 1,
                under_pressure: UnderPressure::Yield,
            },
            containers: ContainerPolicy {
                stopped: Removal::Remove,
                stopped_after: Duration::from_secs(DAY),
            },
            images: ImagePolicy {
                dangling: Removal::Remove,
                dangling_after: Duration::from_secs(HOUR),
                unused: UnusedImages::Lru,
            },
            volumes: VolumePolicy {
                anonymous: Removal::Remove,
                anonymous_after: Duration::from_secs(7 * DAY),
                named: Removal::Keep,
                named_after: Duration::from_secs(30 * DAY),
            },
            build_cache: BuildCachePolicy {
                prune: Removal::Remove,
                keep_bytes: 10_000_000_000,
                max_age: Duration::from_secs(7 * DAY),
            },
            networks: NetworkPolicy {
                unused: Removal::Remove,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(tags: &[&str]) -> Image {
        Image {
            id: "sha256:abcdef0123456789".into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..Image::default()
        }
    }

    #[test]
    fn star_does_not_cross_slash() {
        let p = RefPattern::new("miniconda:py310*").unwrap();
        assert!(p.matches_image(&image(&["miniconda:py310-base"])));
        assert!(!p.matches_image(&image(&["miniconda:py39"])));
        let p = RefPattern::new("*").unwrap();
        assert!(p.matches_image(&image(&["ubuntu:20.04"])));
        assert!(!p.matches_image(&image(&["ml/env:1"])));
        let p = RefPattern::new("ml/*").unwrap();
        assert!(p.matches_image(&image(&["ml/env:1"])));
    }

    #[test]
    fn repository_pattern_matches_every_tag() {
        let p = RefPattern::new("ubuntu").unwrap();
        assert!(p.matches_image(&image(&["ubuntu:20.04"])));
        assert!(!p.matches_image(&image(&["ubuntu2:20.04"])));
    }

    #[test]
    fn id_and_digest_patterns() {
        assert!(RefPattern::new("sha256:abcdef")
            .unwrap()
            .matches_image(&image(&[])));
        let mut img = image(&[]);
        img.repo_digests = vec!["r@sha256:11".into()];
        assert!(RefPattern::new("r@sha256:11").unwrap().matches_image(&img));
    }

    #[test]
    fn repository_of_handles_ports() {
        assert_eq!(
            repository_of("localhost:5000/a/b:tag"),
            "localhost:5000/a/b"
        );
        assert_eq!(repository_of("localhost:5000/a/b"), "localhost:5000/a/b");
        assert_eq!(repository_of("ubuntu:20.04"), "ubuntu");
    }

    #[test]
    fn bad_glob_is_reported() {
        assert!(RefPattern::new("a[").unwrap_err().contains("a["));
    }

    #[test]
    fn label_patterns() {
        let mut labels = Labels::new();
        labels.insert("keep".into(), "true".into());
        assert!(LabelPattern::new("keep").unwrap().matches(&labels));
        assert!(LabelPattern::new("keep=true").unwrap().matches(&labels));
        assert!(!LabelPattern::new("keep=false").unwrap().matches(&labels));
        assert!(LabelPattern::new("=x").is_err());
    }
}
