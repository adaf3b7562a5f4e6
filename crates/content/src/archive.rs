//! Streaming reader of image archives: `docker save` in the legacy layout (Engine ≤ 24:
//! `<id>/layer.tar`, `<config>.json`, `manifest.json`) and the OCI layout (Engine ≥ 25,
//! `docker buildx --output type=oci`: `blobs/sha256/…`, `index.json`, often a `manifest.json`
//! too). Layers are scanned as they stream by, whatever their compression; the manifest may
//! arrive last. Nothing but small JSON documents and the layers' file lists is kept.

use std::collections::HashMap;
use std::io::Read;

use serde::Deserialize;

use crate::layer::{scan_blob, LayerIndex};

/// JSON documents larger than this are not configs or manifests.
const MAX_JSON: u64 = 64 << 20;

/// One image found in an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveImage {
    /// Image ID (`sha256:` and the config's digest).
    pub id: String,
    /// Tags (`repo:tag`).
    pub tags: Vec<String>,
    /// Layers bottom first: diff ID and the `created_by` of the history entry that made it.
    pub layers: Vec<ImageLayer>,
}

/// A layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct ImageLayer {
    /// Digest of the uncompressed layer (`sha256:…`).
    pub diff_id: String,
    /// The Dockerfile instruction that made it, from the image history.
    pub created_by: String,
}

/// Everything read from an archive.
#[derive(Debug, Default)]
pub struct Archive {
    /// Its images.
    pub images: Vec<ArchiveImage>,
    /// Scanned layers by diff ID.
    pub layers: HashMap<String, LayerIndex>,
}

