//! The seam between the engine and where its pages live.
//!
//! [`PageDevice`] is the one narrow interface the rest of clonefs uses to reach
//! bytes: read, write, allocate (reserve backing space), free, sync, commit. The
//! default implementation is [`MmapDevice`], one memory-mapped host file. A
//! distributed object or block store can implement the same trait; the tests use
//! [`MemDevice`](super::memdev::MemDevice), which keeps written bytes apart from
//! durable ones to simulate power cuts.
//!
//! All `unsafe` of the crate lives in this file. Invariants that make it sound:
//! - the host file is locked (`flock`) for the life of the device, so no other
//!   clonefs process maps it for writing;
//! - the file is set to its full size at creation and is never truncated or grown
//!   while mapped, so every address in `[0, len)` stays valid;
//! - every access is bounds-checked against `len` before the pointer is formed;
//! - the volume layer never writes a page in place while another thread reads or
//!   writes it (shared pages are copied before a write; one file's pages are
//!   accessed under that file's cluster lock), so copies never race.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub trait PageDevice: Send + Sync {
    fn page_size(&self) -> usize;
    /// How many pages the device can hold.
    fn capacity_pages(&self) -> u64;
    /// Copies bytes at `page * page_size + offset` into `buf` (may span pages).
    fn read(&self, page: u64, offset: usize, buf: &mut [u8]) -> Result<()>;
    /// Copies `data` to `page * page_size + offset` (may span pages).
    fn write(&self, page: u64, offset: usize, data: &[u8]) -> Result<()>;
    /// Reserves backing space for pages `[start, start + count)` before they are written
    /// (or leaves that to the host while it has room: see `MmapDevice::host_has_room`).
    fn allocate(&self, start: u64, count: u64) -> Result<()>;
    /// The pages `[start, start + count)` hold nothing of value any more.
    fn free(&self, start: u64, count: u64);
    /// Makes every write so far durable.
    fn sync(&self) -> Result<()>;
    /// Writes one superblock page and makes it durable: the commit point.
    fn commit(&self, page: u64, bytes: &[u8]) -> Result<()> {
        self.write(page, 0, bytes)?;
        self.sync()
    }
    /// Lets go of the device's hold on the store (a RADOS lease) once the last
    /// commit of a clean close is durable; nothing may be written after it.
    fn release(&self) -> Result<()> {
        Ok(())
    }
}

/// Writes of at least a page use pwrite(2) rather than a copy into the mapping.
/// A copy into a clean page of the mapping takes a write fault, and its writeback
/// a write-protect pass over the mapping: for file data, which an fdatasync
/// usually follows, that costs more than the call (random 4 KiB write +
/// fdatasync: +7% with 1 job, +20% with 4, in an A/B run; unpacking a tar of 16k
/// files 12% slower and removing them 30% faster). Metadata records are small and
/// rewritten many times between syncs, so they stay copies.
const PWRITE_MIN: usize = 4096;

/// The most one pwrite(2) stores. The host's page cache sizes a folio by the write
/// that creates it, and on ext4 every later write into a folio walks all its block
/// buffers: a 4 KiB overwrite of a page first stored by a 1 MiB write took 23 us
/// of FUSE write latency, against 14 us with 64 KiB pieces (random 4 KiB write +
/// fdatasync over a file laid out in 1 MiB writes: +8% IOPS), while sequential 1 MiB
/// writes lose 5%.
const PWRITE_CHUNK: usize = 64 << 10;

/// Below this much free space (or a twentieth of the host file system, if more)
/// new pages are reserved on the host before use: see `MmapDevice::host_has_room`.
const HOST_ROOM_MIN: u64 = 1 << 30;

/// A store file mapped into memory.
pub struct MmapDevice {
    path: PathBuf,
    file: File,
    map: memmap2::MmapRaw,
    len: u64,
    page_size: usize,
}

