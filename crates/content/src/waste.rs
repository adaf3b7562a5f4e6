//! The waste baked into images: package-manager caches, files deleted or overwritten in a
//! later layer (their bytes still ship in the earlier one), identical files stored in more
//! than one layer. Pure: file lists in, findings out.
//!
//! Every wasted byte is counted once, under the first cause that applies in this order:
//! deleted, overwritten, a cache, a duplicate. Bytes a cache shares through a hard link with a
//! file that stays are not waste (conda hard-links its package cache into environments).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::layer::{EntryKind, LayerIndex};

/// Version of the audit report format.
pub const AUDIT_VERSION: u32 = 1;

/// Why bytes are wasted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Deleted (whited out) by a later layer.
    Deleted,
    /// Replaced by a file of the same path in a later layer.
    Overwritten,
    /// conda's package cache (`pkgs/` of a conda root: tarballs, `.conda` files, extracted
    /// packages).
    CondaCache,
    /// pip's cache (`.cache/pip`).
    PipCache,
    /// apt's package lists (`/var/lib/apt/lists`).
    AptLists,
    /// apt's downloaded packages and caches (`/var/cache/apt`).
    AptArchives,
    /// npm's cache (`.npm/_cacache`) or yarn's (`.cache/yarn`, `.yarn/berry/cache`).
    NpmCache,
    /// The same content stored in an earlier layer too.
    Duplicate,
}

impl Cause {
    /// The Dockerfile fix, given the command of the layer holding the bytes.
    pub fn fix(self) -> &'static str {
        match self {
            Self::Deleted => "delete these files in the same RUN that creates them (or never add them: .dockerignore, a multi-stage build); deleting them in a later layer does not shrink the image",
            Self::Overwritten => "write the final version once: merge the step that writes the first version with the one that replaces it",
            Self::CondaCache => "run `conda clean --all -f -y` (or `mamba clean -afy`) at the end of the same RUN as `conda install`/`conda create`",
            Self::PipCache => "use `pip install --no-cache-dir` (or ENV PIP_NO_CACHE_DIR=1), or a BuildKit cache mount: RUN --mount=type=cache,target=/root/.cache/pip",
            Self::AptLists => "add `&& rm -rf /var/lib/apt/lists/*` to the same RUN as `apt-get update && apt-get install`",
            Self::AptArchives => "add `&& apt-get clean` to the same RUN as `apt-get install` (or use --mount=type=cache,target=/var/cache/apt)",
            Self::NpmCache => "add `&& npm cache clean --force` (or `yarn cache clean`) to the same RUN as the install, or use a BuildKit cache mount",
            Self::Duplicate => "copy or create these files once: an identical copy is already in an earlier layer (COPY --from, --link, or reorder the steps)",
        }
    }

    /// How people name it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Deleted => "deleted in a later layer",
            Self::Overwritten => "overwritten in a later layer",
            Self::CondaCache => "conda package cache",
            Self::PipCache => "pip cache",
            Self::AptLists => "apt lists",
            Self::AptArchives => "apt package archives",
            Self::NpmCache => "npm/yarn cache",
            Self::Duplicate => "identical file in an earlier layer",
        }
    }
}

/// One layer of an image, as the analysis sees it.
#[derive(Debug, Clone, Copy)]
pub struct LayerRef<'a> {
    /// Diff ID.
    pub diff_id: &'a str,
    /// The command that made it.
    pub created_by: &'a str,
    /// Its files.
    pub index: &'a LayerIndex,
}

/// One wasted file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waste {
    /// 0-based layer holding the bytes.
    pub layer: usize,
    /// Path.
    pub path: String,
    /// Bytes.
    pub bytes: u64,
    /// Why.
    pub cause: Cause,
    /// The layer that deleted or overwrote it.
    pub by_layer: Option<usize>,
}

/// The waste of one cause in one layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// 1-based layer number.
    pub layer: usize,
    /// Its diff ID.
    pub diff_id: String,
    /// Its `created_by`.
    pub created_by: String,
    /// Why.
    pub cause: Cause,
    /// Wasted bytes.
    pub bytes: u64,
    /// Files.
    pub files: usize,
    /// The largest few paths.
    pub paths: Vec<String>,
    /// For deleted and overwritten files: the 1-based layer that did it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_layer: Option<usize>,
    /// The Dockerfile fix.
    pub fix: String,
}

