//! clonefs: clonable, copy-on-write volumes served over FUSE.
//!
//! Layers look only down: `fs` (the FUSE adapter) -> `volume` (clusters, inodes,
//! page maps, clone) -> `store` (pages, reference counts, allocator, device).
//! `status` is the one document a daemon publishes about its store, read by the
//! command line (and later the HTTP API); it looks down at `volume` only.

pub mod api;
pub mod error;
pub mod fs;
pub mod status;
pub mod store;
pub mod volume;
