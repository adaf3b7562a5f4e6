//! Hand-written archives in every layout and compression the engine may produce, and broken
//! ones: each parses to the same images and file lists, or fails with a message naming the
//! image and the layer.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod builders;

use builders::{compress, layers, legacy, oci, Zip};
use dockgc_content::archive::ArchiveError;
use dockgc_content::{audit_image, read_archive, scan_blob, Cause, LayerRef};

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

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

    /// Damaged archives (bytes flipped, cut short) give an error or a result, never a panic.
    #[test]
    fn damaged_archives_never_panic(
        which in 0usize..4,
        flips in proptest::collection::vec((0usize..100_000, 1u8..=255), 0..8),
        cut in 0usize..100_000,
    ) {
        let mut archive = match which {
            0 => legacy(),
            1 => oci(Zip::None, true),
            2 => oci(Zip::Gzip, false),
            _ => oci(Zip::Zstd, true),
        };
        for (at, mask) in flips {
            let n = archive.len();
            archive[at % n] ^= mask;
        }
        let cut = cut % (archive.len() + 1);
        let _ = read_archive(&archive[..cut]);
        let _ = scan_blob(&archive[..cut]);
    }
}