/// One layer's figures in an image report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSummary {
    /// 1-based.
    pub layer: usize,
    /// Diff ID.
    pub diff_id: String,
    /// `created_by`.
    pub created_by: String,
    /// Bytes of its files.
    pub bytes: u64,
    /// Of which wasted.
    pub wasted_bytes: u64,
}

/// The audit of one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageAudit {
    /// Image ID.
    pub id: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Bytes of all its layers' files.
    pub bytes: u64,
    /// Of which wasted.
    pub wasted_bytes: u64,
    /// Share of bytes that are not waste, 0–100 (100 for an empty image).
    pub efficiency: f64,
    /// Per layer.
    pub layers: Vec<LayerSummary>,
    /// Findings, largest first.
    pub findings: Vec<Finding>,
}

/// How many paths a finding lists.
const PATHS_SHOWN: usize = 5;

/// The cache a path belongs to, given the image's conda roots.
fn cache_of(path: &str, conda_roots: &HashSet<String>) -> Option<Cause> {
    if let Some(at) = path
        .find("/pkgs/")
        .or_else(|| path.starts_with("pkgs/").then_some(0))
    {
        let root = if path.starts_with("pkgs/") && at == 0 {
            ""
        } else {
            &path[..at]
        };
        if conda_roots.contains(root) {
            return Some(Cause::CondaCache);
        }
    }
    if path.contains(".cache/pip/") {
        return Some(Cause::PipCache);
    }
    if let Some(rest) = path.strip_prefix("var/lib/apt/lists/") {
        if rest != "lock" {
            return Some(Cause::AptLists);
        }
    }
    if let Some(rest) = path.strip_prefix("var/cache/apt/") {
        if rest.ends_with(".deb") || rest.ends_with(".bin") {
            return Some(Cause::AptArchives);
        }
    }
    if path.contains(".npm/_cacache/")
        || path.contains(".cache/yarn/")
        || path.contains(".yarn/berry/cache/")
    {
        return Some(Cause::NpmCache);
    }
    None
}

