//! docker-save archives written from scratch: full control over layers, tags, labels and
//! whiteouts. Shared by the end-to-end tests and the demo's population example.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

/// One layer: an uncompressed tar and its diff ID.
#[derive(Clone)]
pub struct Layer {
    tar: Vec<u8>,
    diff_id: String,
    /// The history's `created_by` for it (default: `COPY layer N`).
    command: Option<String>,
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
            builder
                .append_data(&mut h, format!("{}/", d.display()), std::io::empty())
                .unwrap();
        }
        for (path, content) in files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o755);
            h.set_size(content.len() as u64);
            h.set_mtime(1_600_000_000);
            builder
                .append_data(&mut h, path, content.as_slice())
                .unwrap();
        }
        let tar = builder.into_inner().unwrap();
        let diff_id = format!("sha256:{}", hex(&Sha256::digest(&tar)));
        Self {
            tar,
            diff_id,
            command: None,
        }
    }

    /// The same layer, made by `command` in the image history.
    #[allow(dead_code)] // Not every user of this file names commands.
    pub fn made_by(mut self, command: &str) -> Self {
        self.command = Some(command.to_string());
        self
    }

    /// A layer with one file of `size` pseudo-random bytes.
    #[allow(dead_code)] // Not every user of this file needs it.
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
            .map(|(i, l)| serde_json::json!({"created": "2024-01-01T00:00:00Z", "created_by": l.command.clone().unwrap_or_else(|| format!("COPY layer {i} # {}", self.comment))}))
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
    let add = |builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]| {
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
    add(
        &mut builder,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    builder.into_inner().unwrap()
}
