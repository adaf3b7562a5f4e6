//! Test images written as docker-save archives (full control over layers, tags, dates, labels
//! and whiteouts), and the ML-host population the end-to-end tests load.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use crate::harness::PrivateEngine;

/// One layer: an uncompressed tar and its diff ID.
#[derive(Clone)]
pub struct Layer {
    tar: Vec<u8>,
    diff_id: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Layer {
    /// A layer holding `files` (path, content); paths starting with `.wh.` in their file name
    /// are whiteouts.
    pub fn new(files: &[(&str, Vec<u8>)]) -> Self {
        let mut builder = tar::Builder::new(Vec::new());
        let mut dirs = std::collections::BTreeSet::new();
        for (path, _) in files {
            let mut p = std::path::Path::new(path).parent();
            while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
                dirs.insert(d.to_path_buf());
                p = d.parent();
            }
        }
        for d in dirs {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            h.set_mtime(1_600_000_000);
            builder.append_data(&mut h, format!("{}/", d.display()), std::io::empty()).unwrap();
        }
        for (path, content) in files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o755);
            h.set_size(content.len() as u64);
            h.set_mtime(1_600_000_000);
            builder.append_data(&mut h, path, content.as_slice()).unwrap();
        }
        let tar = builder.into_inner().unwrap();
        let diff_id = format!("sha256:{}", hex(&Sha256::digest(&tar)));
        Self { tar, diff_id }
    }

    /// A layer with one file of `size` pseudo-random bytes.
    pub fn random(path: &str, size: usize, seed: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut data = vec![0u8; size];
        rng.fill(&mut data[..]);
        Self::new(&[(path, data)])
    }

    /// The busybox layer: `/bin/busybox` from Debian's busybox-static.
    pub fn busybox() -> Self {
        let data = std::fs::read("/usr/bin/busybox")
            .expect("/usr/bin/busybox (apt-get install busybox-static)");
        Self::new(&[("bin/busybox", data)])
    }
}

/// An image to write into an archive.
#[derive(Clone)]
pub struct Image {
    /// Tags (`repo:tag`); none for an untagged image.
    pub tags: Vec<String>,
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Distinguishes configs of otherwise equal images.
    pub comment: String,
}

impl Image {
    /// An image of `layers` with `tags`.
    pub fn new(tags: &[&str], layers: Vec<Layer>) -> Self {
        Self {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            layers,
            labels: BTreeMap::new(),
            comment: String::new(),
        }
    }

    fn config(&self) -> Vec<u8> {
        let history: Vec<_> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, _)| serde_json::json!({"created": "2024-01-01T00:00:00Z", "created_by": format!("COPY layer {i} # {}", self.comment)}))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "comment": self.comment,
            "config": {"Labels": self.labels, "Cmd": ["/bin/busybox", "sleep", "3600"]},
            "rootfs": {"type": "layers", "diff_ids": self.layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
            "history": history,
        }))
        .unwrap()
    }
}

/// Writes images into one docker-save archive.
pub fn archive(images: &[Image]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut manifest = Vec::new();
    let mut written = std::collections::HashSet::new();
    let mut add = |builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_600_000_000);
        builder.append_data(&mut h, path, data).unwrap();
    };
    for image in images {
        let config = image.config();
        let config_name = format!("{}.json", hex(&Sha256::digest(&config)));
        add(&mut builder, &config_name, &config);
        let mut layer_paths = Vec::new();
        for layer in &image.layers {
            let dir = layer.diff_id.trim_start_matches("sha256:").to_string();
            let path = format!("{dir}/layer.tar");
            if written.insert(dir.clone()) {
                add(&mut builder, &path, &layer.tar);
            }
            layer_paths.push(path);
        }
        manifest.push(serde_json::json!({
            "Config": config_name,
            "RepoTags": if image.tags.is_empty() { serde_json::Value::Null } else { serde_json::json!(image.tags) },
            "Layers": layer_paths,
        }));
    }
    add(&mut builder, "manifest.json", &serde_json::to_vec(&manifest).unwrap());
    builder.into_inner().unwrap()
}

/// Loads images into the engine.
pub fn load(engine: &PrivateEngine, images: &[Image]) {
    let path = engine.scratch().join("load.tar");
    std::fs::write(&path, archive(images)).unwrap();
    engine.docker(&["load", "-q", "-i", path.to_str().unwrap()]);
    std::fs::remove_file(path).unwrap();
}

/// What the ML population contains, for assertions.
pub struct Population {
    /// Base tags.
    pub bases: Vec<String>,
    /// Child tags, in load order.
    pub children: Vec<String>,
    /// Containers that keep running.
    pub running: Vec<String>,
    /// Named volume in use.
    pub named_in_use: String,
    /// Named volume unused.
    pub named_unused: String,
    /// Tag protected by a keep label.
    pub labelled: String,
}

