//! `dockgc audit`: the waste baked into images, per image and host-wide.
//!
//! Layers are read from the engine's layer directories when dockgc runs on the host and can
//! read the Docker root (fast, no temporary copy in the daemon), else from `docker save`
//! streamed through the export API and parsed on the fly, or from an archive file. Each
//! layer's file list is kept in the state database: layers never change, so a second audit
//! of the host reads nothing but the database.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use dockgc_content::waste::{image_name, AUDIT_VERSION};
use dockgc_content::{
    audit_image, host_view, read_archive, Archive, HostFinding, ImageAudit, ImageLayer, LayerIndex,
    LayerRef,
};
use dockgc_core::model::{format_bytes, short_id};
use dockgc_docker::Engine;
use serde::Serialize;

use crate::store::Store;

/// Where layers are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The layer directories when readable here, else the export API.
    Auto,
    /// `GET /images/{id}/get` (docker save), streamed.
    Export,
    /// The engine's overlay2 layer directories (on the engine's host, as root).
    Host,
}

/// The report of `dockgc audit --format json`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// [`AUDIT_VERSION`].
    pub version: u32,
    /// Where layers came from (`host`, `export`, `archive`, `cache`).
    pub source: String,
    /// Per image, largest first.
    pub images: Vec<ImageAudit>,
    /// Host-wide, each layer counted once, largest first.
    pub host: Vec<HostFinding>,
    /// Images not audited because the disk is above the high watermark (export needs
    /// temporary space).
    pub deferred: Vec<String>,
    /// Layers read now (the rest came from the state database).
    pub layers_read: usize,
    /// Bytes of layer content read now.
    pub bytes_read: u64,
}

/// What to audit and how.
pub struct Job<'a> {
    /// Image references (tags or IDs); all images when empty.
    pub images: &'a [String],
    /// The layer source.
    pub source: Source,
    /// The high watermark's used bytes on the Docker filesystem: exports wait above it.
    pub defer_above: Option<dockgc_core::policy::Watermark>,
}

/// One image to audit.
struct Target {
    id: String,
    tags: Vec<String>,
    bytes: u64,
}

/// What is known so far: images' layers and layers' files.
#[derive(Default)]
struct Known {
    images: HashMap<String, Vec<ImageLayer>>,
    layers: HashMap<String, LayerIndex>,
    layers_read: usize,
    bytes_read: u64,
}

impl Known {
    fn complete(&self, id: &str) -> bool {
        self.images
            .get(id)
            .is_some_and(|ls| ls.iter().all(|l| self.layers.contains_key(&l.diff_id)))
    }

    fn absorb(&mut self, archive: Archive, store: Option<&Store>) {
        for image in archive.images {
            self.keep_image(image.id, image.layers, store);
        }
        for (diff_id, index) in archive.layers {
            self.keep_layer(diff_id, index, store);
        }
    }

    fn keep_image(&mut self, id: String, layers: Vec<ImageLayer>, store: Option<&Store>) {
        if let Some(s) = store {
            if let Err(e) = s.save_image_layers(&id, &layers) {
                tracing::warn!("cannot keep the layers of {id}: {e:#}");
            }
        }
        self.images.insert(id, layers);
    }

    fn keep_layer(&mut self, diff_id: String, index: LayerIndex, store: Option<&Store>) {
        self.layers_read += 1;
        self.bytes_read += index.bytes;
        if let Some(s) = store {
            if let Err(e) = s.save_layer_scan(&diff_id, &index) {
                tracing::warn!("cannot keep the scan of layer {diff_id}: {e:#}");
            }
        }
        self.layers.insert(diff_id, index);
    }
}

/// A `Read` over chunks arriving from the async side: parsing runs on a blocking thread
/// while at most a few chunks wait in the channel (memory stays bounded).
struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, String>>,
    current: Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

