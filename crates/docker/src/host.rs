//! What dockgc can read of the Docker root when it runs on the engine's host: the filesystem's
//! fill (statvfs), exact layer sizes from the layer store, each layer's real disk usage, and
//! when each image arrived.
//!
//! Every function here is read-only. Paths follow the layout of the classic (graphdriver)
//! image store; with another layout [`HostRoot::open`] returns `None` and dockgc falls back to
//! what the API reports.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use dockgc_core::model::{Filesystem, Timestamp};

/// How current a measurement must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Flush the filesystem first: freed blocks show in statvfs only once the journal commits
    /// them. For measuring what a deletion freed.
    Synced,
    /// As statvfs says now (at most a journal commit behind). Cheap: for the monitor, which
    /// must not flush a busy host's disk every few seconds.
    AsIs,
}

/// Measures the filesystem holding `path`.
pub fn measure_filesystem(path: &Path, freshness: Freshness) -> std::io::Result<Filesystem> {
    if freshness == Freshness::Synced {
        if let Ok(dir) = std::fs::File::open(path) {
            let _ = rustix::fs::syncfs(&dir);
        }
    }
    let st = rustix::fs::statvfs(path)?;
    let block = st.f_frsize.max(1);
    Ok(Filesystem {
        total_bytes: st.f_blocks * block,
        used_bytes: (st.f_blocks - st.f_bfree) * block,
        available_bytes: st.f_bavail * block,
        total_inodes: st.f_files,
        free_inodes: st.f_ffree,
    })
}

/// Disk usage of a tree: allocated bytes and inodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Allocated bytes (`st_blocks * 512`).
    pub bytes: u64,
    /// Inodes (files, directories, links).
    pub inodes: u64,
}

impl std::ops::Add for DiskUsage {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            bytes: self.bytes + o.bytes,
            inodes: self.inodes + o.inodes,
        }
    }
}

/// Allocated bytes and inodes below `path`, not following links. Hard links are counted once.
pub fn disk_usage(path: &Path) -> DiskUsage {
    let mut total = DiskUsage::default();
    let mut stack = vec![path.to_path_buf()];
    let mut seen = std::collections::HashSet::new();
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total.bytes += meta.blocks() * 512;
        total.inodes += 1;
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

/// Disk usage of one layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerDisk {
    /// The layer store's metadata directory.
    pub metadata: DiskUsage,
    /// The storage driver's directory.
    pub data: DiskUsage,
    /// Whether BuildKit made the layer (its data may stay in the build cache).
    pub made_by_buildkit: bool,
}

impl LayerDisk {
    /// Both parts together.
    pub fn total(&self) -> DiskUsage {
        self.metadata + self.data
    }
}

/// The Docker root of a local engine, readable by dockgc.
#[derive(Debug)]
pub struct HostRoot {
    root: PathBuf,
    driver: String,
    /// Layers never change once written, so their measured usage is kept.
    measured: Mutex<HashMap<String, LayerDisk>>,
}

fn hex(id: &str) -> &str {
    id.strip_prefix("sha256:").unwrap_or(id)
}

impl HostRoot {
    /// Opens `root` when its layer store for `driver` is readable here.
    pub fn open(root: &Path, driver: &str) -> Option<Self> {
        let layerdb = root.join("image").join(driver).join("layerdb");
        std::fs::read_dir(&layerdb).ok()?;
        Some(Self {
            root: root.to_path_buf(),
            driver: driver.to_string(),
            measured: Mutex::new(HashMap::new()),
        })
    }

    /// The Docker root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn image_dir(&self) -> PathBuf {
        self.root.join("image").join(&self.driver)
    }

    fn layer_dir(&self, chain_id: &str) -> PathBuf {
        self.image_dir().join("layerdb/sha256").join(hex(chain_id))
    }

    /// The layer's size in Docker's accounting, from the layer store.
    pub fn layer_size(&self, chain_id: &str) -> Option<u64> {
        let text = std::fs::read_to_string(self.layer_dir(chain_id).join("size")).ok()?;
        text.trim().parse().ok()
    }

    /// Real disk usage of a layer: its driver directory and its layer-store metadata.
    pub fn layer_disk_usage(&self, chain_id: &str) -> Option<LayerDisk> {
        if let Some(known) = self.lock().get(chain_id) {
            return Some(*known);
        }
        let meta_dir = self.layer_dir(chain_id);
        let cache_id = std::fs::read_to_string(meta_dir.join("cache-id")).ok()?;
        let cache_id = cache_id.trim();
        let data = self.root.join(&self.driver).join(cache_id);
        let usage = LayerDisk {
            metadata: disk_usage(&meta_dir),
            data: disk_usage(&data),
            // The graphdriver names layers it makes with 64 hex digits; BuildKit's snapshotter
            // names its own with shorter keys, and may keep them after the image is gone.
            made_by_buildkit: !(cache_id.len() == 64
                && cache_id.bytes().all(|b| b.is_ascii_hexdigit())),
        };
        self.lock().insert(chain_id.to_string(), usage);
        Some(usage)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, LayerDisk>> {
        // A panic while holding the lock leaves only a cache behind: keep using it.
        self.measured.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The image's config (the JSON with `rootfs.diff_ids` and `history`).
    pub fn image_config(&self, image_id: &str) -> Option<Vec<u8>> {
        std::fs::read(
            self.image_dir()
                .join("imagedb/content/sha256")
                .join(hex(image_id)),
        )
        .ok()
    }

    /// The directory holding a layer's own files (overlay2's `diff`), where whiteouts are
    /// character devices and opaque directories carry an xattr. Only for overlay2.
    pub fn layer_diff_dir(&self, chain_id: &str) -> Option<PathBuf> {
        if self.driver != "overlay2" {
            return None;
        }
        let cache_id = std::fs::read_to_string(self.layer_dir(chain_id).join("cache-id")).ok()?;
        let dir = self
            .root
            .join("overlay2")
            .join(cache_id.trim())
            .join("diff");
        dir.is_dir().then_some(dir)
    }

    /// When the image's config was written here: its local arrival.
    pub fn image_arrival(&self, image_id: &str) -> Option<Timestamp> {
        let path = self
            .image_dir()
            .join("imagedb/content/sha256")
            .join(hex(image_id));
        std::fs::metadata(path).ok().map(|m| m.mtime())
    }

    /// Disk usage of an image's own metadata (config and metadata directory).
    pub fn image_metadata_disk_bytes(&self, image_id: &str) -> Option<u64> {
        let content = self
            .image_dir()
            .join("imagedb/content/sha256")
            .join(hex(image_id));
        let metadata = self
            .image_dir()
            .join("imagedb/metadata/sha256")
            .join(hex(image_id));
        std::fs::metadata(&content).ok()?;
        Some(disk_usage(&content).bytes + disk_usage(&metadata).bytes)
    }

    /// Disk usage of a container: its writable and init layers and its own directory.
    pub fn container_disk_bytes(&self, container_id: &str) -> Option<u64> {
        let mount_dir = self.image_dir().join("layerdb/mounts").join(container_id);
        let mount_id = std::fs::read_to_string(mount_dir.join("mount-id")).ok()?;
        let data = self.root.join(&self.driver);
        Some(
            (disk_usage(&mount_dir)
                + disk_usage(&data.join(mount_id.trim()))
                + disk_usage(&data.join(format!("{}-init", mount_id.trim())))
                + disk_usage(&self.root.join("containers").join(container_id)))
            .bytes,
        )
    }
}
