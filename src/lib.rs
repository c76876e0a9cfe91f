//! clonefs: clonable, copy-on-write volumes served over FUSE.
//!
//! Layers look only down: `fs` (the FUSE adapter) -> `volume` (clusters, inodes,
//! page maps, clone) -> `store` (pages, reference counts, allocator, device).

pub mod error;
pub mod fs;
pub mod store;
pub mod volume;
