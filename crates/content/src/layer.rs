//! One layer's files: scanned from a layer tar (uncompressed, gzip or zstd, sniffed from the
//! magic bytes) or from an overlay2 layer directory, into a [`LayerIndex`].
//!
//! Memory is bounded by the number of files, never by their size: contents are hashed as they
//! stream by (xxh3-128, to find identical files) and dropped.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

/// Version of the scan format: a cached [`LayerIndex`] of another version is scanned again.
pub const SCAN_VERSION: u32 = 1;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A regular file with its bytes in this layer.
    File,
    /// A hard link to another path of the same layer (its bytes are stored there).
    HardLink,
    /// `.wh.NAME`: deletes NAME (and all below it) from the layers beneath.
    Whiteout,
    /// `.wh..wh..opq`: hides everything the layers beneath have in this directory.
    Opaque,
}

/// One entry of a layer. Directories, symlinks and devices carry no bytes and are not kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Normalised path: relative, no `./`, no trailing `/`. For whiteouts, the path deleted;
    /// for opaque markers, the directory.
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Bytes (files only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// xxh3-128 of the content (files only).
    #[serde(default, skip_serializing_if = "is_zero_u128")]
    pub hash: u128,
    /// The path a hard link points to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl FileEntry {
    /// A regular file.
    pub fn file(path: String, size: u64, hash: u128) -> Self {
        Self {
            path,
            kind: EntryKind::File,
            size,
            hash,
            target: None,
        }
    }

    /// A whiteout or an opaque-directory marker.
    pub fn marker(path: String, kind: EntryKind) -> Self {
        Self {
            path,
            kind,
            size: 0,
            hash: 0,
            target: None,
        }
    }

    /// A hard link to `target`.
    pub fn link(path: String, target: Option<String>) -> Self {
        Self {
            path,
            kind: EntryKind::HardLink,
            size: 0,
            hash: 0,
            target,
        }
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_zero_u128(v: &u128) -> bool {
    *v == 0
}

/// A layer's files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerIndex {
    /// [`SCAN_VERSION`] when it was made.
    pub version: u32,
    /// Entries in archive order.
    pub files: Vec<FileEntry>,
    /// Bytes of its regular files.
    pub bytes: u64,
}

/// Why a layer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The stream ended or broke inside the layer.
    #[error("unreadable layer stream{}: {source}", at.as_ref().map(|p| format!(" at `{p}`")).unwrap_or_default())]
    Io {
        /// The entry being read, when known.
        at: Option<String>,
        /// What failed.
        source: std::io::Error,
    },
    /// Not a tar (nor a gzip or zstd compressed one).
    #[error("not a layer tar: {0}")]
    Format(String),
}

/// The compression of a layer blob, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`).
    Zstd,
}

/// Sniffs the compression from a blob's first bytes.
pub fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Normalises a path from a tar or a walk: relative, no `./`, no trailing `/`.
pub fn normalise(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for part in path.split('/') {
        if part.is_empty() || part == "." {
            continue;
        }
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(part);
    }
    out
}

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

fn hash_reader(reader: &mut impl Read, at: &str) -> Result<(u64, u128), ScanError> {
    let mut hasher = Xxh3::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|e| ScanError::Io {
            at: Some(at.to_string()),
            source: e,
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hasher.digest128()))
}

/// Scans a layer blob: a tar, gzip'ed or zstd'ed (sniffed).
pub fn scan_blob(mut reader: impl Read) -> Result<LayerIndex, ScanError> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        let n = reader.read(&mut head[got..]).map_err(|e| ScanError::Io {
            at: None,
            source: e,
        })?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let chained = std::io::Cursor::new(head[..got].to_vec()).chain(reader);
    match sniff(&head[..got]) {
        Compression::None => scan_tar(chained),
        Compression::Gzip => scan_tar(flate2::read::MultiGzDecoder::new(chained)),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(chained).map_err(|e| ScanError::Io {
                at: None,
                source: e,
            })?;
            scan_tar(decoder)
        }
    }
}