/// Why an archive could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive itself broke (truncated, not a tar).
    #[error("the archive is unreadable{}: {message}", at.as_ref().map(|p| format!(" at `{p}`")).unwrap_or_default())]
    Broken {
        /// The last entry reached.
        at: Option<String>,
        /// What failed.
        message: String,
    },
    /// A layer of an image could not be read.
    #[error("image {image}: layer {index} ({diff_id}, `{path}`): {message}")]
    Layer {
        /// The image's tag or ID.
        image: String,
        /// 1-based layer number.
        index: usize,
        /// Its diff ID.
        diff_id: String,
        /// Its path in the archive.
        path: String,
        /// What failed.
        message: String,
    },
    /// The manifest, a config or a layer it names is missing or malformed.
    #[error("{0}")]
    Manifest(String),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Config {
    rootfs: RootFs,
    #[serde(default)]
    history: Vec<History>,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct History {
    #[serde(default)]
    created_by: String,
    #[serde(default)]
    empty_layer: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciIndex {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct OciManifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// What the stream held, before the manifest ties it together.
#[derive(Default)]
struct Entries {
    json: HashMap<String, Vec<u8>>,
    layers: HashMap<String, Result<LayerIndex, String>>,
    links: HashMap<String, String>,
}

impl Entries {
    fn resolve<'a>(&'a self, path: &'a str) -> &'a str {
        let mut p = path;
        for _ in 0..8 {
            match self.links.get(p) {
                Some(t) => p = t,
                None => break,
            }
        }
        p
    }
}

fn join_link(from: &str, target: &str) -> String {
    if let Some(abs) = target.strip_prefix('/') {
        return crate::layer::normalise(abs);
    }
    let mut parts: Vec<&str> = from.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            ".." => {
                parts.pop();
            }
            "." | "" => {}
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// Reads an archive from a stream.
pub fn read_archive(reader: impl Read) -> Result<Archive, ArchiveError> {
    let mut outer = tar::Archive::new(reader);
    let mut entries = Entries::default();
    let mut last: Option<String> = None;
    let broken = |at: &Option<String>, e: &dyn std::fmt::Display| ArchiveError::Broken {
        at: at.clone(),
        message: e.to_string(),
    };
    let iter = outer.entries().map_err(|e| broken(&None, &e))?;
    for entry in iter {
        let mut entry = entry.map_err(|e| broken(&last, &e))?;
        let path = crate::layer::normalise(&String::from_utf8_lossy(&entry.path_bytes()));
        last = Some(path.clone());
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            if let Some(target) = entry.link_name_bytes() {
                let target = String::from_utf8_lossy(&target).into_owned();
                let resolved = if kind.is_symlink() {
                    join_link(&path, &target)
                } else {
                    crate::layer::normalise(&target)
                };
                entries.links.insert(path, resolved);
            }
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let size = entry.header().size().unwrap_or(0);
        // Small documents that look like JSON are kept; everything else is a layer blob.
        let mut head = [0u8; 1];
        let n = entry.read(&mut head).map_err(|e| broken(&last, &e))?;
        if n == 0 {
            continue;
        }
        if head[0] == b'{' || head[0] == b'[' {
            if size <= MAX_JSON {
                let mut doc = Vec::with_capacity(size as usize);
                doc.push(head[0]);
                entry.read_to_end(&mut doc).map_err(|e| broken(&last, &e))?;
                entries.json.insert(path, doc);
            }
            continue;
        }
        let blob = std::io::Cursor::new(head).chain(&mut entry);
        let scanned = scan_blob(blob).map_err(|e| e.to_string());
        // Whatever the scan left unread is skipped by the outer archive.
        entries.layers.insert(path, scanned);
    }
    assemble(entries)
}

fn parse<T: serde::de::DeserializeOwned>(entries: &Entries, path: &str) -> Result<T, ArchiveError> {
    let doc = entries
        .json
        .get(entries.resolve(path))
        .ok_or_else(|| ArchiveError::Manifest(format!("`{path}` is missing from the archive")))?;
    serde_json::from_slice(doc)
        .map_err(|e| ArchiveError::Manifest(format!("`{path}` is malformed: {e}")))
}

fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

fn digest_of(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or(path);
    format!("sha256:{}", name.trim_end_matches(".json"))
}

/// An image config's diff IDs and, for each layer, the command that made it.
pub fn parse_config(config: &[u8]) -> Result<(Vec<String>, Vec<String>), String> {
    let config: Config =
        serde_json::from_slice(config).map_err(|e| format!("malformed image config: {e}"))?;
    let mut commands: Vec<String> = config
        .history
        .iter()
        .filter(|h| !h.empty_layer)
        .map(|h| h.created_by.trim().to_string())
        .collect();
    commands.resize(config.rootfs.diff_ids.len(), String::new());
    Ok((config.rootfs.diff_ids, commands))
}

fn assemble(mut entries: Entries) -> Result<Archive, ArchiveError> {
    // (config path, tags, layer paths) per image.
    let mut found: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    if entries.json.contains_key("manifest.json") {
        let manifest: Vec<ManifestEntry> = parse(&entries, "manifest.json")?;
        for m in manifest {
            found.push((m.config, m.repo_tags.unwrap_or_default(), m.layers));
        }
    } else if entries.json.contains_key("index.json") {
        let index: OciIndex = parse(&entries, "index.json")?;
        let mut queue: Vec<(Descriptor, Option<String>)> =
            index.manifests.into_iter().map(|d| (d, None)).collect();
        while let Some((d, tag)) = queue.pop() {
            let tag = tag.or_else(|| {
                d.annotations
                    .get("io.containerd.image.name")
                    .or_else(|| d.annotations.get("org.opencontainers.image.ref.name"))
                    .cloned()
            });
            let path = blob_path(&d.digest);
            if d.media_type.contains("index") || d.media_type.contains("manifest.list") {
                let nested: OciIndex = parse(&entries, &path)?;
                queue.extend(nested.manifests.into_iter().map(|n| (n, tag.clone())));
                continue;
            }
            let m: OciManifest = parse(&entries, &path)?;
            found.push((
                blob_path(&m.config.digest),
                tag.into_iter().collect(),
                m.layers.iter().map(|l| blob_path(&l.digest)).collect(),
            ));
        }
    } else {
        return Err(ArchiveError::Manifest(
            "neither manifest.json nor index.json: not a docker-save or OCI archive".into(),
        ));
    }
    let mut archive = Archive::default();
    for (config_path, tags, layer_paths) in found {
        let config: Config = parse(&entries, &config_path)?;
        let name = tags
            .first()
            .cloned()
            .unwrap_or_else(|| digest_of(&config_path));
        if config.rootfs.diff_ids.len() != layer_paths.len() {
            return Err(ArchiveError::Manifest(format!(
                "image {name}: {} layers in the manifest, {} in the config",
                layer_paths.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let mut commands = config
            .history
            .iter()
            .filter(|h| !h.empty_layer)
            .map(|h| h.created_by.clone());
        let mut layers = Vec::new();
        for (i, (path, diff_id)) in layer_paths.iter().zip(&config.rootfs.diff_ids).enumerate() {
            let resolved = entries.resolve(path).to_string();
            let created_by = commands.next().unwrap_or_default();
            let layer_error = |message: String| ArchiveError::Layer {
                image: name.clone(),
                index: i + 1,
                diff_id: diff_id.clone(),
                path: path.clone(),
                message,
            };
            match entries.layers.get(&resolved) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(layer_error(e.clone())),
                None if archive.layers.contains_key(diff_id) => {}
                None => return Err(layer_error("missing from the archive".into())),
            }
            if !archive.layers.contains_key(diff_id) {
                if let Some(Ok(index)) = entries.layers.remove(&resolved) {
                    archive.layers.insert(diff_id.clone(), index);
                }
            }
            layers.push(ImageLayer {
                diff_id: diff_id.clone(),
                created_by: created_by.trim().to_string(),
            });
        }
        archive.images.push(ArchiveImage {
            id: digest_of(&config_path),
            tags,
            layers,
        });
    }
    Ok(archive)
}
