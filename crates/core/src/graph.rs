//! The layer graph: which images share which layers, and what deleting a set of images frees.
//!
//! Layers are shared by chain ID. Deleting an image frees exactly the layers that no remaining
//! image references, so the bytes of any set of deletions are computable before deleting.

use std::collections::HashMap;

use crate::model::{Snapshot, Timestamp};

/// Per-layer overhead assumed on disk when a layer's real usage was not measured: the layer
/// store's metadata files and the driver's directories (measured on overlay2/ext4: 5–7 blocks).
pub const ESTIMATED_LAYER_OVERHEAD_BYTES: u64 = 28 * 1024;
/// Block size assumed when estimating disk usage.
const BLOCK: u64 = 4096;

/// Disk bytes estimated for a layer of `bytes` apparent size.
pub fn estimate_layer_disk_bytes(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK) * BLOCK + ESTIMATED_LAYER_OVERHEAD_BYTES
}

/// Hashes IDs by their last 16 bytes: IDs are digests, already uniformly random there, so
/// hashing the whole string (SipHash) would only cost time on a planner's hot path.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let tail = &bytes[bytes.len().saturating_sub(16)..];
        for &b in tail {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 ^= bytes.len() as u64;
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = (self.0 ^ n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by IDs (or indices) with [`IdHasher`].
pub type IdMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

/// Many short lists of indices in one allocation (compressed rows): list `i` is `self[i]`.
#[derive(Debug, Clone, Default)]
pub struct Lists {
    offsets: Vec<usize>,
    items: Vec<usize>,
}

impl Lists {
    /// Builds lists from `(list, item)` pairs, items in the order given.
    fn from_pairs(lists: usize, pairs: &[(usize, usize)]) -> Self {
        let mut offsets = vec![0; lists + 1];
        for &(list, _) in pairs {
            offsets[list + 1] += 1;
        }
        for i in 0..lists {
            offsets[i + 1] += offsets[i];
        }
        let mut fill = offsets.clone();
        let mut items = vec![0; pairs.len()];
        for &(list, item) in pairs {
            items[fill[list]] = item;
            fill[list] += 1;
        }
        Self { offsets, items }
    }

    /// Number of lists.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Whether there are no lists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every list, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[usize]> {
        (0..self.len()).map(move |i| &self[i])
    }
}

impl std::ops::Index<usize> for Lists {
    type Output = [usize];
    fn index(&self, i: usize) -> &[usize] {
        &self.items[self.offsets[i]..self.offsets[i + 1]]
    }
}

/// Index of images and layers of one snapshot.
#[derive(Debug)]
pub struct LayerGraph {
    /// Per layer index: apparent bytes.
    pub layer_bytes: Vec<u64>,
    /// Per layer index: disk bytes (measured, or estimated).
    pub layer_disk_bytes: Vec<u64>,
    /// Per layer index: inodes, when measured (0 otherwise).
    pub layer_inodes: Vec<u64>,
    /// Per image index: its layer indices, bottom first.
    pub image_layers: Lists,
    /// Per layer index: the images that reference it.
    pub layer_users: Lists,
    /// Per image index: indices of images built on it (its layers are a proper prefix of theirs).
    pub descendants: Vec<Vec<usize>>,
}

impl LayerGraph {
    /// Builds the graph of `snapshot`. Layers an image names but the snapshot lacks count as
    /// zero bytes.
    pub fn new(snapshot: &Snapshot) -> Self {
        let mut index: IdMap<&str, usize> =
            IdMap::with_capacity_and_hasher(snapshot.layers.len(), Default::default());
        let mut layer_bytes = Vec::with_capacity(snapshot.layers.len());
        let mut layer_disk_bytes = Vec::with_capacity(snapshot.layers.len());
        let mut layer_inodes = Vec::with_capacity(snapshot.layers.len());
        for layer in &snapshot.layers {
            index.entry(layer.chain_id.as_str()).or_insert_with(|| {
                layer_bytes.push(layer.bytes);
                layer_disk_bytes.push(
                    layer
                        .disk_bytes
                        .unwrap_or_else(|| estimate_layer_disk_bytes(layer.bytes)),
                );
                layer_inodes.push(layer.inodes.unwrap_or(0));
                layer_bytes.len() - 1
            });
        }
        let mut pairs = Vec::with_capacity(snapshot.images.len() * 10);
        for (img, image) in snapshot.images.iter().enumerate() {
            for chain in &image.layers {
                let i = *index.entry(chain.as_str()).or_insert_with(|| {
                    layer_bytes.push(0);
                    layer_disk_bytes.push(0);
                    layer_inodes.push(0);
                    layer_bytes.len() - 1
                });
                pairs.push((img, i));
            }
        }
        let image_layers = Lists::from_pairs(snapshot.images.len(), &pairs);
        for pair in &mut pairs {
            *pair = (pair.1, pair.0);
        }
        let layer_users = Lists::from_pairs(layer_bytes.len(), &pairs);
        // An image is an ancestor of another when its top layer is a proper prefix of the
        // other's chain: chain IDs hash the whole prefix, so equal top chain IDs mean equal
        // chains.
        let mut by_top: IdMap<usize, Vec<usize>> =
            IdMap::with_capacity_and_hasher(image_layers.len(), Default::default());
        for (img, layers) in image_layers.iter().enumerate() {
            if let Some(&top) = layers.last() {
                by_top.entry(top).or_default().push(img);
            }
        }
        let mut descendants = vec![Vec::new(); image_layers.len()];
        for (img, layers) in image_layers.iter().enumerate() {
            for &l in &layers[..layers.len().saturating_sub(1)] {
                if let Some(ancestors) = by_top.get(&l) {
                    for &a in ancestors {
                        descendants[a].push(img);
                    }
                }
            }
        }
        Self {
            layer_bytes,
            layer_disk_bytes,
            layer_inodes,
            image_layers,
            layer_users,
            descendants,
        }
    }

    /// Bytes of image `image`'s layers that no other image references, and bytes of the
    /// layers it shares.
    pub fn unique_and_shared_bytes(&self, image: usize) -> (u64, u64) {
        self.image_layers[image]
            .iter()
            .fold((0, 0), |(unique, shared), &l| {
                match self.layer_users[l].len() {
                    1 => (unique + self.layer_bytes[l], shared),
                    _ => (unique, shared + self.layer_bytes[l]),
                }
            })
    }

    /// Effective last use of every image: the latest use of it or of any image built on it.
    pub fn effective_last_use(&self, own: &[Timestamp]) -> Vec<Timestamp> {
        (0..own.len())
            .map(|i| {
                self.descendants[i]
                    .iter()
                    .map(|&d| own[d])
                    .fold(own[i], Timestamp::max)
            })
            .collect()
    }

    /// A tally of remaining references per layer, to compute marginal bytes of deletions.
    pub fn tally(&self) -> Tally<'_> {
        Tally {
            graph: self,
            remaining: self.layer_users.iter().map(<[usize]>::len).collect(),
        }
    }
}