/// Scans an uncompressed layer tar.
pub fn scan_tar(reader: impl Read) -> Result<LayerIndex, ScanError> {
    let mut archive = tar::Archive::new(reader);
    let mut index = LayerIndex {
        version: SCAN_VERSION,
        ..LayerIndex::default()
    };
    let entries = archive.entries().map_err(|e| ScanError::Io {
        at: None,
        source: e,
    })?;
    let mut last = None::<String>;
    for entry in entries {
        let mut entry = entry.map_err(|e| ScanError::Io {
            at: last.clone(),
            source: e,
        })?;
        let raw = entry.path_bytes();
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let path = normalise(&raw);
        last = Some(path.clone());
        let kind = entry.header().entry_type();
        let name = path.rsplit('/').next().unwrap_or("");
        if name == OPAQUE {
            let dir = path.rsplit_once('/').map_or("", |(d, _)| d).to_string();
            index.files.push(FileEntry::marker(dir, EntryKind::Opaque));
            continue;
        }
        if let Some(deleted) = name.strip_prefix(WHITEOUT) {
            let deleted = match path.rsplit_once('/') {
                Some((dir, _)) => format!("{dir}/{deleted}"),
                None => deleted.to_string(),
            };
            index
                .files
                .push(FileEntry::marker(deleted, EntryKind::Whiteout));
            continue;
        }
        if kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .map(|t| normalise(&String::from_utf8_lossy(&t)));
            index.files.push(FileEntry::link(path, target));
            continue;
        }
        if !(kind.is_file() || kind.is_contiguous() || kind == tar::EntryType::GNUSparse) {
            continue;
        }
        let declared = entry.header().size().unwrap_or(0);
        let (size, hash) = hash_reader(&mut entry, &path)?;
        if size < declared {
            return Err(ScanError::Io {
                at: Some(path),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("truncated: {size} of {declared} bytes"),
                ),
            });
        }
        index.bytes += size;
        index.files.push(FileEntry::file(path, size, hash));
    }
    Ok(index)
}

/// Scans an overlay2 layer directory (`…/overlay2/<id>/diff`): character devices 0/0 are
/// whiteouts, directories with `trusted.overlay.opaque=y` are opaque, files sharing an inode
/// are hard links.
pub fn scan_dir(root: &Path) -> Result<LayerIndex, ScanError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut index = LayerIndex {
        version: SCAN_VERSION,
        ..LayerIndex::default()
    };
    let mut inodes: std::collections::HashMap<(u64, u64), String> = Default::default();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    let io = |at: &str, e: std::io::Error| ScanError::Io {
        at: Some(at.to_string()),
        source: e,
    };
    while let Some((dir, rel)) = stack.pop() {
        if !rel.is_empty() && is_opaque(&dir) {
            index
                .files
                .push(FileEntry::marker(rel.clone(), EntryKind::Opaque));
        }
        let mut children: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| io(&rel, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| io(&rel, e))?;
        children.sort_by_key(|c| c.file_name());
        for child in children {
            let name = child.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let meta = std::fs::symlink_metadata(child.path()).map_err(|e| io(&path, e))?;
            let ft = meta.file_type();
            if ft.is_dir() {
                stack.push((child.path(), path));
            } else if ft.is_char_device() && meta.rdev() == 0 {
                index
                    .files
                    .push(FileEntry::marker(path, EntryKind::Whiteout));
            } else if ft.is_file() {
                if meta.nlink() > 1 {
                    if let Some(first) = inodes.get(&(meta.dev(), meta.ino())) {
                        index.files.push(FileEntry::link(path, Some(first.clone())));
                        continue;
                    }
                    inodes.insert((meta.dev(), meta.ino()), path.clone());
                }
                let mut file = std::fs::File::open(child.path()).map_err(|e| io(&path, e))?;
                let (size, hash) = hash_reader(&mut file, &path)?;
                index.bytes += size;
                index.files.push(FileEntry::file(path, size, hash));
            }
        }
    }
    Ok(index)
}

fn is_opaque(dir: &Path) -> bool {
    let mut value = [0u8; 4];
    matches!(
        rustix::fs::getxattr(dir, "trusted.overlay.opaque", &mut value[..]),
        Ok(1) if value[0] == b'y'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn scans_files_whiteouts_and_opaque_dirs_in_every_compression() {
        let plain = tar(&[
            ("./a/x.bin", b"hello"),
            ("a/.wh.gone", b""),
            ("b/.wh..wh..opq", b""),
        ]);
        let gz = {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&plain).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&plain[..], 3).unwrap();
        for blob in [&plain, &gz, &zst] {
            let index = scan_blob(&blob[..]).unwrap();
            assert_eq!(index.bytes, 5);
            assert_eq!(index.files[0].path, "a/x.bin");
            assert_eq!(index.files[1].kind, EntryKind::Whiteout);
            assert_eq!(index.files[1].path, "a/gone");
            assert_eq!(index.files[2].kind, EntryKind::Opaque);
            assert_eq!(index.files[2].path, "b");
        }
    }

    #[test]
    fn a_truncated_layer_names_the_entry() {
        let plain = tar(&[("big.bin", &[7u8; 5000]), ("after", b"x")]);
        let cut = &plain[..512 + 3000];
        let err = scan_blob(cut).unwrap_err().to_string();
        assert!(err.contains("big.bin"), "{err}");
    }
}