async fn export(engine: &Engine, ids: &[String]) -> Result<Archive> {
    let mut stream = engine.export_images(ids).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let parse = tokio::task::spawn_blocking(move || {
        read_archive(ChunkReader {
            rx,
            current: Bytes::new(),
        })
    });
    loop {
        match stream.next_chunk().await {
            Ok(Some(chunk)) => {
                if tx.send(Ok(chunk)).await.is_err() {
                    break; // The parser stopped (an error it reports).
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = tx.send(Err(e.to_string())).await;
                break;
            }
        }
    }
    drop(tx);
    Ok(parse.await.context("the archive parser panicked")??)
}

/// Audits a host's images.
pub async fn audit_engine(engine: &Engine, store: Option<&Store>, job: Job<'_>) -> Result<Report> {
    let snapshot = engine.snapshot(chrono::Utc::now().timestamp()).await?;
    let layer_bytes: HashMap<&str, u64> = snapshot
        .layers
        .iter()
        .map(|l| (l.chain_id.as_str(), l.bytes))
        .collect();
    let size = |image: &dockgc_core::model::Image| -> u64 {
        image
            .layers
            .iter()
            .filter_map(|c| layer_bytes.get(c.as_str()))
            .sum()
    };
    let mut targets: Vec<Target> = Vec::new();
    if job.images.is_empty() {
        for image in &snapshot.images {
            targets.push(Target {
                id: image.id.clone(),
                tags: image.tags.clone(),
                bytes: size(image),
            });
        }
    } else {
        for reference in job.images {
            let Some(found) = engine.inspect_image(reference).await? else {
                bail!("no such image: {reference}");
            };
            let bytes = snapshot
                .images
                .iter()
                .find(|i| i.id == found.id)
                .map_or(0, size);
            if !targets.iter().any(|t| t.id == found.id) {
                targets.push(Target {
                    id: found.id,
                    tags: found.tags,
                    bytes,
                });
            }
        }
    }
    targets.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.id.cmp(&b.id)));

    let mut known = Known::default();
    // What earlier audits kept.
    if let Some(s) = store {
        for t in &targets {
            if let Some(layers) = s.image_layers(&t.id)? {
                for l in &layers {
                    if !known.layers.contains_key(&l.diff_id) {
                        if let Some(index) = s.layer_scan(&l.diff_id)? {
                            known.layers.insert(l.diff_id.clone(), index);
                        }
                    }
                }
                known.images.insert(t.id.clone(), layers);
            }
        }
    }
    let host = engine.host().filter(|h| {
        targets.iter().find_map(|t| {
            let config = h.image_config(&t.id)?;
            let diff_ids = dockgc_content::archive::parse_config(&config).ok()?.0;
            let chain = dockgc_docker::convert::chain_ids(&diff_ids);
            Some(chain.first().and_then(|c| h.layer_diff_dir(c)).is_some())
        }) != Some(false)
    });
    let source = match (job.source, host) {
        (Source::Host, None) => bail!(
            "cannot read the engine's layer directories here (dockgc must run on the engine's host, as root, with the overlay2 driver); use --source export"
        ),
        (Source::Host | Source::Auto, Some(h)) => Some(h),
        (Source::Export, _) | (Source::Auto, None) => None,
    };
    let mut deferred = Vec::new();
    let pending: Vec<&Target> = targets.iter().filter(|t| !known.complete(&t.id)).collect();
    let progress = progress_bar(pending.len() as u64);
    match source {
        Some(host) => {
            for t in &pending {
                progress.set_message(image_name(&t.id, &t.tags));
                let config = host.image_config(&t.id).with_context(|| {
                    format!(
                        "image {}: its config is not readable in {}",
                        image_name(&t.id, &t.tags),
                        host.root().display()
                    )
                })?;
                let (diff_ids, commands) = dockgc_content::archive::parse_config(&config)
                    .map_err(|e| anyhow::anyhow!("image {}: {e}", image_name(&t.id, &t.tags)))?;
                let chains = dockgc_docker::convert::chain_ids(&diff_ids);
                let layers: Vec<ImageLayer> = diff_ids
                    .iter()
                    .zip(commands)
                    .map(|(d, c)| ImageLayer {
                        diff_id: d.clone(),
                        created_by: c,
                    })
                    .collect();
                for (i, (layer, chain)) in layers.iter().zip(&chains).enumerate() {
                    if known.layers.contains_key(&layer.diff_id) {
                        continue;
                    }
                    let dir = host.layer_diff_dir(chain).with_context(|| {
                        format!(
                            "image {}: layer {} ({}): its directory is not readable",
                            image_name(&t.id, &t.tags),
                            i + 1,
                            layer.diff_id
                        )
                    })?;
                    let index = tokio::task::spawn_blocking(move || dockgc_content::scan_dir(&dir))
                        .await
                        .context("the layer scanner panicked")?
                        .map_err(|e| {
                            anyhow::anyhow!(
                                "image {}: layer {} ({}): {e}",
                                image_name(&t.id, &t.tags),
                                i + 1,
                                layer.diff_id
                            )
                        })?;
                    known.keep_layer(layer.diff_id.clone(), index, store);
                }
                known.keep_image(t.id.clone(), layers, store);
                progress.inc(1);
            }
        }
        None => {
            for t in &pending {
                if known.complete(&t.id) {
                    progress.inc(1);
                    continue;
                }
                let name = image_name(&t.id, &t.tags);
                if let (Some(mark), Some(fs)) = (job.defer_above, engine.filesystem_as_is()) {
                    if fs.used_bytes > mark.used_bytes_on(&fs) {
                        deferred.push(name);
                        progress.inc(1);
                        continue;
                    }
                }
                progress.set_message(name.clone());
                let archive = export(engine, std::slice::from_ref(&t.id))
                    .await
                    .with_context(|| format!("exporting {name} ({})", short_id(&t.id)))?;
                known.absorb(archive, store);
                progress.inc(1);
            }
        }
    }
    progress.finish_and_clear();
    let source = match (source, known.layers_read) {
        (_, 0) => "cache",
        (Some(_), _) => "host",
        (None, _) => "export",
    };
    let audited: Vec<(&str, &[String], Vec<LayerRef<'_>>)> = targets
        .iter()
        .filter(|t| known.complete(&t.id))
        .map(|t| {
            let layers = refs(&known.images[&t.id], &known.layers);
            (t.id.as_str(), t.tags.as_slice(), layers)
        })
        .collect();
    let (images, host) = audit_all(&audited);
    Ok(Report {
        version: AUDIT_VERSION,
        source: source.into(),
        images,
        host,
        deferred,
        layers_read: known.layers_read,
        bytes_read: known.bytes_read,
    })
}

