//! Hand-written image archives and layers: shared by the archive tests and the fuzzers' seed
//! corpus (`examples/seeds.rs`).

#![allow(clippy::unwrap_used, dead_code)] // Test code fails loudly; not every user needs all.

use std::io::Write;

use sha2::{Digest, Sha256};

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[derive(Clone, Copy, PartialEq)]
pub enum Zip {
    None,
    Gzip,
    Zstd,
}

pub fn compress(data: &[u8], zip: Zip) -> Vec<u8> {
    match zip {
        Zip::None => data.to_vec(),
        Zip::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Zip::Zstd => zstd::encode_all(data, 3).unwrap(),
    }
}

/// Two layers: a conda install that forgot `conda clean`, then a deleted file.
pub fn layers() -> Vec<Vec<u8>> {
    vec![
        tar(&[
            ("opt/conda/conda-meta/history", b"x"),
            ("opt/conda/pkgs/numpy-2.0.conda", &[1u8; 3000]),
            ("tmp/build.log", &[2u8; 500]),
        ]),
        tar(&[("tmp/.wh.build.log", b"")]),
    ]
}

pub fn config(layers: &[Vec<u8>]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", hex(&Sha256::digest(l))))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created_by": "/bin/sh -c conda install -y numpy"},
            {"created_by": "ENV A=1", "empty_layer": true},
            {"created_by": "/bin/sh -c rm /tmp/build.log"},
        ],
    }))
    .unwrap()
}

pub fn add(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, path, data).unwrap();
}

/// The legacy layout; the second image reaches the first's top layer through a symlink, as
/// `docker save` writes a layer twice.
pub fn legacy() -> Vec<u8> {
    let layers = layers();
    let config = config(&layers);
    let config_name = format!("{}.json", hex(&Sha256::digest(&config)));
    let mut b = tar::Builder::new(Vec::new());
    add(&mut b, &config_name, &config);
    add(&mut b, "aaa/layer.tar", &layers[0]);
    add(&mut b, "aaa/json", b"{}");
    add(&mut b, "bbb/layer.tar", &layers[1]);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "ccc/layer.tar", "../bbb/layer.tar")
        .unwrap();
    let manifest = serde_json::json!([
        {"Config": config_name, "RepoTags": ["ml/base:v1"], "Layers": ["aaa/layer.tar", "bbb/layer.tar"]},
        {"Config": config_name, "RepoTags": ["ml/alias:v1"], "Layers": ["aaa/layer.tar", "ccc/layer.tar"]},
    ]);
    add(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    b.into_inner().unwrap()
}

/// The OCI layout with compressed blobs; with `docker_manifest`, a `manifest.json` last as
/// Engine 25+ writes it.
pub fn oci(zip: Zip, docker_manifest: bool) -> Vec<u8> {
    let layers = layers();
    let config = config(&layers);
    let blob = |data: &[u8]| {
        (
            format!("sha256:{}", hex(&Sha256::digest(data))),
            data.to_vec(),
        )
    };
    let blobs: Vec<(String, Vec<u8>)> = layers.iter().map(|l| blob(&compress(l, zip))).collect();
    let (config_digest, config) = blob(&config);
    let media = match zip {
        Zip::None => "application/vnd.oci.image.layer.v1.tar",
        Zip::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Zip::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    };
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": blobs.iter().map(|(d, b)| serde_json::json!({"mediaType": media, "digest": d, "size": b.len()})).collect::<Vec<_>>(),
    }))
    .unwrap();
    let (manifest_digest, manifest) = blob(&manifest);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest.len(),
                       "annotations": {"io.containerd.image.name": "ml/base:v1"}}],
    }))
    .unwrap();
    let path = |d: &str| format!("blobs/{}", d.replacen(':', "/", 1));
    let mut entries: Vec<(String, Vec<u8>)> = vec![(
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    for (d, b) in &blobs {
        entries.push((path(d), b.clone()));
    }
    entries.push((path(&config_digest), config));
    entries.push((path(&manifest_digest), manifest));
    entries.push(("index.json".into(), index));
    if docker_manifest {
        let m = serde_json::json!([{"Config": path(&config_digest), "RepoTags": ["ml/base:v1"], "Layers": blobs.iter().map(|(d, _)| path(d)).collect::<Vec<_>>()}]);
        entries.push(("manifest.json".into(), serde_json::to_vec(&m).unwrap()));
    }
    let refs: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    tar(&refs)
}
