//! When each image arrived and was last used.
//!
//! Docker records neither. Until the governor keeps a persistent history fed by events (a later
//! issue), [`History::backfill`] derives both from what the engine knows: containers' created,
//! started and finished times, and image tag times.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{Snapshot, Timestamp};

/// Arrival and last use of one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageUse {
    /// When the image was first seen on this host (what `keep.min_age` measures from).
    pub first_seen: Timestamp,
    /// When a container last used the image, or it was last tagged, pulled or loaded.
    pub last_used: Timestamp,
}

/// Use history of every image, keyed by image ID.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Per image ID.
    pub images: BTreeMap<String, ImageUse>,
}

impl History {
    /// Derives a history from a snapshot alone.
    pub fn backfill(snapshot: &Snapshot) -> Self {
        let mut images: BTreeMap<String, ImageUse> = snapshot
            .images
            .iter()
            .map(|image| {
                let tagged = image.last_tagged.unwrap_or(image.arrived);
                let use_ = ImageUse {
                    first_seen: image.arrived,
                    last_used: tagged.max(image.arrived),
                };
                (image.id.clone(), use_)
            })
            .collect();
        for container in &snapshot.containers {
            if let Some(use_) = images.get_mut(&container.image_id) {
                use_.last_used = use_.last_used.max(container.last_activity());
            }
        }
        Self { images }
    }

    /// What the engine knows of `snapshot`, completed by a `stored` history (the governor's).
    pub fn backfill_with(snapshot: &Snapshot, stored: &History) -> Self {
        let mut history = Self::backfill(snapshot);
        history.merge(stored);
        history
    }

    /// Adds what `other` knows: the earlier first sighting and the later use of each image.
    pub fn merge(&mut self, other: &History) {
        for (id, u) in &other.images {
            let entry = self.images.entry(id.clone()).or_insert(*u);
            entry.first_seen = entry.first_seen.min(u.first_seen);
            entry.last_used = entry.last_used.max(u.last_used);
        }
    }

    /// Use of one image; an image unknown to the history counts as arriving and used at `now`
    /// (the safe side: it is protected by `min_age` and `recent`).
    pub fn use_of(&self, image_id: &str, now: Timestamp) -> ImageUse {
        self.images.get(image_id).copied().unwrap_or(ImageUse {
            first_seen: now,
            last_used: now,
        })
    }
}
