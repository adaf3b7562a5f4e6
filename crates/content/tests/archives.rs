//! Hand-written archives in every layout and compression the engine may produce, and broken
//! ones: each parses to the same images and file lists, or fails with a message naming the
//! image and the layer.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::io::Write;

use dockgc_content::archive::ArchiveError;
use dockgc_content::{audit_image, read_archive, Cause, LayerRef};
use sha2::{Digest, Sha256};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
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
enum Zip {
    None,
    Gzip,
    Zstd,
}

fn compress(data: &[u8], zip: Zip) -> Vec<u8> {
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
fn layers() -> Vec<Vec<u8>> {
    vec![
        tar(&[
            ("opt/conda/conda-meta/history", b"x"),
            ("opt/conda/pkgs/numpy-2.0.conda", &[1u8; 3000]),
            ("tmp/build.log", &[2u8; 500]),
        ]),
        tar(&[("tmp/.wh.build.log", b"")]),
    ]
}

fn config(layers: &[Vec<u8>]) -> Vec<u8> {
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

fn add(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, path, data).unwrap();
}

/// The legacy layout; the second image reaches the first's top layer through a symlink, as
/// `docker save` writes a layer twice.
fn legacy() -> Vec<u8> {
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
fn oci(zip: Zip, docker_manifest: bool) -> Vec<u8> {
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

fn check(archive: &[u8], images: usize) {
    let a = read_archive(archive).unwrap();
    assert_eq!(a.images.len(), images);
    let image = &a.images[0];
    assert_eq!(image.tags, vec!["ml/base:v1".to_string()]);
    assert_eq!(image.layers.len(), 2);
    assert_eq!(
        image.layers[0].created_by,
        "/bin/sh -c conda install -y numpy"
    );
    assert_eq!(image.layers[1].created_by, "/bin/sh -c rm /tmp/build.log");
    let refs: Vec<LayerRef<'_>> = image
        .layers
        .iter()
        .map(|l| LayerRef {
            diff_id: &l.diff_id,
            created_by: &l.created_by,
            index: &a.layers[&l.diff_id],
        })
        .collect();
    let audit = audit_image(&image.id, &image.tags, &refs);
    let of = |c: Cause| {
        audit
            .findings
            .iter()
            .filter(|f| f.cause == c)
            .map(|f| f.bytes)
            .sum::<u64>()
    };
    assert_eq!(of(Cause::CondaCache), 3000);
    assert_eq!(of(Cause::Deleted), 500);
    assert_eq!(audit.bytes, 3501);
}

#[test]
fn legacy_layout_with_shared_layers() {
    check(&legacy(), 2);
}

#[test]
fn oci_layout_in_every_compression_with_and_without_a_docker_manifest() {
    for zip in [Zip::None, Zip::Gzip, Zip::Zstd] {
        check(&oci(zip, true), 1);
        check(&oci(zip, false), 1);
    }
}

#[test]
fn a_truncated_archive_names_where_it_broke() {
    let whole = legacy();
    for cut in [whole.len() / 4, whole.len() / 2, whole.len() - 1100] {
        let err = read_archive(&whole[..cut]).unwrap_err().to_string();
        assert!(
            err.contains(".json")
                || err.contains("layer.tar")
                || err.contains("manifest.json is missing")
                || err.contains("neither manifest.json"),
            "{cut}: {err}"
        );
    }
}

#[test]
fn a_malformed_layer_names_the_image_and_the_layer() {
    // A gzip blob that is not gzip inside: magic bytes, then garbage.
    let mut archive = oci(Zip::Gzip, true);
    let gz = compress(&layers()[0], Zip::Gzip);
    let at = archive
        .windows(gz.len())
        .position(|w| w == gz.as_slice())
        .unwrap();
    for b in &mut archive[at + 12..at + 40] {
        *b ^= 0x5a;
    }
    let err = read_archive(&archive[..]).unwrap_err();
    assert!(matches!(err, ArchiveError::Layer { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("image ml/base:v1: layer 1 (sha256:"),
        "{text}"
    );
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    for junk in [&b""[..], b"{}", &[0u8; 1024][..], &[0xffu8; 3000][..]] {
        assert!(read_archive(junk).is_err());
    }
}
