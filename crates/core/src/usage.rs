//! What every byte on the Docker filesystem belongs to: the figures behind `dockgc df`.

use serde::{Deserialize, Serialize};

use crate::history::History;
use crate::model::{Filesystem, Snapshot, Timestamp, VolumeKind};
use crate::plan::ImageFacts;

/// Version of the `df --format json` output.
pub const USAGE_VERSION: u32 = 1;

/// Totals of one class of objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassUsage {
    /// Objects.
    pub count: usize,
    /// Objects in use.
    pub active: usize,
    /// Bytes (shared layers counted once).
    pub bytes: u64,
    /// Bytes held by objects in use.
    pub in_use_bytes: u64,
    /// Bytes deleting every unused object of the class would free.
    pub reclaimable_bytes: u64,
}

/// One image in `df -v`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageUsage {
    /// Image ID.
    pub id: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Bytes of all its layers.
    pub bytes: u64,
    /// Bytes of layers no other image references.
    pub unique_bytes: u64,
    /// Bytes of layers shared with other images.
    pub shared_bytes: u64,
    /// Last use (of it or of an image built on it).
    pub last_used: Timestamp,
    /// Containers using it.
    pub containers: Vec<String>,
}

/// Usage by class, like `docker system df` with exact shared-layer accounting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Format version ([`USAGE_VERSION`]).
    pub version: u32,
    /// When the figures were taken.
    pub taken_at: Timestamp,
    /// The filesystem holding `DockerRootDir`, when known.
    pub filesystem: Option<Filesystem>,
    /// Images; reclaimable counts layers shared only among unused images.
    pub images: ClassUsage,
    /// Containers' writable layers; reclaimable is stopped containers'.
    pub containers: ClassUsage,
    /// Volumes; reclaimable is unused anonymous volumes'.
    pub volumes: ClassUsage,
    /// BuildKit cache; reclaimable is records neither in use nor shared.
    pub build_cache: ClassUsage,
    /// Per image, largest unique bytes first.
    pub image_details: Vec<ImageUsage>,
}

/// Computes usage by class.
pub fn usage(snapshot: &Snapshot, history: &History) -> Usage {
    let facts = ImageFacts::new(snapshot, history);
    let graph = &facts.graph;
    let index: std::collections::HashMap<&str, usize> = snapshot
        .images
        .iter()
        .enumerate()
        .map(|(i, image)| (image.id.as_str(), i))
        .collect();
    let mut users: Vec<Vec<String>> = vec![Vec::new(); snapshot.images.len()];
    for c in &snapshot.containers {
        if let Some(&i) = index.get(c.image_id.as_str()) {
            users[i].push(c.display_name());
        }
    }
    let mut images = ClassUsage {
        count: snapshot.images.len(),
        active: users.iter().filter(|u| !u.is_empty()).count(),
        ..ClassUsage::default()
    };
    for (l, layer_users) in graph.layer_users.iter().enumerate() {
        if layer_users.is_empty() {
            continue;
        }
        let bytes = graph.layer_bytes[l];
        images.bytes += bytes;
        if layer_users.iter().any(|&i| !users[i].is_empty()) {
            images.in_use_bytes += bytes;
        } else {
            images.reclaimable_bytes += bytes;
        }
    }
    let mut image_details: Vec<ImageUsage> = snapshot
        .images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let (unique, shared) = graph.unique_and_shared_bytes(i);
            ImageUsage {
                id: image.id.clone(),
                tags: image.tags.clone(),
                bytes: unique + shared,
                unique_bytes: unique,
                shared_bytes: shared,
                last_used: facts.effective_last_use[i],
                containers: users[i].clone(),
            }
        })
        .collect();
    image_details.sort_by(|a, b| b.unique_bytes.cmp(&a.unique_bytes).then(a.id.cmp(&b.id)));

    let mut containers = ClassUsage {
        count: snapshot.containers.len(),
        ..ClassUsage::default()
    };
    for c in &snapshot.containers {
        let bytes = c.size_rw.unwrap_or(0);
        containers.bytes += bytes;
        if c.state.is_stopped() {
            containers.reclaimable_bytes += bytes;
        } else {
            containers.active += 1;
            containers.in_use_bytes += bytes;
        }
    }

    let mut volumes = ClassUsage {
        count: snapshot.volumes.len(),
        ..ClassUsage::default()
    };
    for v in &snapshot.volumes {
        let bytes = v.bytes.unwrap_or(0);
        volumes.bytes += bytes;
        if snapshot
            .containers
            .iter()
            .any(|c| c.volumes.contains(&v.name))
        {
            volumes.active += 1;
            volumes.in_use_bytes += bytes;
        } else if v.kind == VolumeKind::Anonymous {
            volumes.reclaimable_bytes += bytes;
        }
    }

    let mut build_cache = ClassUsage {
        count: snapshot.build_cache.len(),
        ..ClassUsage::default()
    };
    for r in &snapshot.build_cache {
        build_cache.bytes += r.bytes;
        if r.in_use {
            build_cache.active += 1;
            build_cache.in_use_bytes += r.bytes;
        }
        if r.is_reclaimable() {
            build_cache.reclaimable_bytes += r.bytes;
        }
    }

    Usage {
        version: USAGE_VERSION,
        taken_at: snapshot.taken_at,
        filesystem: snapshot.filesystem,
        images,
        containers,
        volumes,
        build_cache,
        image_details,
    }
}
