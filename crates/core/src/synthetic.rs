//! Synthetic, deterministic populations of an ML host: a few Miniconda-like bases and many
//! environment images built on them. Used by property tests and the planner benchmark; pure
//! (a seeded generator, no I/O).

use crate::model::{
    Container, ContainerState, Filesystem, Image, Layer, Snapshot, SNAPSHOT_VERSION,
};

/// Shape of a synthetic population.
#[derive(Debug, Clone, Copy)]
pub struct Population {
    /// Number of images.
    pub images: usize,
    /// Number of base images the others are built on.
    pub bases: usize,
    /// Layers per base image.
    pub base_layers: usize,
    /// Layers each child adds on top of its base.
    pub child_layers: usize,
    /// One child in this many is dangling (untagged).
    pub dangling_every: usize,
    /// One child in this many is used by a running container.
    pub in_use_every: usize,
    /// Seed of the generator.
    pub seed: u64,
}

impl Population {
    /// About 10 layers per image, 3 bases per 100 images (at least 3).
    pub fn realistic(images: usize, seed: u64) -> Self {
        Self {
            images,
            bases: (images / 100).max(3),
            base_layers: 6,
            child_layers: 4,
            dangling_every: 7,
            in_use_every: 11,
            seed,
        }
    }
}

/// A small deterministic generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

fn digest(kind: &str, n: usize) -> String {
    format!("sha256:{kind}{n:0>width$x}", width = 64 - kind.len())
}

/// Generates a population. The snapshot is taken at `now`; images arrived over the 30 days
/// before it.
pub fn generate(p: &Population, now: i64) -> Snapshot {
    let mut rng = Rng::new(p.seed);
    let mut layers = Vec::new();
    let mut images = Vec::new();
    let mut containers = Vec::new();
    let mut base_chains = Vec::new();
    let mut next_layer = 0usize;
    let mut new_layer = |rng: &mut Rng, max: u64, layers: &mut Vec<Layer>| {
        next_layer += 1;
        let chain_id = digest("1a", next_layer);
        let bytes = 1_000 + rng.below(max);
        layers.push(Layer {
            chain_id: chain_id.clone(),
            bytes,
            disk_bytes: Some(bytes.div_ceil(4096) * 4096 + 20_480),
            inodes: Some(1 + bytes / 50_000),
        });
        chain_id
    };
    let bases = p.bases.min(p.images).max(1);
    for b in 0..bases {
        let chain: Vec<String> = (0..p.base_layers)
            .map(|_| new_layer(&mut rng, 400_000_000, &mut layers))
            .collect();
        let arrived = now - 30 * 86_400 + rng.below(86_400) as i64;
        images.push(Image {
            id: digest("b0", b),
            tags: vec![format!("miniconda:py3{b}")],
            created: arrived - 90 * 86_400,
            arrived,
            last_tagged: Some(arrived),
            layers: chain.clone(),
            ..Image::default()
        });
        base_chains.push(chain);
    }
    for c in 0..p.images.saturating_sub(bases) {
        let base = &base_chains[rng.below(bases as u64) as usize];
        let mut chain = base.clone();
        for _ in 0..p.child_layers {
            chain.push(new_layer(&mut rng, 200_000_000, &mut layers));
        }
        let arrived = now - rng.below(29 * 86_400) as i64;
        let dangling = p.dangling_every > 0 && c % p.dangling_every == p.dangling_every - 1;
        let id = digest("c0", c);
        images.push(Image {
            id: id.clone(),
            tags: if dangling {
                Vec::new()
            } else {
                vec![format!("ml/env-{}:v{}", c % 50, c / 50)]
            },
            created: arrived - 3_600,
            arrived,
            last_tagged: Some(arrived + rng.below(3_600) as i64),
            layers: chain,
            ..Image::default()
        });
        if p.in_use_every > 0 && c % p.in_use_every == 0 {
            containers.push(Container {
                id: digest("d0", c),
                names: vec![format!("job-{c}")],
                image_id: id,
                image: String::new(),
                state: ContainerState::Running,
                created: arrived,
                started: Some(arrived),
                finished: None,
                labels: Default::default(),
                size_rw: Some(rng.below(10_000_000)),
                disk_bytes: None,
                volumes: Vec::new(),
                networks: Vec::new(),
            });
        }
    }
    let layer_disk: u64 = layers.iter().filter_map(|l| l.disk_bytes).sum();
    let total = layer_disk + layer_disk / 4;
    Snapshot {
        version: SNAPSHOT_VERSION,
        taken_at: now,
        filesystem: Some(Filesystem {
            total_bytes: total,
            used_bytes: layer_disk,
            available_bytes: total - layer_disk,
            total_inodes: 10_000_000,
            free_inodes: 9_000_000,
        }),
        images,
        layers,
        containers,
        ..Snapshot::default()
    }
}