/// What one image deletion frees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Freed {
    /// Apparent bytes (Docker's accounting).
    pub bytes: u64,
    /// Disk bytes (measured or estimated).
    pub disk_bytes: u64,
    /// Inodes (where measured).
    pub inodes: u64,
    /// Layers freed.
    pub layers: usize,
}

/// Remaining references per layer while a plan is built.
#[derive(Debug, Clone)]
pub struct Tally<'g> {
    graph: &'g LayerGraph,
    remaining: Vec<usize>,
}

impl Tally<'_> {
    /// What deleting `image` would free now, without deleting it.
    pub fn peek(&self, image: usize) -> Freed {
        let mut freed = Freed::default();
        for &l in &self.graph.image_layers[image] {
            if self.remaining[l] == 1 {
                freed.bytes += self.graph.layer_bytes[l];
                freed.disk_bytes += self.graph.layer_disk_bytes[l];
                freed.inodes += self.graph.layer_inodes[l];
                freed.layers += 1;
            }
        }
        freed
    }

    /// Images still referencing layer `layer`.
    pub fn remaining(&self, layer: usize) -> usize {
        self.remaining[layer]
    }

    /// Deletes `image` from the tally and returns what that freed.
    pub fn remove(&mut self, image: usize) -> Freed {
        let freed = self.peek(image);
        for &l in &self.graph.image_layers[image] {
            self.remaining[l] = self.remaining[l].saturating_sub(1);
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Image, Layer};

    fn snapshot() -> Snapshot {
        let layer = |c: &str, b| Layer {
            chain_id: c.into(),
            bytes: b,
            disk_bytes: Some(b),
            inodes: None,
        };
        let image = |id: &str, layers: &[&str]| Image {
            id: id.into(),
            layers: layers.iter().map(|s| s.to_string()).collect(),
            ..Image::default()
        };
        Snapshot {
            layers: vec![layer("a", 100), layer("b", 10), layer("c", 1)],
            images: vec![
                image("base", &["a"]),
                image("child1", &["a", "b"]),
                image("child2", &["a", "c"]),
            ],
            ..Snapshot::default()
        }
    }

    #[test]
    fn marginal_bytes_follow_sharing() {
        let s = snapshot();
        let g = LayerGraph::new(&s);
        let mut t = g.tally();
        assert_eq!(t.peek(0).bytes, 0);
        assert_eq!(t.remove(1).bytes, 10);
        assert_eq!(t.peek(0).bytes, 0);
        assert_eq!(t.remove(2).bytes, 1);
        assert_eq!(t.remove(0).bytes, 100);
    }

    #[test]
    fn base_is_as_recent_as_its_children() {
        let s = snapshot();
        let g = LayerGraph::new(&s);
        assert_eq!(g.descendants[0], vec![1, 2]);
        assert_eq!(g.effective_last_use(&[1, 5, 3]), vec![5, 5, 3]);
    }
}