/// Each image's audit, and the host view of the same images.
fn audit_all(
    audited: &[(&str, &[String], Vec<LayerRef<'_>>)],
) -> (Vec<ImageAudit>, Vec<HostFinding>) {
    let images = audited
        .iter()
        .map(|(id, tags, layers)| audit_image(id, tags, layers))
        .collect();
    (images, host_view(audited))
}

fn refs<'a>(layers: &'a [ImageLayer], index: &'a HashMap<String, LayerIndex>) -> Vec<LayerRef<'a>> {
    layers
        .iter()
        .map(|l| LayerRef {
            diff_id: &l.diff_id,
            created_by: &l.created_by,
            index: &index[&l.diff_id],
        })
        .collect()
}

/// Audits the images of an archive file (`-`: standard input).
pub fn audit_archive(path: &PathBuf, only: &[String]) -> Result<Report> {
    let archive = if path.as_os_str() == "-" {
        read_archive(std::io::stdin().lock())
    } else {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        read_archive(std::io::BufReader::with_capacity(1 << 20, file))
    }
    .with_context(|| format!("reading {}", path.display()))?;
    let mut seen = HashSet::new();
    let chosen: Vec<_> = archive
        .images
        .iter()
        .filter(|i| seen.insert(i.id.clone()))
        .filter(|i| {
            only.is_empty()
                || only
                    .iter()
                    .any(|r| i.tags.contains(r) || i.id.contains(r.trim_start_matches("sha256:")))
        })
        .collect();
    if !only.is_empty() && chosen.is_empty() {
        bail!("none of {} is in {}", only.join(", "), path.display());
    }
    let audited: Vec<(&str, &[String], Vec<LayerRef<'_>>)> = chosen
        .iter()
        .map(|i| {
            (
                i.id.as_str(),
                i.tags.as_slice(),
                refs(&i.layers, &archive.layers),
            )
        })
        .collect();
    let (mut images, host) = audit_all(&audited);
    images.sort_by_key(|i| std::cmp::Reverse(i.bytes));
    Ok(Report {
        version: AUDIT_VERSION,
        source: "archive".into(),
        images,
        host,
        deferred: Vec::new(),
        layers_read: archive.layers.len(),
        bytes_read: archive.layers.values().map(|l| l.bytes).sum(),
    })
}

fn progress_bar(len: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if len == 0 || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} reading layers {pos}/{len} images {wide_msg}",
    ) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// Images failing `--max-waste` or `--min-efficiency`, with why.
pub fn violations(
    report: &Report,
    max_waste: Option<u64>,
    min_efficiency: Option<f64>,
) -> Vec<String> {
    let mut out = Vec::new();
    for image in &report.images {
        let name = image_name(&image.id, &image.tags);
        if let Some(max) = max_waste {
            if image.wasted_bytes > max {
                out.push(format!(
                    "{name}: {} wasted, more than --max-waste {}",
                    format_bytes(image.wasted_bytes),
                    format_bytes(max)
                ));
            }
        }
        if let Some(min) = min_efficiency {
            if image.efficiency < min {
                out.push(format!(
                    "{name}: efficiency {:.1}%, below --min-efficiency {min}%",
                    image.efficiency
                ));
            }
        }
    }
    out
}

/// The report for people.
pub fn report_text(report: &Report, top: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if report.images.is_empty() {
        out.push_str("No images audited.\n");
    } else {
        let mut t = crate::output::table(&["IMAGE", "SIZE", "WASTED", "EFFICIENCY", "TOP CAUSE"]);
        for image in &report.images {
            let cause = image
                .findings
                .first()
                .map_or("-".to_string(), |f| f.cause.describe().to_string());
            t.add_row(vec![
                image_name(&image.id, &image.tags),
                format_bytes(image.bytes),
                format_bytes(image.wasted_bytes),
                format!("{:.1}%", image.efficiency),
                cause,
            ]);
        }
        crate::output::right(&mut t, &[1, 2, 3]);
        let _ = writeln!(out, "{}", crate::output::trimmed(&t));
    }
    let findings: Vec<(&ImageAudit, &dockgc_content::Finding)> = report
        .images
        .iter()
        .flat_map(|i| i.findings.iter().map(move |f| (i, f)))
        .collect();
    if !findings.is_empty() {
        let _ = writeln!(out, "\nFindings by image (largest first):");
        let mut sorted = findings;
        sorted.sort_by_key(|f| std::cmp::Reverse(f.1.bytes));
        for (image, f) in sorted.iter().take(top) {
            let _ = writeln!(
                out,
                "  {}  layer {}: {} {} in {} file{}{}",
                image_name(&image.id, &image.tags),
                f.layer,
                format_bytes(f.bytes),
                f.cause.describe(),
                f.files,
                if f.files == 1 { "" } else { "s" },
                f.by_layer
                    .map_or(String::new(), |b| format!(" (by layer {b})")),
            );
            let _ = writeln!(out, "      made by: {}", clip(&f.created_by, 90));
            let _ = writeln!(
                out,
                "      e.g.     {}",
                f.paths
                    .iter()
                    .take(3)
                    .map(|p| format!("/{p}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let _ = writeln!(out, "      fix:     {}", f.fix);
        }
    }
    if !report.host.is_empty() {
        let total: u64 = report.host.iter().map(|h| h.bytes).sum();
        let _ = writeln!(
            out,
            "\nOn this host (each layer counted once): {} a fix would save",
            format_bytes(total)
        );
        let mut t = crate::output::table(&["LAYER", "CAUSE", "WASTE", "IMAGES", "MADE BY"]);
        for h in report.host.iter().take(top) {
            t.add_row(vec![
                short_id(&h.diff_id).to_string(),
                h.cause.describe().to_string(),
                format_bytes(h.bytes),
                h.images.to_string(),
                clip(&h.created_by, 60),
            ]);
        }
        crate::output::right(&mut t, &[2, 3]);
        let _ = writeln!(out, "{}", crate::output::trimmed(&t));
    }
    if !report.deferred.is_empty() {
        let _ = writeln!(
            out,
            "\nDeferred (the disk is above the high watermark; exporting needs temporary space): {}",
            report.deferred.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "\nRead {} layer{} ({}) from {}.",
        report.layers_read,
        if report.layers_read == 1 { "" } else { "s" },
        format_bytes(report.bytes_read),
        report.source
    );
    out
}

fn clip(text: &str, max: usize) -> String {
    let text = text
        .trim_start_matches("/bin/sh -c ")
        .trim_start_matches("#(nop) ")
        .trim();
    if text.chars().count() <= max {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(max - 1).collect::<String>())
    }
}
