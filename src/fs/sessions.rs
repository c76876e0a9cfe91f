//! The mounts one daemon serves: each mount of its store, the whole store or one
//! cluster, is a FUSE session of its own over the same volume, served by threads
//! of its own.
//!
//! A mount is made on the thread that will serve it (so what `mount` sets on its
//! thread, the I/O-flusher flag of the writeback cache, goes to that mount's
//! workers only) and reported back once the kernel has answered INIT. When a
//! session ends (`umount`, `fusermount3 -u`, the daemon's own unmount on a
//! signal), its thread takes it out of the table; the last one to go closes the
//! table, which is what [`Sessions::wait_all`] waits for, and no mount joins a
//! closed table: the daemon is then on its way out (final commit, exit).
//!
//! The kernel's writeback cache is one setting for all the mounts of a daemon: a
//! clone has every mount write back the cluster's dirty pages, which only works if
//! they all keep them the same way. Threads and allow_other are per mount.

use super::{mount, MountConfig, Notifiers};
use crate::error::Error;
use crate::volume::Volume;
use log::{error, info};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex};

/// A live mount: where, and how it was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Live {
    pub point: PathBuf,
    pub config: MountConfig,
}

/// Why a mount was not made.
#[derive(Debug)]
pub enum MountError {
    /// The last mount has gone and the daemon is closing the store.
    Closing,
    /// The mount asks for what the daemon's other mounts cannot share.
    Incompatible(String),
    /// The cluster to show does not exist (or another volume error).
    Volume(Error),
    /// The kernel or fusermount3 refused the mount.
    Mount(String),
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MountError::Closing => write!(
                f,
                "the daemon is closing the store after its last unmount; mount again in a moment"
            ),
            MountError::Incompatible(why) | MountError::Mount(why) => write!(f, "{why}"),
            MountError::Volume(e) => write!(f, "{e}"),
        }
    }
}

#[derive(Default)]
struct Table {
    live: Vec<Live>,
    closed: bool,
}

/// Every mount of one volume in this daemon.
pub struct Sessions {
    vol: Arc<Volume>,
    notifiers: Arc<Notifiers>,
    writeback_cache: bool,
    table: Mutex<Table>,
    changed: Condvar,
}

impl Sessions {
    /// A table for `vol`, whose mounts all have the writeback cache on, or all off.
    pub fn new(vol: Arc<Volume>, writeback_cache: bool) -> Arc<Sessions> {
        Arc::new(Sessions {
            vol,
            notifiers: Arc::default(),
            writeback_cache,
            table: Mutex::default(),
            changed: Condvar::new(),
        })
    }

    pub fn volume(&self) -> &Arc<Volume> {
        &self.vol
    }

    pub fn writeback_cache(&self) -> bool {
        self.writeback_cache
    }

    /// The live mounts, oldest first.
    pub fn live(&self) -> Vec<Live> {
        self.table.lock().unwrap().live.clone()
    }

    /// Mounts the volume at `point` as `mc` asks, served on a thread of its own;
    /// returns once the mount is live. Nothing is left mounted on an error.
    pub fn add(self: &Arc<Self>, point: &Path, mc: &MountConfig) -> Result<(), MountError> {
        if mc.writeback_cache != self.writeback_cache {
            let (has, asks) = if self.writeback_cache {
                ("with", "without")
            } else {
                ("without", "with")
            };
            return Err(MountError::Incompatible(format!(
                "the daemon serving {} mounts it {has} the writeback cache, and this mount \
                 asks {asks}: every mount of one store shares that setting, so mount {has} \
                 it (--writeback-cache / -o writeback_cache), or unmount the store's other \
                 mounts first",
                self.vol.path().display()
            )));
        }
        let cluster = match &mc.cluster {
            Some(name) => Some(
                self.vol
                    .cluster_by_name(name)
                    .map_err(|e| match e {
                        Error::NotFound => MountError::Volume(Error::BadStore {
                            path: self.vol.path().to_owned(),
                            why: format!(
                                "no cluster '{name}' in this store (clonefs status lists them; \
                                 mkdir STORE-MOUNT/{name} makes one)"
                            ),
                        }),
                        e => MountError::Volume(e),
                    })?
                    .id,
            ),
            None => None,
        };
        // Under the table's lock: the last session to end cannot close the table
        // between the check and the new entry.
        let mut table = self.table.lock().unwrap();
        if table.closed {
            return Err(MountError::Closing);
        }
        if table.live.iter().any(|l| l.point == point) {
            return Err(MountError::Incompatible(format!(
                "{} is already a mount of {}",
                point.display(),
                self.vol.path().display()
            )));
        }
        self.vol
            .add_mount(point, cluster)
            .map_err(MountError::Volume)?;
        let (tx, rx) = mpsc::channel();
        let (me, at, config) = (self.clone(), point.to_owned(), mc.clone());
        let spawned = std::thread::Builder::new()
            .name("clonefs-mount".into())
            .spawn(move || me.serve(&at, &config, tx));
        let made = match spawned {
            Err(e) => Err(MountError::Mount(format!("no thread for the mount: {e}"))),
            Ok(_) => rx.recv().unwrap_or_else(|_| {
                Err(MountError::Mount("the mount's thread ended early".into()))
            }),
        };
        match made {
            Ok(()) => {
                table.live.push(Live {
                    point: point.to_owned(),
                    config: mc.clone(),
                });
                Ok(())
            }
            Err(e) => {
                self.vol.remove_mount(point);
                Err(e)
            }
        }
    }

    /// The mount's thread: mounts, reports, serves until the mount goes away.
    fn serve(&self, point: &Path, mc: &MountConfig, made: mpsc::Sender<Result<(), MountError>>) {
        let session = match mount(self.vol.clone(), point, mc, &self.notifiers) {
            Ok(s) => s,
            Err(e) => {
                // fusermount3's own words, without "I/O error" before them.
                let why = match e {
                    Error::Io(io) => io.to_string(),
                    e => e.to_string(),
                };
                let _ = made.send(Err(MountError::Mount(format!(
                    "cannot mount {} at {}: {why}",
                    self.vol.path().display(),
                    point.display()
                ))));
                return;
            }
        };
        info!(
            "mounted {}{} at {} with {} threads{}{}",
            self.vol.path().display(),
            mc.cluster
                .as_deref()
                .map_or(String::new(), |c| format!(" (cluster {c})")),
            point.display(),
            mc.threads,
            if mc.writeback_cache {
                ", writeback cache"
            } else {
                ""
            },
            if mc.allow_other { ", allow_other" } else { "" },
        );
        let _ = made.send(Ok(()));
        if let Err(e) = session.run() {
            error!("serving {} ended with an error: {e}", point.display());
        }
        self.ended(point);
    }

    /// A session has ended: out of the table; the last one closes it.
    fn ended(&self, point: &Path) {
        self.notifiers.remove(point);
        self.vol.remove_mount(point);
        let mut table = self.table.lock().unwrap();
        table.live.retain(|l| l.point != point);
        info!(
            "{} unmounted; {} mounts left",
            point.display(),
            table.live.len()
        );
        if table.live.is_empty() {
            table.closed = true;
            self.changed.notify_all();
        }
    }

    /// Waits until the last mount has gone (the table is closed then: no mount
    /// joins after). Call it after the first mount was made.
    pub fn wait_all(&self) {
        let mut table = self.table.lock().unwrap();
        while !table.closed {
            table = self.changed.wait(table).unwrap();
        }
    }
}
