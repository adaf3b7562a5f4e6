//! Writes a docker-save archive of a realistic ML host population, for `scripts/demo` and the
//! benchmarks: Miniconda-like bases sharing an OS layer, environment images built on them,
//! and rebuilt tags that leave the previous builds dangling.
//!
//! Usage: `cargo run --example ml_population -- OUT.tar [CHILDREN] [SCALE_MB] [NAME]`
//! (NAME, default `ml`, names the env repositories and seeds their content, so populations of
//! different names share only the bases).

#![allow(clippy::unwrap_used)] // Tests and examples fail loudly by design.

#[path = "../tests/e2e/archive.rs"]
mod archive;

use archive::{Image, Layer};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(out) = args.next() else {
        eprintln!("usage: ml_population OUT.tar [CHILDREN] [SCALE_MB]");
        std::process::exit(2);
    };
    let children: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(40);
    let scale_mb: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    let name = args.next().unwrap_or_else(|| "ml".to_string());
    let salt: u64 = name
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(131).wrapping_add(u64::from(b)))
        % 1_000_000
        * 100_000;
    let mb = 1_000_000;
    let os = Layer::busybox();
    let bases: Vec<Image> = ["py39", "py310", "py311", "py312"]
        .iter()
        .enumerate()
        .map(|(i, py)| {
            let conda = Layer::random(
                "opt/conda/lib/libpython.so",
                scale_mb * 5 * mb + i * mb,
                10 + i as u64,
            );
            Image::new(&[&format!("miniconda:{py}")], vec![os.clone(), conda])
        })
        .collect();
    let mut images = bases.clone();
    for c in 0..children {
        let mut layers = bases[c % bases.len()].layers.clone();
        let size = scale_mb * mb / 2 + (c % 7) * scale_mb * mb / 4;
        layers.push(Layer::random(
            &format!("opt/env/{c}/site-packages.bin"),
            size,
            salt + 100 + c as u64,
        ));
        images.push(Image::new(&[&format!("{name}/env-{c}:latest")], layers));
    }
    // Rebuilds of every fifth tag: the earlier builds become dangling on load.
    for c in (0..children).step_by(5) {
        let mut layers = bases[c % bases.len()].layers.clone();
        layers.push(Layer::random(
            &format!("opt/env/{c}/site-packages.bin"),
            scale_mb * mb / 2,
            salt + 10_000 + c as u64,
        ));
        images.push(Image::new(&[&format!("{name}/env-{c}:latest")], layers));
    }
    std::fs::write(&out, archive::archive(&images)).unwrap_or_else(|e| {
        eprintln!("cannot write {out}: {e}");
        std::process::exit(2);
    });
    eprintln!("wrote {} images to {out}", images.len());
}
