//! Zero-message open: how long a file lives for the kernel when OPEN and RELEASE
//! are never sent.
//!
//! With the writeback cache off (the default), OPEN and CREATE are answered ENOSYS
//! once; the kernel then opens and closes files without a request (`fc->no_open`)
//! and creates them with MKNOD (`fc->no_create`): `grep -r` costs one READ per file
//! instead of OPEN, READ, RELEASE, and each created file one request less.
//! Directories keep OPENDIR: without it the kernel caches listings (FOPEN_CACHE_DIR),
//! and the mount root and `.clone` change behind its back.
//!
//! What an open handle used to keep alive, the kernel's references now keep: every
//! entry it is given (LOOKUP, MKNOD, MKDIR, SYMLINK, LINK, each readdirplus entry
//! but `.` and `..`) counts once on the inode, as a handle did, and FORGET drops that
//! many. An unlinked file stays readable while any process has it open, since the
//! kernel holds its inode until then, as libfuse's passthrough_ll does it. A count
//! too high only delays freeing an orphan to the next mount; one too low would free
//! a file still open, so every entry the kernel keeps is counted.
//!
//! With the writeback cache on, OPEN stays: a clone has the kernel write back the
//! dirty pages of the files open in the cluster, and only OPEN tells which those are.
//!
//! The status file has no handle either: each LOOKUP of it (every open resolves
//! its name, which is never cached) makes a new document, getattr gives its length,
//! and reads are served from it through the page cache. A new document of the same
//! length as the last but other bytes is padded with a space, so the kernel sees the
//! size change and drops the old pages.

use super::namespace::Entry;
use super::{CloneFs, Node, GEN};
use crate::error::Error;
use crate::status::StatusSnapshot;
use fuser::{INodeNo, ReplyEntry};
use log::debug;
use std::sync::Arc;

impl CloneFs {
    /// Replies with an entry the kernel keeps, counting it first (see the module doc).
    pub(super) fn reply_entry(&self, e: &Entry, reply: ReplyEntry) {
        self.counted(self.node(e.attr.ino).ok());
        reply.entry_with_ttls(&e.ttl, &e.ttl, &e.attr, GEN);
    }

    /// The kernel took one more reference on `node`.
    pub(super) fn counted(&self, node: Option<Node>) {
        if let (true, Some(Node::File(c, i))) = (self.zero_open, node) {
            // An inode gone meanwhile has nothing to keep alive.
            let _ = self.vol.open_file(c, i);
        }
    }

    /// FORGET: the kernel dropped `n` references to `ino`.
    pub(super) fn forget_node(&self, ino: INodeNo, n: u64) {
        let (true, Ok(Node::File(c, i))) = (self.zero_open, self.node(ino)) else {
            return;
        };
        debug!("forget {} x{n}", Node::File(c, i));
        for _ in 0..n {
            if let Err(e) = self.vol.release_file(c, i) {
                self.fail("forget", Node::File(c, i), e);
                return;
            }
        }
    }

    /// A new status document, kept for the reads that follow; its length.
    pub(super) fn status_refresh(&self) -> Result<u64, Error> {
        let snapshot = StatusSnapshot::take(&self.vol)?;
        let mut doc = Vec::with_capacity(self.status_len() as usize + 4096);
        snapshot.view().write_json(&mut doc);
        let mut latest = self.status_latest.lock().unwrap();
        if let Some(old) = latest.as_ref() {
            if old.trim_ascii_end() == doc.trim_ascii_end() {
                return Ok(old.len() as u64);
            }
            if old.len() == doc.len() {
                doc.push(b' ');
            }
        }
        let len = doc.len() as u64;
        *latest = Some(Arc::new(doc));
        Ok(len)
    }

    /// The document reads without a handle are served from.
    pub(super) fn status_latest(&self) -> Option<Arc<Vec<u8>>> {
        self.status_latest.lock().unwrap().clone()
    }

    /// The length getattr reports for the status file.
    pub(super) fn status_len(&self) -> u64 {
        self.status_latest().map_or(0, |d| d.len() as u64)
    }
}
