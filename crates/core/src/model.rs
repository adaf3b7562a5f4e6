//! The world as dockgc sees it: a [`Snapshot`] of everything on the Docker filesystem.
//!
//! A snapshot is plain data. The Docker adapter fills it; the planner reads it. It is also the
//! versioned JSON that `dockgc snapshot` writes, so every field here is part of a file format:
//! add fields with `#[serde(default)]`, never rename or remove one without bumping
//! [`SNAPSHOT_VERSION`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the snapshot file format written by this build.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Seconds since the Unix epoch (UTC). The core never reads a clock: times come in as data.
pub type Timestamp = i64;

/// Labels of a Docker object.
pub type Labels = BTreeMap<String, String>;

/// Everything dockgc knows about one Docker host at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// File format version ([`SNAPSHOT_VERSION`]).
    pub version: u32,
    /// When the snapshot was taken; the planner's "now".
    pub taken_at: Timestamp,
    /// The engine the snapshot came from.
    pub engine: EngineInfo,
    /// The filesystem holding `DockerRootDir`, when dockgc could measure it.
    #[serde(default)]
    pub filesystem: Option<Filesystem>,
    /// All images, tagged and untagged.
    #[serde(default)]
    pub images: Vec<Image>,
    /// Every layer referenced by an image, by chain ID.
    #[serde(default)]
    pub layers: Vec<Layer>,
    /// All containers, running or not.
    #[serde(default)]
    pub containers: Vec<Container>,
    /// All volumes.
    #[serde(default)]
    pub volumes: Vec<Volume>,
    /// All networks.
    #[serde(default)]
    pub networks: Vec<Network>,
    /// BuildKit cache records.
    #[serde(default)]
    pub build_cache: Vec<BuildCacheRecord>,
}

/// Identity of the engine a snapshot came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineInfo {
    /// The endpoint dockgc connected to (`unix:///var/run/docker.sock`, `tcp://…`).
    pub endpoint: String,
    /// Negotiated Engine API version (`1.41`).
    pub api_version: String,
    /// Server version string (`20.10.24`).
    pub server_version: String,
    /// `DockerRootDir` as the daemon reports it.
    pub docker_root_dir: String,
    /// Storage driver (`overlay2`).
    pub storage_driver: String,
}

/// Size and fill of the filesystem holding `DockerRootDir` (from statvfs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filesystem {
    /// Total bytes of the filesystem.
    pub total_bytes: u64,
    /// Bytes in use (`f_blocks - f_bfree`).
    pub used_bytes: u64,
    /// Bytes available to unprivileged users (`f_bavail`).
    pub available_bytes: u64,
    /// Total inodes.
    pub total_inodes: u64,
    /// Free inodes.
    pub free_inodes: u64,
}

impl Filesystem {
    /// Bytes `df` counts as capacity for its Use% column: used plus available.
    pub fn capacity_bytes(&self) -> u64 {
        self.used_bytes + self.available_bytes
    }

    /// Used percentage as `df` shows it.
    pub fn used_percent(&self) -> f64 {
        percent_of(self.used_bytes, self.capacity_bytes())
    }

    /// Inodes in use.
    pub fn used_inodes(&self) -> u64 {
        self.total_inodes.saturating_sub(self.free_inodes)
    }

    /// Used inode percentage.
    pub fn used_inodes_percent(&self) -> f64 {
        percent_of(self.used_inodes(), self.total_inodes)
    }
}

fn percent_of(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// An image and the layers it is made of.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Image {
    /// Image ID (`sha256:…`).
    pub id: String,
    /// Tags (`repo:tag`), in the familiar form Docker shows.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Repository digests (`repo@sha256:…`).
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// When the image was built (from its config; says nothing about local arrival).
    pub created: Timestamp,
    /// When the image arrived on this host, as well as the engine can tell.
    pub arrived: Timestamp,
    /// When the engine last tagged the image (`Metadata.LastTagTime`), if ever.
    #[serde(default)]
    pub last_tagged: Option<Timestamp>,
    /// Image labels.
    #[serde(default)]
    pub labels: Labels,
    /// Parent image ID (set only for classic-builder images).
    #[serde(default)]
    pub parent: Option<String>,
    /// Chain IDs of the image's layers, bottom first.
    #[serde(default)]
    pub layers: Vec<String>,
    /// Bytes of image metadata on disk outside the layers (config file), when measured.
    #[serde(default)]
    pub metadata_disk_bytes: Option<u64>,
}

impl Image {
    /// An image with no tags and no digests: what Docker calls dangling.
    pub fn is_dangling(&self) -> bool {
        self.tags.is_empty() && self.repo_digests.is_empty()
    }

    /// The name a person recognises: the first tag, else the short ID.
    pub fn display_name(&self) -> String {
        self.tags
            .first()
            .cloned()
            .unwrap_or_else(|| short_id(&self.id).to_string())
    }
}

/// One layer, shared by every image whose chain contains its chain ID.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// Chain ID (`sha256:…`).
    pub chain_id: String,
    /// Size in Docker's accounting (what `LayersSize` sums).
    pub bytes: u64,
    /// Real disk usage (allocated blocks of the layer's files and metadata), when measured.
    #[serde(default)]
    pub disk_bytes: Option<u64>,
    /// Inodes the layer holds on disk, when measured.
    #[serde(default)]
    pub inodes: Option<u64>,
}

