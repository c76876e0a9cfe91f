//! Node ids: how one 64-bit kernel node id names a mount root, the status file, a
//! cluster's inode, its `.clone` directory or a clone marker.
//!
//! The layout is an interface with the kernel's caches for the life of a mount, so
//! it never changes while mounted: the cluster id in the high bits, the inode in the
//! low 40 (see the table in the `fs` module doc). Cluster 0 has only the root (1)
//! and the status file (2); inode 0 and the all-ones inode of a cluster are never
//! real inodes, so they stand for `.clone` and the marker.

use super::{CONTROL_NAME, STATUS_NAME};
use crate::volume::{ClusterId, Ino};
use fuser::INodeNo;
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;

const ROOT_NODE: u64 = 1;
const STATUS_NODE: u64 = 2;
const INO_BITS: u32 = 40;
const INO_MASK: u64 = (1 << INO_BITS) - 1;
const CONTROL_INO: u64 = 0;
const MARKER_INO: u64 = INO_MASK;

/// What a kernel node id stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    Root,
    Status,
    /// An inode of a cluster.
    File(ClusterId, Ino),
    /// `CLUSTER/.clone` of the cluster.
    Control(ClusterId),
    /// `SRC/.clone/NAME`, standing for cluster NAME (the id).
    Marker(ClusterId),
}

impl Node {
    pub fn decode(id: u64) -> Option<Node> {
        let (cid, low) = (id >> INO_BITS, id & INO_MASK);
        match (cid, low) {
            (0, ROOT_NODE) => Some(Node::Root),
            (0, STATUS_NODE) => Some(Node::Status),
            (0, _) => None,
            (c, CONTROL_INO) => Some(Node::Control(ClusterId(c))),
            (c, MARKER_INO) => Some(Node::Marker(ClusterId(c))),
            (c, ino) => Some(Node::File(ClusterId(c), Ino(ino))),
        }
    }

    pub fn encode(self) -> u64 {
        match self {
            Node::Root => ROOT_NODE,
            Node::Status => STATUS_NODE,
            Node::File(c, ino) => (c.0 << INO_BITS) | (ino.0 & INO_MASK),
            Node::Control(c) => c.0 << INO_BITS,
            Node::Marker(c) => (c.0 << INO_BITS) | MARKER_INO,
        }
    }

    pub(super) fn id(self) -> INodeNo {
        INodeNo(self.encode())
    }

    /// The root directory of cluster `c`.
    pub(super) fn cluster_root(c: ClusterId) -> Node {
        Node::File(c, Ino::ROOT)
    }

    /// Is `name` the control directory, looked up in this directory?
    pub(super) fn is_control(self, name: &OsStr) -> bool {
        matches!(self, Node::File(_, Ino::ROOT)) && name.as_bytes() == CONTROL_NAME.as_bytes()
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Root => write!(f, "/"),
            Node::Status => write!(f, "/{STATUS_NAME}"),
            Node::File(c, ino) => write!(f, "cluster#{} inode {ino}", c.0),
            Node::Control(c) => write!(f, "cluster#{}/{CONTROL_NAME}", c.0),
            Node::Marker(c) => write!(f, "clone marker of cluster#{}", c.0),
        }
    }
}

impl super::CloneFs {
    /// What a kernel node id stands for. A mount of one cluster is the same id
    /// space with that cluster's root at the kernel's root id (1): every other id,
    /// and so every cache entry, means what it means on a whole-store mount.
    pub(super) fn node(&self, ino: INodeNo) -> Result<Node, fuser::Errno> {
        match (self.root, Node::decode(ino.0)) {
            (Some(c), Some(Node::Root)) => Ok(Node::cluster_root(c)),
            (_, Some(n)) => Ok(n),
            (_, None) => Err(fuser::Errno::ENOENT),
        }
    }

    /// The kernel's node id for `node` (the inverse of [`CloneFs::node`]).
    pub(super) fn kernel_id(&self, node: Node) -> INodeNo {
        match (self.root, node) {
            (Some(c), Node::File(nc, Ino::ROOT)) if nc == c => Node::Root.id(),
            _ => node.id(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_round_trip() {
        let nodes = [
            Node::Root,
            Node::Status,
            Node::File(ClusterId(1), Ino::ROOT),
            Node::File(ClusterId(1), Ino(2)),
            Node::File(ClusterId(7), Ino(INO_MASK - 1)),
            Node::Control(ClusterId(1)),
            Node::Control(ClusterId(12345)),
            Node::Marker(ClusterId(3)),
        ];
        for n in nodes {
            assert_eq!(Node::decode(n.encode()), Some(n), "{n:?}");
        }
    }

    #[test]
    fn node_id_layout_is_the_documented_one() {
        assert_eq!(Node::Root.encode(), 1);
        assert_eq!(Node::File(ClusterId(1), Ino::ROOT).encode(), (1 << 40) | 1);
        assert_eq!(Node::File(ClusterId(3), Ino(9)).encode(), (3 << 40) | 9);
        assert_eq!(Node::Control(ClusterId(3)).encode(), 3 << 40);
        assert_eq!(
            Node::Marker(ClusterId(3)).encode(),
            (3 << 40) | ((1 << 40) - 1)
        );
        // Ids of cluster 0 other than the root and the status file name nothing.
        assert_eq!(Node::decode(0), None);
        assert_eq!(Node::decode(3), None);
    }

    #[test]
    fn control_name_only_in_cluster_roots() {
        let name = OsStr::new(".clone");
        assert!(Node::File(ClusterId(1), Ino::ROOT).is_control(name));
        assert!(!Node::File(ClusterId(1), Ino(5)).is_control(name));
        assert!(!Node::Root.is_control(name));
        assert!(!Node::File(ClusterId(1), Ino::ROOT).is_control(OsStr::new("clone")));
    }
}
