//! Where the volume is mounted: the mount points a daemon serves it at, each the
//! whole store or one cluster.
//!
//! The volume keeps this list only so that what would pull a cluster from under a
//! mount of its own is refused at one place, whoever asks (rmdir through another
//! mount, the API's delete and reset, expiry): a cluster mounted on its own is
//! busy until that mount goes. The daemon's mount table adds and removes entries;
//! the mutex is a leaf (taken last, nothing taken under it).

use super::{Cluster, ClusterId, Volume};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// One mount of the volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountPoint {
    pub point: PathBuf,
    /// The cluster shown at the mount's root; None: the whole store.
    pub cluster: Option<ClusterId>,
}

impl Volume {
    /// Records a mount of the volume at `point` (of cluster `cluster` alone, or of
    /// the whole store). Fails if the cluster is gone by now: it is looked up after
    /// the entry is in (never under the leaf lock). A delete already past its own
    /// check at that instant can still win the race: the mount then shows a root
    /// that is gone (ENOENT), as after any delete.
    pub fn add_mount(&self, point: &Path, cluster: Option<ClusterId>) -> Result<()> {
        self.mounts.lock().unwrap().push(MountPoint {
            point: point.to_owned(),
            cluster,
        });
        if let Some(c) = cluster {
            if let Err(e) = self.cluster_info(c) {
                self.remove_mount(point);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Forgets the mount at `point` (once its session has ended).
    pub fn remove_mount(&self, point: &Path) {
        let mut mounts = self.mounts.lock().unwrap();
        if let Some(i) = mounts.iter().position(|m| m.point == point) {
            mounts.remove(i);
        }
    }

    /// The mounts of the volume, in the order they were made.
    pub fn mount_points(&self) -> Vec<MountPoint> {
        self.mounts.lock().unwrap().clone()
    }

    /// Where cluster `c` is mounted on its own (empty: nowhere).
    pub fn mounted_at(&self, c: ClusterId) -> Vec<PathBuf> {
        let mounts = self.mounts.lock().unwrap();
        mounts
            .iter()
            .filter(|m| m.cluster == Some(c))
            .map(|m| m.point.clone())
            .collect()
    }

    /// How many mounts show cluster `c`: those of the whole store and its own.
    pub fn mounts_showing(&self, c: ClusterId) -> usize {
        let mounts = self.mounts.lock().unwrap();
        mounts
            .iter()
            .filter(|m| m.cluster.is_none_or(|x| x == c))
            .count()
    }

    /// Fails with `Busy`, naming the mount point, if `cl` is mounted on its own.
    pub(super) fn refuse_if_mounted(&self, cl: &Cluster) -> Result<()> {
        match self.mounted_at(cl.id).first() {
            None => Ok(()),
            Some(p) => Err(mounted_busy(&cl.name, p)),
        }
    }
}

/// The error for a change that a mount of cluster `name` at `point` forbids.
pub fn mounted_busy(name: &str, point: &Path) -> Error {
    Error::Busy(format!(
        "cluster '{name}' is mounted at {}: unmount it first (clonefs umount {})",
        point.display(),
        point.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{NewInode, ResetTo};

    #[test]
    fn a_cluster_mounted_on_its_own_is_busy_until_unmounted() {
        let (vol, _dev) = Volume::in_memory(4096, 1024).unwrap();
        let who = NewInode::dir_of_this_process();
        let prod = vol.create_cluster("prod", who).unwrap().id;
        let test = vol.clone_cluster("prod", "test").unwrap().id;
        vol.add_mount(Path::new("/mnt/store"), None).unwrap();
        vol.add_mount(Path::new("/mnt/test"), Some(test)).unwrap();
        assert_eq!(vol.mounted_at(test), [PathBuf::from("/mnt/test")]);
        assert!(vol.mounted_at(prod).is_empty());
        assert_eq!(vol.mounts_showing(test), 2);
        assert_eq!(vol.mounts_showing(prod), 1);
        for e in [
            vol.delete_cluster("test").unwrap_err(),
            vol.reset_cluster("test", ResetTo::Parent).unwrap_err(),
        ] {
            assert!(matches!(e, Error::Busy(_)), "{e}");
            assert!(e.to_string().contains("/mnt/test"), "{e}");
        }
        // The whole-store mount holds nothing back.
        vol.clone_cluster("prod", "other").unwrap();
        vol.delete_cluster("other").unwrap();
        vol.remove_mount(Path::new("/mnt/test"));
        vol.delete_cluster("test").unwrap();
        assert_eq!(vol.mount_points().len(), 1);
        // A cluster that is gone cannot be mounted.
        assert!(vol.add_mount(Path::new("/mnt/x"), Some(test)).is_err());
        assert_eq!(vol.mount_points().len(), 1);
    }
}