impl MmapDevice {
    /// Creates a new sparse store file of `capacity_bytes` (fails if it exists).
    pub fn create(path: &Path, capacity_bytes: u64, page_size: usize) -> Result<MmapDevice> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::BadStore {
                path: path.to_owned(),
                why: format!("cannot create the store file: {e}"),
            })?;
        lock(&file, path)?;
        file.set_len(capacity_bytes)?;
        Self::map(path, file, page_size)
    }

    /// Opens an existing store file and locks it. `page_size` comes from the superblock.
    pub fn open(path: &Path, page_size: usize) -> Result<MmapDevice> {
        let file = open_locked(path)?;
        Self::map(path, file, page_size)
    }

    fn map(path: &Path, file: File, page_size: usize) -> Result<MmapDevice> {
        let len = file.metadata()?.len();
        let map = memmap2::MmapOptions::new()
            .len(len as usize)
            .map_raw(&file)
            .map_err(|e| Error::BadStore {
                path: path.to_owned(),
                why: format!("cannot map the store file: {e}"),
            })?;
        Ok(MmapDevice {
            path: path.to_owned(),
            file,
            map,
            len,
            page_size,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the host file system has room enough to leave new pages to its
    /// delayed allocation. Reserving them (fallocate) makes a full host an early
    /// ENOSPC rather than a fault in the mapping, but the reserved blocks are
    /// unwritten extents, and ext4 writes those back a few pages at a time: unpacking
    /// 41,874 files, the writeback of the same dirty pages took 6-8 s reserved
    /// against 0.5 s not. So pages are reserved only once the host is short of room.
    fn host_has_room(&self) -> bool {
        match nix::sys::statvfs::fstatvfs(&self.file) {
            Ok(st) => {
                let unit = st.fragment_size();
                let free = st.blocks_available() * unit;
                let size = st.blocks() * unit;
                free >= HOST_ROOM_MIN.max(size / 20)
            }
            Err(_) => false,
        }
    }

    fn span(&self, page: u64, offset: usize, len: usize) -> Result<usize> {
        let start = page
            .checked_mul(self.page_size as u64)
            .and_then(|b| b.checked_add(offset as u64))
            .filter(|s| s.checked_add(len as u64).is_some_and(|end| end <= self.len));
        // The message is made only on failure: every read and write passes here.
        start.map(|s| s as usize).ok_or_else(|| Error::Corrupt {
            page,
            why: format!(
                "page lies beyond the end of the store file ({} bytes)",
                self.len
            ),
        })
    }
}

/// Opens a store file read-write and takes its exclusive lock, or says who holds it.
pub fn open_locked(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::BadStore {
            path: path.to_owned(),
            why: format!("cannot open the store file: {e}"),
        })?;
    lock(&file, path)?;
    Ok(file)
}

fn lock(file: &File, path: &Path) -> Result<()> {
    // SAFETY: flock on a valid open descriptor has no memory effects.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Err(Error::Locked {
            path: path.to_owned(),
            holder: lock_holder(file).unwrap_or_else(|| "another process".into()),
        });
    }
    Err(err.into())
}

/// Finds the process holding a flock on `file` through /proc/locks.
fn lock_holder(file: &File) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    for line in locks.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 00:1f:5678 0 EOF"
        if fields.len() < 6 || fields[1] != "FLOCK" {
            continue;
        }
        let ino = fields[5].rsplit(':').next()?;
        if ino.parse::<u64>().ok() == Some(meta.ino()) {
            let pid = fields[4];
            let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .map(|c| c.replace('\0', " ").trim().to_string())
                .unwrap_or_default();
            return Some(format!("process {pid} ({cmd})"));
        }
    }
    None
}

impl PageDevice for MmapDevice {
    fn page_size(&self) -> usize {
        self.page_size
    }

    fn capacity_pages(&self) -> u64 {
        self.len / self.page_size as u64
    }

    fn read(&self, page: u64, offset: usize, buf: &mut [u8]) -> Result<()> {
        let start = self.span(page, offset, buf.len())?;
        // SAFETY: `span` checked that [start, start+len) lies inside the mapping, which
        // stays valid while `self` lives (the file is never shrunk while mapped). The
        // volume layer guarantees no thread writes these bytes concurrently.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.as_ptr().add(start),
                buf.as_mut_ptr(),
                buf.len(),
            );
        }
        Ok(())
    }

    fn write(&self, page: u64, offset: usize, data: &[u8]) -> Result<()> {
        let start = self.span(page, offset, data.len())?;
        if data.len() >= PWRITE_MIN {
            // Straight into the page cache: the same pages the mapping shows.
            use std::os::unix::fs::FileExt;
            for (k, part) in data.chunks(PWRITE_CHUNK).enumerate() {
                self.file
                    .write_all_at(part, (start + k * PWRITE_CHUNK) as u64)?;
            }
            return Ok(());
        }
        // SAFETY: as in `read`; the destination range is inside the mapping and no
        // other thread reads or writes it meanwhile (see the module invariants).
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.map.as_mut_ptr().add(start),
                data.len(),
            );
        }
        Ok(())
    }

    fn allocate(&self, start: u64, count: u64) -> Result<()> {
        if self.host_has_room() {
            return Ok(());
        }
        let ps = self.page_size as i64;
        // SAFETY: fallocate on a valid descriptor; no memory is touched.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_KEEP_SIZE,
                start as i64 * ps,
                count as i64 * ps,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            // A host file system without fallocate still works; we only lose the
            // early ENOSPC (a write fault into a hole may then SIGBUS on a full host).
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(e.into());
            }
        }
        Ok(())
    }

    fn free(&self, start: u64, count: u64) {
        let ps = self.page_size as i64;
        // SAFETY: fallocate on a valid descriptor; the punched pages are unreachable
        // from every tree, so no thread reads them.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                start as i64 * ps,
                count as i64 * ps,
            )
        };
        if rc != 0 {
            log::debug!(
                "punching pages {start}+{count} failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }

    fn sync(&self) -> Result<()> {
        // The mapping is MAP_SHARED: its dirty pages are the file's page cache, so
        // fdatasync of the file writes them back.
        self.file.sync_data()?;
        Ok(())
    }
}
