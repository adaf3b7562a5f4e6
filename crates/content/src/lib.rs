//! dockgc-content: what is inside images, for `dockgc audit`.
//!
//! Reads image archives (`docker save`, legacy and OCI layouts) as a stream and layer
//! directories of an overlay2 data root, and finds the waste baked into layers. Knows nothing
//! of the Engine API (the adapter provides the streams) and keeps nothing but file lists.

pub mod archive;
pub mod layer;
pub mod waste;

pub use archive::{read_archive, Archive, ArchiveError, ArchiveImage, ImageLayer};
pub use layer::{scan_blob, scan_dir, LayerIndex, ScanError};
pub use waste::{audit_image, host_view, Cause, Finding, HostFinding, ImageAudit, LayerRef};