/// Directories holding `conda-meta/` in any layer: conda roots (base and environments).
fn conda_roots(layers: &[LayerRef<'_>]) -> HashSet<String> {
    let mut roots = HashSet::new();
    for layer in layers {
        for f in &layer.index.files {
            if let Some(at) = f.path.find("conda-meta/") {
                if at == 0 {
                    roots.insert(String::new());
                } else if f.path.as_bytes()[at - 1] == b'/' {
                    roots.insert(f.path[..at - 1].to_string());
                }
            }
        }
    }
    roots
}

/// Every wasted file of an image.
pub fn wasted_files(layers: &[LayerRef<'_>]) -> Vec<Waste> {
    #[derive(Clone)]
    struct Visible {
        layer: usize,
        size: u64,
        hash: u128,
        /// Other paths of the same layer hard-linked to it.
        linked: Vec<String>,
    }
    let roots = conda_roots(layers);
    let mut visible: BTreeMap<String, Visible> = BTreeMap::new();
    let mut waste = Vec::new();
    let hide = |visible: &mut BTreeMap<String, Visible>,
                waste: &mut Vec<Waste>,
                dir: &str,
                including_dir: bool,
                by: usize| {
        let start = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut gone: Vec<String> = visible
            .range(start.clone()..)
            .take_while(|(p, _)| dir.is_empty() || p.starts_with(&start))
            .map(|(p, _)| p.clone())
            .collect();
        if including_dir && visible.contains_key(dir) {
            gone.push(dir.to_string());
        }
        for path in gone {
            if let Some(v) = visible.remove(&path) {
                if v.layer < by && v.size > 0 {
                    waste.push(Waste {
                        layer: v.layer,
                        path,
                        bytes: v.size,
                        cause: Cause::Deleted,
                        by_layer: Some(by),
                    });
                }
            }
        }
    };
    for (i, layer) in layers.iter().enumerate() {
        // Opaque directories and whiteouts apply to the layers beneath, before this layer's
        // own files.
        for f in &layer.index.files {
            match f.kind {
                EntryKind::Opaque => hide(&mut visible, &mut waste, &f.path, false, i),
                EntryKind::Whiteout => hide(&mut visible, &mut waste, &f.path, true, i),
                _ => {}
            }
        }
        for f in &layer.index.files {
            match f.kind {
                EntryKind::File => {
                    if let Some(old) = visible.get(&f.path) {
                        if old.layer < i && old.size > 0 {
                            waste.push(Waste {
                                layer: old.layer,
                                path: f.path.clone(),
                                bytes: old.size,
                                cause: Cause::Overwritten,
                                by_layer: Some(i),
                            });
                        }
                    }
                    visible.insert(
                        f.path.clone(),
                        Visible {
                            layer: i,
                            size: f.size,
                            hash: f.hash,
                            linked: Vec::new(),
                        },
                    );
                }
                EntryKind::HardLink => {
                    if let Some(target) = &f.target {
                        if let Some(t) = visible.get_mut(target) {
                            if t.layer == i {
                                t.linked.push(f.path.clone());
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    // Caches among what is still visible; a cache file hard-linked from a path outside any
    // cache frees nothing when the cache goes.
    let mut counted: HashSet<&str> = HashSet::new();
    for (path, v) in &visible {
        if v.size == 0 {
            continue;
        }
        if let Some(cause) = cache_of(path, &roots) {
            if v.linked.iter().all(|l| cache_of(l, &roots).is_some()) {
                waste.push(Waste {
                    layer: v.layer,
                    path: path.clone(),
                    bytes: v.size,
                    cause,
                    by_layer: None,
                });
                counted.insert(path);
            }
        }
    }
    // Duplicates: the same content visible from more than one layer; the first layer's copy
    // stays, each copy in a later layer is waste.
    let mut first: HashMap<(u64, u128), usize> = HashMap::new();
    let mut by_layer: Vec<(&String, &Visible)> = visible
        .iter()
        .filter(|(p, v)| v.size > 0 && !counted.contains(p.as_str()))
        .collect();
    by_layer.sort_by(|a, b| (a.1.layer, a.0).cmp(&(b.1.layer, b.0)));
    for (path, v) in by_layer {
        let key = (v.size, v.hash);
        match first.get(&key) {
            Some(&layer) if layer < v.layer => waste.push(Waste {
                layer: v.layer,
                path: path.clone(),
                bytes: v.size,
                cause: Cause::Duplicate,
                by_layer: None,
            }),
            Some(_) => {}
            None => {
                first.insert(key, v.layer);
            }
        }
    }
    waste
}

/// Audits one image.
pub fn audit_image(id: &str, tags: &[String], layers: &[LayerRef<'_>]) -> ImageAudit {
    let waste = wasted_files(layers);
    let mut groups: BTreeMap<(usize, Cause, Option<usize>), Vec<&Waste>> = BTreeMap::new();
    for w in &waste {
        groups
            .entry((w.layer, w.cause, w.by_layer))
            .or_default()
            .push(w);
    }
    let mut findings: Vec<Finding> = groups
        .into_iter()
        .map(|((layer, cause, by), mut items)| {
            items.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.path.cmp(&b.path)));
            Finding {
                layer: layer + 1,
                diff_id: layers[layer].diff_id.to_string(),
                created_by: layers[layer].created_by.to_string(),
                cause,
                bytes: items.iter().map(|w| w.bytes).sum(),
                files: items.len(),
                paths: items
                    .iter()
                    .take(PATHS_SHOWN)
                    .map(|w| w.path.clone())
                    .collect(),
                by_layer: by.map(|b| b + 1),
                fix: cause.fix().to_string(),
            }
        })
        .collect();
    findings.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.layer.cmp(&b.layer)));
    let summaries: Vec<LayerSummary> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| LayerSummary {
            layer: i + 1,
            diff_id: l.diff_id.to_string(),
            created_by: l.created_by.to_string(),
            bytes: l.index.bytes,
            wasted_bytes: waste.iter().filter(|w| w.layer == i).map(|w| w.bytes).sum(),
        })
        .collect();
    let bytes: u64 = summaries.iter().map(|l| l.bytes).sum();
    let wasted: u64 = summaries.iter().map(|l| l.wasted_bytes).sum();
    ImageAudit {
        id: id.to_string(),
        tags: tags.to_vec(),
        bytes,
        wasted_bytes: wasted,
        efficiency: if bytes == 0 {
            100.0
        } else {
            (bytes - wasted) as f64 * 100.0 / bytes as f64
        },
        layers: summaries,
        findings,
    }
}

/// Waste of one cause in one layer across the host: counted once however many images carry
/// the layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFinding {
    /// Diff ID of the layer holding the bytes.
    pub diff_id: String,
    /// Its `created_by`.
    pub created_by: String,
    /// Why.
    pub cause: Cause,
    /// Bytes a fix would save on this host (the layer is stored once).
    pub bytes: u64,
    /// Files.
    pub files: usize,
    /// Images carrying the layer.
    pub images: usize,
    /// A few of them.
    pub image_names: Vec<String>,
    /// The largest few paths.
    pub paths: Vec<String>,
    /// The Dockerfile fix.
    pub fix: String,
}

/// An image's name for people: its first tag, else its short ID.
pub fn image_name(id: &str, tags: &[String]) -> String {
    tags.first()
        .cloned()
        .unwrap_or_else(|| id.trim_start_matches("sha256:").chars().take(12).collect())
}

/// The host view: every image's wasted files, each (layer, path) counted once, grouped by
/// layer and cause, largest first.
pub fn host_view(images: &[(&str, &[String], Vec<LayerRef<'_>>)]) -> Vec<HostFinding> {
    let mut carriers: HashMap<&str, Vec<String>> = HashMap::new();
    let mut commands: HashMap<&str, &str> = HashMap::new();
    for (id, tags, layers) in images {
        let mut seen = HashSet::new();
        for l in layers {
            if seen.insert(l.diff_id) {
                carriers
                    .entry(l.diff_id)
                    .or_default()
                    .push(image_name(id, tags));
                commands.entry(l.diff_id).or_insert(l.created_by);
            }
        }
    }
    // (diff ID, path) → (cause, bytes); the strongest cause wins across images.
    let mut files: HashMap<(&str, String), (Cause, u64)> = HashMap::new();
    for (_, _, layers) in images {
        for w in wasted_files(layers) {
            let key = (layers[w.layer].diff_id, w.path);
            let e = files.entry(key).or_insert((w.cause, w.bytes));
            if w.cause < e.0 {
                e.0 = w.cause;
            }
        }
    }
    let mut groups: HashMap<(&str, Cause), Vec<(String, u64)>> = HashMap::new();
    for ((diff_id, path), (cause, bytes)) in files {
        groups
            .entry((diff_id, cause))
            .or_default()
            .push((path, bytes));
    }
    let mut out: Vec<HostFinding> = groups
        .into_iter()
        .map(|((diff_id, cause), mut items)| {
            items.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            let names = carriers.get(diff_id).cloned().unwrap_or_default();
            HostFinding {
                diff_id: diff_id.to_string(),
                created_by: commands.get(diff_id).copied().unwrap_or("").to_string(),
                cause,
                bytes: items.iter().map(|i| i.1).sum(),
                files: items.len(),
                images: names.len(),
                image_names: names.into_iter().take(PATHS_SHOWN).collect(),
                paths: items
                    .iter()
                    .take(PATHS_SHOWN)
                    .map(|i| i.0.clone())
                    .collect(),
                fix: cause.fix().to_string(),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then(a.diff_id.cmp(&b.diff_id))
            .then(a.cause.cmp(&b.cause))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::FileEntry;

    fn file(path: &str, size: u64, hash: u128) -> FileEntry {
        FileEntry {
            path: path.into(),
            kind: EntryKind::File,
            size,
            hash,
            target: None,
        }
    }

    fn entry(path: &str, kind: EntryKind, target: Option<&str>) -> FileEntry {
        FileEntry {
            path: path.into(),
            kind,
            size: 0,
            hash: 0,
            target: target.map(Into::into),
        }
    }

    fn index(files: Vec<FileEntry>) -> LayerIndex {
        LayerIndex {
            version: 1,
            bytes: files.iter().map(|f| f.size).sum(),
            files,
        }
    }

    fn audit(layers: &[LayerIndex]) -> ImageAudit {
        let refs: Vec<LayerRef<'_>> = layers
            .iter()
            .map(|l| LayerRef {
                diff_id: "d",
                created_by: "RUN x",
                index: l,
            })
            .collect();
        audit_image("sha256:1", &[], &refs)
    }

    fn bytes_of(a: &ImageAudit, cause: Cause) -> u64 {
        a.findings
            .iter()
            .filter(|f| f.cause == cause)
            .map(|f| f.bytes)
            .sum()
    }

    #[test]
    fn each_cause_is_counted_once_with_exact_bytes() {
        let layers = vec![
            index(vec![
                file("opt/conda/conda-meta/history", 10, 1),
                file("opt/conda/pkgs/numpy-1.0.tar.bz2", 1000, 2),
                file("opt/conda/pkgs/scipy-1.0/lib/x.so", 300, 3),
                file("root/.cache/pip/http/ab", 200, 4),
                file("var/lib/apt/lists/deb.debian.org_dists", 400, 5),
                file("var/lib/apt/lists/lock", 0, 0),
                file("var/cache/apt/archives/curl.deb", 50, 6),
                file("root/.npm/_cacache/index", 70, 7),
                file("usr/local/share/.cache/yarn/v6/npm-left-pad.tgz", 17, 13),
                file("app/.yarn/berry/cache/react.zip", 19, 14),
                file("data/big.bin", 5000, 8),
                file("etc/app.conf", 30, 9),
                file("srv/a/one", 11, 10),
            ]),
            index(vec![
                entry("data/big.bin", EntryKind::Whiteout, None),
                file("etc/app.conf", 31, 11),
                entry("srv/a", EntryKind::Opaque, None),
                file("copy/big", 123, 12),
            ]),
            index(vec![file("copy/again", 123, 12)]),
        ];
        let a = audit(&layers);
        assert_eq!(bytes_of(&a, Cause::CondaCache), 1300);
        assert_eq!(bytes_of(&a, Cause::PipCache), 200);
        assert_eq!(bytes_of(&a, Cause::AptLists), 400);
        assert_eq!(bytes_of(&a, Cause::AptArchives), 50);
        assert_eq!(bytes_of(&a, Cause::NpmCache), 70 + 17 + 19);
        assert_eq!(bytes_of(&a, Cause::Deleted), 5011);
        assert_eq!(bytes_of(&a, Cause::Overwritten), 30);
        assert_eq!(bytes_of(&a, Cause::Duplicate), 123);
        let deleted = a
            .findings
            .iter()
            .find(|f| f.cause == Cause::Deleted)
            .unwrap();
        assert_eq!((deleted.layer, deleted.by_layer), (1, Some(2)));
        assert_eq!(
            a.wasted_bytes,
            1300 + 200 + 400 + 50 + 70 + 17 + 19 + 5011 + 30 + 123
        );
        assert!(
            (a.efficiency - (a.bytes - a.wasted_bytes) as f64 * 100.0 / a.bytes as f64).abs()
                < 1e-9
        );
    }

    #[test]
    fn a_cache_file_deleted_later_is_deleted_waste_not_cache() {
        let layers = vec![
            index(vec![file("root/.cache/pip/x", 100, 1)]),
            index(vec![entry("root/.cache", EntryKind::Whiteout, None)]),
        ];
        let a = audit(&layers);
        assert_eq!(bytes_of(&a, Cause::Deleted), 100);
        assert_eq!(bytes_of(&a, Cause::PipCache), 0);
    }

    #[test]
    fn a_hard_linked_package_cache_frees_nothing() {
        let layers = vec![index(vec![
            file("opt/conda/conda-meta/x.json", 1, 1),
            file("opt/conda/pkgs/numpy/lib/core.so", 900, 2),
            entry(
                "opt/conda/lib/core.so",
                EntryKind::HardLink,
                Some("opt/conda/pkgs/numpy/lib/core.so"),
            ),
            file("opt/conda/pkgs/numpy.tar.bz2", 400, 3),
        ])];
        assert_eq!(bytes_of(&audit(&layers), Cause::CondaCache), 400);
    }

    #[test]
    fn pkgs_outside_a_conda_root_is_not_a_conda_cache() {
        let layers = vec![index(vec![file("srv/pkgs/data.bin", 100, 1)])];
        assert_eq!(audit(&layers).wasted_bytes, 0);
    }

    #[test]
    fn a_shared_layer_is_counted_once_host_wide() {
        let base = index(vec![
            file("opt/conda/conda-meta/h", 1, 1),
            file("opt/conda/pkgs/a.conda", 700, 2),
        ]);
        let child = |n: u128| index(vec![file("app/x", 10, n)]);
        let (c1, c2, c3) = (child(10), child(11), child(12));
        let tags = [
            vec!["a:1".to_string()],
            vec!["b:1".to_string()],
            vec!["c:1".to_string()],
        ];
        let images: Vec<(&str, &[String], Vec<LayerRef<'_>>)> = [
            ("sha256:a", &c1, "da"),
            ("sha256:b", &c2, "db"),
            ("sha256:c", &c3, "dc"),
        ]
        .iter()
        .zip(&tags)
        .map(|((id, c, d), t)| {
            (
                *id,
                t.as_slice(),
                vec![
                    LayerRef {
                        diff_id: "base",
                        created_by: "RUN conda install",
                        index: &base,
                    },
                    LayerRef {
                        diff_id: d,
                        created_by: "COPY",
                        index: c,
                    },
                ],
            )
        })
        .collect();
        let host = host_view(&images);
        assert_eq!(host.len(), 1);
        assert_eq!(
            (host[0].bytes, host[0].images, host[0].cause),
            (700, 3, Cause::CondaCache)
        );
    }
}