/// Run state of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    /// Created, never started.
    Created,
    /// Running.
    Running,
    /// Paused.
    Paused,
    /// Restarting.
    Restarting,
    /// Being removed.
    Removing,
    /// Exited.
    Exited,
    /// Dead.
    Dead,
}

impl ContainerState {
    /// Whether the container is stopped (its process is not running and will not restart by itself).
    pub fn is_stopped(self) -> bool {
        matches!(self, Self::Created | Self::Exited | Self::Dead)
    }
}

/// A container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Container {
    /// Container ID.
    pub id: String,
    /// Names (without the leading slash).
    #[serde(default)]
    pub names: Vec<String>,
    /// ID of the image it was created from.
    pub image_id: String,
    /// The image reference it was created with, as given.
    #[serde(default)]
    pub image: String,
    /// Run state.
    pub state: ContainerState,
    /// Creation time.
    pub created: Timestamp,
    /// Last start, if it ever started.
    #[serde(default)]
    pub started: Option<Timestamp>,
    /// Last exit, if it ever exited.
    #[serde(default)]
    pub finished: Option<Timestamp>,
    /// Labels.
    #[serde(default)]
    pub labels: Labels,
    /// Bytes of the writable layer, when the engine reported them.
    #[serde(default)]
    pub size_rw: Option<u64>,
    /// Real disk usage of the container (layers, logs, config), when measured on the host.
    #[serde(default)]
    pub disk_bytes: Option<u64>,
    /// Names of the volumes it mounts.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Names of the networks it is attached to.
    #[serde(default)]
    pub networks: Vec<String>,
}

impl Container {
    /// The name a person recognises.
    pub fn display_name(&self) -> String {
        self.names
            .first()
            .cloned()
            .unwrap_or_else(|| short_id(&self.id).to_string())
    }

    /// The latest moment the container was seen doing anything.
    pub fn last_activity(&self) -> Timestamp {
        [Some(self.created), self.started, self.finished]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(self.created)
    }
}

/// Whether a volume was named by a person or made anonymously by the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeKind {
    /// Made by the engine for a container (`VOLUME` in an image, `-v /path`).
    Anonymous,
    /// Named by a person; deleted only by explicit opt-in.
    Named,
}

/// A volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    /// Volume name.
    pub name: String,
    /// Anonymous or named.
    pub kind: VolumeKind,
    /// Volume driver.
    #[serde(default)]
    pub driver: String,
    /// Labels.
    #[serde(default)]
    pub labels: Labels,
    /// Creation time, when the driver reports it.
    #[serde(default)]
    pub created: Option<Timestamp>,
    /// Bytes, when the daemon reports them.
    #[serde(default)]
    pub bytes: Option<u64>,
    /// IDs of the containers (running or not) that mount it; the planner reads the same
    /// relation from [`Container::volumes`].
    #[serde(default)]
    pub containers: Vec<String>,
}

/// Whether a network came with the engine or was made by someone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkKind {
    /// `bridge`, `host`, `none`: never removed.
    Predefined,
    /// Made by a user or a tool.
    Custom,
}

/// A network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Network {
    /// Network ID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Driver.
    #[serde(default)]
    pub driver: String,
    /// Predefined or custom.
    pub kind: NetworkKind,
    /// Creation time.
    #[serde(default)]
    pub created: Option<Timestamp>,
    /// Labels.
    #[serde(default)]
    pub labels: Labels,
}

/// One BuildKit cache record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildCacheRecord {
    /// Record ID.
    pub id: String,
    /// Record type (`regular`, `source.local`, …).
    #[serde(default)]
    pub kind: String,
    /// Bytes.
    pub bytes: u64,
    /// Whether a build is using it now.
    #[serde(default)]
    pub in_use: bool,
    /// Whether it is shared with images (deleting it frees nothing).
    #[serde(default)]
    pub shared: bool,
    /// Creation time.
    #[serde(default)]
    pub created: Option<Timestamp>,
    /// Last use.
    #[serde(default)]
    pub last_used: Option<Timestamp>,
}

impl BuildCacheRecord {
    /// Whether pruning this record would free its bytes.
    pub fn is_reclaimable(&self) -> bool {
        !self.in_use && !self.shared
    }
}

/// The first 12 hex digits of an ID, as Docker shows it.
pub fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

/// Formats bytes in decimal units as `docker system df` does (`1.23GB`).
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        let text = format!("{value:.3}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        format!("{text}{}", UNITS[unit])
    }
}

/// Formats a duration in seconds as a short human age (`3d`, `5h`, `12m`, `40s`).
pub fn format_age(seconds: i64) -> String {
    let s = seconds.max(0);
    if s >= 86_400 {
        format!("{}d", s / 86_400)
    } else if s >= 3_600 {
        format!("{}h", s / 3_600)
    } else if s >= 60 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_formatted_like_docker() {
        assert_eq!(format_bytes(0), "0B");
        assert_eq!(format_bytes(999), "999B");
        assert_eq!(format_bytes(1_230_000_000), "1.23GB");
        assert_eq!(format_bytes(1_982_000), "1.982MB");
        assert_eq!(format_bytes(5_000_000), "5MB");
    }

    #[test]
    fn short_id_strips_algorithm() {
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
    }
}
