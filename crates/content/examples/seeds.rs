//! Writes the fuzzers' seed corpus: valid archives in every layout and compression, and
//! layer blobs. Usage: `seeds DIR` (writes DIR/archive/* and DIR/layer/*).

#![allow(clippy::unwrap_used)] // A developer tool: fail loudly.

#[path = "../tests/builders/mod.rs"]
mod builders;

use builders::{compress, layers, legacy, oci, Zip};

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("usage: seeds DIR"));
    let archive = dir.join("archive");
    let layer = dir.join("layer");
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::create_dir_all(&layer).unwrap();
    std::fs::write(archive.join("legacy.tar"), legacy()).unwrap();
    for (name, zip) in [
        ("plain", Zip::None),
        ("gzip", Zip::Gzip),
        ("zstd", Zip::Zstd),
    ] {
        std::fs::write(archive.join(format!("oci-{name}.tar")), oci(zip, true)).unwrap();
        std::fs::write(
            archive.join(format!("oci-{name}-index-only.tar")),
            oci(zip, false),
        )
        .unwrap();
        for (i, l) in layers().iter().enumerate() {
            std::fs::write(layer.join(format!("{name}-{i}")), compress(l, zip)).unwrap();
        }
    }
}
