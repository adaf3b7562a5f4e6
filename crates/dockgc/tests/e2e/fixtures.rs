//! The ML-host population the end-to-end tests load.

pub use crate::archive::{archive, Image, Layer};
use crate::harness::PrivateEngine;

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
        let conda = Layer::random(
            "opt/conda/lib/libpython.so",
            6_000_000 + i * 500_000,
            100 + i as u64,
        );
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
        layers.push(Layer::random(
            &format!("opt/env/{c}.bin"),
            1_000_000 + (c % 5) * 400_000,
            1_000 + c as u64,
        ));
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
        layers.push(Layer::random(
            &format!("opt/env/{c}.bin"),
            900_000,
            5_000 + c as u64,
        ));
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
    engine.docker(&[
        "run",
        "-d",
        "--name",
        "job-a",
        "--network",
        "none",
        "-v",
        "data-in-use:/data",
        "-v",
        "/scratch",
        &children[30],
        "/bin/busybox",
        "sleep",
        "3600",
    ]);
    engine.docker(&[
        "run",
        "-d",
        "--name",
        "job-b",
        "--network",
        "none",
        &children[31],
        "/bin/busybox",
        "sleep",
        "3600",
    ]);
    engine.docker(&[
        "run",
        "--name",
        "done-1",
        "--network",
        "none",
        &children[28],
        "/bin/busybox",
        "true",
    ]);
    engine.docker(&[
        "create",
        "--name",
        "done-2",
        "--network",
        "none",
        &children[29],
        "/bin/busybox",
        "true",
    ]);
    // An anonymous volume left behind by a removed container.
    engine.docker(&[
        "create",
        "--name",
        "gone",
        "--network",
        "none",
        "-v",
        "/cache",
        &children[27],
    ]);
    engine.docker(&["rm", "gone"]);

    // BuildKit cache from a COPY-only build.
    let ctx = engine.scratch().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("payload.bin"), vec![7u8; 300_000]).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM miniconda:py39\nCOPY payload.bin /payload.bin\n",
    )
    .unwrap();
    let build = engine.docker_output(&["build", "-q", "-t", "ml/built:v1", ctx.to_str().unwrap()]);
    if !build.status.success() {
        // BuildKit needs what a private engine may lack; the population is complete without it.
        eprintln!(
            "note: BuildKit build failed: {}",
            String::from_utf8_lossy(&build.stderr)
        );
    }
    Population {
        bases,
        running,
        named_in_use,
        named_unused,
        labelled: "ml/env-5:v1".into(),
    }
}