/// Loads the ML-host population: 3 Miniconda-like bases sharing a busybox layer, 33 children
/// built on them, rebuilt tags leaving dangling images, a multi-tag image, an image whose later
/// layer deletes a file, running and stopped containers, named and anonymous volumes in use
/// and not, a custom network, and BuildKit cache.
pub fn ml_population(engine: &PrivateEngine) -> Population {
    let busybox = Layer::busybox();
    let mut bases = Vec::new();
    let mut base_images = Vec::new();
    for (i, py) in ["py39", "py310", "py311"].iter().enumerate() {
        let tag = format!("miniconda:{py}");
        let conda = Layer::random("opt/conda/lib/libpython.so", 6_000_000 + i * 500_000, 100 + i as u64);
        base_images.push(Image::new(&[&tag], vec![busybox.clone(), conda]));
        bases.push(tag);
    }
    load(engine, &base_images);
    let mut children = Vec::new();
    let mut batch = Vec::new();
    for c in 0..33usize {
        let base = &base_images[c % 3];
        let tag = format!("ml/env-{c}:v1");
        let mut layers = base.layers.clone();
        layers.push(Layer::random(&format!("opt/env/{c}.bin"), 1_000_000 + (c % 5) * 400_000, 1_000 + c as u64));
        let mut image = Image::new(&[&tag], layers);
        if c == 4 {
            image.tags.push("ml/alias:latest".into());
        }
        if c == 5 {
            image.labels.insert("dockgc.keep".into(), "true".into());
        }
        batch.push(image);
        children.push(tag);
    }
    // Load the children in a few batches so their tag times differ (oldest first).
    for chunk in batch.chunks(11) {
        load(engine, chunk);
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    // Rebuilt tags: new images under three old tags leave the old ones dangling.
    let mut rebuilt = Vec::new();
    for c in [0usize, 1, 2] {
        let mut layers = base_images[c % 3].layers.clone();
        layers.push(Layer::random(&format!("opt/env/{c}.bin"), 900_000, 5_000 + c as u64));
        rebuilt.push(Image::new(&[&format!("ml/env-{c}:v1")], layers));
    }
    load(engine, &rebuilt);
    // An image whose later layer deletes a file written by an earlier one.
    let mut layers = base_images[0].layers.clone();
    layers.push(Layer::random("tmp/big.bin", 2_000_000, 7_000));
    layers.push(Layer::new(&[("tmp/.wh.big.bin", Vec::new())]));
    load(engine, &[Image::new(&["ml/whiteout:v1"], layers)]);

    // Containers: two running, two stopped; volumes in use and not; a custom network.
    let named_in_use = "data-in-use".to_string();
    let named_unused = "data-unused".to_string();
    engine.docker(&["volume", "create", &named_in_use]);
    engine.docker(&["volume", "create", &named_unused]);
    engine.docker(&["network", "create", "--internal", "ml-net"]);
    let running = vec!["job-a".to_string(), "job-b".to_string()];
    engine.docker(&["run", "-d", "--name", "job-a", "--network", "none", "-v", "data-in-use:/data", "-v", "/scratch", &children[30], "/bin/busybox", "sleep", "3600"]);
    engine.docker(&["run", "-d", "--name", "job-b", "--network", "none", &children[31], "/bin/busybox", "sleep", "3600"]);
    engine.docker(&["run", "--name", "done-1", "--network", "none", &children[28], "/bin/busybox", "true"]);
    engine.docker(&["create", "--name", "done-2", "--network", "none", &children[29], "/bin/busybox", "true"]);
    // An anonymous volume left behind by a removed container.
    engine.docker(&["create", "--name", "gone", "--network", "none", "-v", "/cache", &children[27]]);
    engine.docker(&["rm", "gone"]);

    // BuildKit cache from a COPY-only build.
    let ctx = engine.scratch().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("payload.bin"), vec![7u8; 300_000]).unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM miniconda:py39\nCOPY payload.bin /payload.bin\n").unwrap();
    let build = engine.docker_output(&["build", "-q", "-t", "ml/built:v1", ctx.to_str().unwrap()]);
    if !build.status.success() {
        // BuildKit needs what a private engine may lack; the population is complete without it.
        eprintln!("note: BuildKit build failed: {}", String::from_utf8_lossy(&build.stderr));
    }
    Population {
        bases,
        children,
        running,
        named_in_use,
        named_unused,
        labelled: "ml/env-5:v1".into(),
    }
}
