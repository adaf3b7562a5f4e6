//! Writes docker-save archives of ML-like images for the audit benchmark (`bench/audit`):
//! each image has a conda-like layer of many small and a few large files, an application
//! layer, and the usual waste (a package cache, a deleted download).
//! Usage: `audit_population OUT_DIR [IMAGES] [MB_PER_IMAGE]` → OUT_DIR/img-N.tar.

#![allow(clippy::unwrap_used)] // A developer tool: fail loudly.

#[path = "../tests/e2e/archive.rs"]
mod archive;

use archive::{Image, Layer};
use rand::{Rng, SeedableRng};

fn main() {
    let mut args = std::env::args().skip(1);
    let out = std::path::PathBuf::from(
        args.next()
            .expect("usage: audit_population OUT_DIR [IMAGES] [MB_PER_IMAGE]"),
    );
    let images: u64 = args.next().map_or(4, |a| a.parse().unwrap());
    let mb: usize = args.next().map_or(520, |a| a.parse().unwrap());
    std::fs::create_dir_all(&out).unwrap();
    let busybox = Layer::busybox();
    for n in 0..images {
        let mut rng = rand::rngs::StdRng::seed_from_u64(n);
        let mut fill = |size: usize| {
            let mut v = vec![0u8; size];
            rng.fill(&mut v[..]);
            v
        };
        let budget = mb * 1_000_000;
        // ~60 % in 20 kB files (a site-packages tree), ~25 % in 10 MB files (shared
        // libraries), ~10 % in a package cache, ~5 % downloaded then deleted.
        let small = budget * 60 / 100 / 20_000;
        let mut files: Vec<(String, usize)> = vec![("opt/conda/conda-meta/history".into(), 1)];
        for i in 0..small {
            files.push((
                format!("opt/conda/lib/python3.12/site-packages/p{}/m{i}.py", i / 50),
                20_000,
            ));
        }
        for i in 0..budget * 25 / 100 / 10_000_000 {
            files.push((format!("opt/conda/lib/libbig{i}.so"), 10_000_000));
        }
        for i in 0..budget * 10 / 100 / 5_000_000 {
            files.push((format!("opt/conda/pkgs/pkg{i}-1.0.conda"), 5_000_000));
        }
        files.push(("tmp/dataset.tar".into(), budget * 5 / 100));
        let env: Vec<(&str, Vec<u8>)> = files
            .iter()
            .map(|(p, size)| (p.as_str(), fill(*size)))
            .collect();
        let layers = vec![
            busybox.clone(),
            Layer::new(&env).made_by("/bin/sh -c conda install -y pytorch"),
            Layer::new(&[
                ("tmp/.wh.dataset.tar", Vec::new()),
                ("app/main.py", fill(50_000)),
            ])
            .made_by("/bin/sh -c rm /tmp/dataset.tar"),
        ];
        let image = Image::new(&[&format!("bench/ml-{n}:v1")], layers);
        std::fs::write(out.join(format!("img-{n}.tar")), archive::archive(&[image])).unwrap();
    }
}
