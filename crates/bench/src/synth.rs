//! Images made up for a trace: every trace layer becomes a tar of one file of exactly its
//! bytes (pseudo-random, seeded by the layer's ID, so the same layer is the same diff ID in
//! every image and every run), and every trace image a `docker save` archive that carries
//! only the layers the engine lacks — what a registry pull would download.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use dockgc_core::trace::TraceLayer;
use sha2::{Digest, Sha256};

/// Deterministic bytes: SplitMix64 seeded by a hash of `seed`.
pub fn noise(seed: &str, len: u64) -> Vec<u8> {
    let mut state = u64::from_le_bytes(
        Sha256::digest(seed.as_bytes())[..8]
            .try_into()
            .unwrap_or([0; 8]),
    );
    let mut out = Vec::with_capacity(len as usize + 8);
    while (out.len() as u64) < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len as usize);
    out
}

/// A tar holding one file `name` of `len` deterministic bytes.
pub fn one_file_tar(name: &str, seed: &str, len: u64) -> Vec<u8> {
    let data = noise(seed, len);
    let mut builder = tar::Builder::new(Vec::with_capacity(len as usize + 2048));
    let mut header = tar::Header::new_gnu();
    header.set_size(len);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    // Writing into a Vec cannot fail; a too-long name would, and ours are short.
    builder
        .append_data(&mut header, name, data.as_slice())
        .expect("appending to an in-memory tar cannot fail");
    builder
        .into_inner()
        .expect("finishing an in-memory tar cannot fail")
}

/// One trace image as the engine will know it.
#[derive(Debug, Clone)]
pub struct Made {
    /// `sha256:…` image ID.
    pub id: String,
    /// The config JSON (its digest is the ID).
    pub config: Vec<u8>,
    /// Diff IDs, bottom first.
    pub diff_ids: Vec<String>,
    /// Chain IDs, bottom first.
    pub chain_ids: Vec<String>,
    /// The trace's layers.
    pub layers: Vec<TraceLayer>,
}

/// Makes images and remembers them, so that an image loaded again is the same image.
#[derive(Debug, Default)]
pub struct Workshop {
    diff_ids: HashMap<String, String>,
    images: HashMap<String, Made>,
}

fn layer_tar(layer: &TraceLayer) -> Vec<u8> {
    // Not under /data: a volume mounted there would get a copy of the image's files.
    one_file_tar(&format!("layers/{}", layer.id), &layer.id, layer.bytes)
}

impl Workshop {
    /// The image for trace image `image`, made at its first build (`created` is RFC 3339).
    pub fn image(&mut self, image: &str, layers: &[TraceLayer], created: &str) -> Made {
        if let Some(made) = self.images.get(image) {
            return made.clone();
        }
        let diff_ids: Vec<String> = layers
            .iter()
            .map(|l| {
                self.diff_ids
                    .entry(l.id.clone())
                    .or_insert_with(|| format!("sha256:{:x}", Sha256::digest(layer_tar(l))))
                    .clone()
            })
            .collect();
        let history: Vec<serde_json::Value> = layers
            .iter()
            .map(|l| serde_json::json!({"created": created, "created_by": format!("layer {}", l.id)}))
            .collect();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {"Cmd": ["/job"], "Labels": {"dockgc.bench.image": image}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        })
        .to_string()
        .into_bytes();
        let made = Made {
            id: format!("sha256:{:x}", Sha256::digest(&config)),
            config,
            chain_ids: dockgc_docker::convert::chain_ids(&diff_ids),
            diff_ids,
            layers: layers.to_vec(),
        };
        self.images.insert(image.to_string(), made.clone());
        made
    }

    /// Trace image `image` as made at its first build, if it was built.
    pub fn made(&self, image: &str) -> Option<&Made> {
        self.images.get(image)
    }

    /// A `docker save` archive of `made`, tagged `tag` if given, carrying the layers for
    /// which `present` is false. Returns it and the trace bytes of the layers it carries.
    pub fn archive(
        &self,
        made: &Made,
        tag: Option<&str>,
        present: impl Fn(&str) -> bool,
    ) -> (Vec<u8>, u64) {
        let mut builder = tar::Builder::new(Vec::new());
        let hex_id = made.id.trim_start_matches("sha256:");
        let mut carried = 0;
        let mut paths = Vec::new();
        for ((layer, diff), chain) in made.layers.iter().zip(&made.diff_ids).zip(&made.chain_ids) {
            let path = format!("{}/layer.tar", diff.trim_start_matches("sha256:"));
            if !present(chain) {
                append(&mut builder, &path, &layer_tar(layer));
                carried += layer.bytes;
            }
            paths.push(path);
        }
        append(&mut builder, &format!("{hex_id}.json"), &made.config);
        let manifest = serde_json::json!([{
            "Config": format!("{hex_id}.json"),
            "RepoTags": tag.map(|t| vec![t]),
            "Layers": paths,
        }]);
        append(
            &mut builder,
            "manifest.json",
            manifest.to_string().as_bytes(),
        );
        let tar = builder
            .into_inner()
            .expect("finishing an in-memory tar cannot fail");
        (tar, carried)
    }
}

fn append(builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut header, path, data)
        .expect("appending to an in-memory tar cannot fail");
}

/// Where overlay2 keeps a layer's metadata: present while any image holds the layer.
pub fn layer_dir(root: &Path, chain_id: &str) -> PathBuf {
    root.join("image/overlay2/layerdb/sha256")
        .join(chain_id.trim_start_matches("sha256:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(id: &str, bytes: u64) -> TraceLayer {
        TraceLayer {
            id: id.into(),
            bytes,
        }
    }

    #[test]
    fn a_shared_layer_is_one_diff_id_and_an_archive_carries_only_missing_layers() {
        let mut shop = Workshop::default();
        let a = shop.image("a", &[layer("os", 3000), layer("app-a", 100)], "t");
        let b = shop.image("b", &[layer("os", 3000), layer("app-b", 200)], "t");
        assert_eq!(a.diff_ids[0], b.diff_ids[0]);
        assert_ne!(a.diff_ids[1], b.diff_ids[1]);
        assert_ne!(a.id, b.id);
        // The same image again is the same image.
        assert_eq!(shop.image("a", &[], "later").id, a.id);
        let (_, all) = shop.archive(&b, Some("b:1"), |_| false);
        assert_eq!(all, 3200);
        let os_chain = a.chain_ids[0].clone();
        let (tar, carried) = shop.archive(&b, Some("b:1"), |c| c == os_chain);
        assert_eq!(carried, 200);
        let names: Vec<String> = tar::Archive::new(tar.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}"); // app layer, config, manifest
        assert!(names.contains(&"manifest.json".to_string()));
    }
}
