//! An in-memory [`PageDevice`] for tests: it keeps the bytes written apart from the
//! bytes made durable, so a test can cut the power at any point and reopen from
//! the durable bytes alone, with the pages written since the last sync dropped,
//! kept or torn at random. It can also inject faults: a full host and failing writes.

use super::device::PageDevice;
use crate::error::{Error, Result};
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// Power-cut image: page number -> bytes.
pub type Image = HashMap<u64, Box<[u8]>>;

pub struct MemDevice {
    page_size: usize,
    capacity: u64,
    inner: Mutex<Inner>,
}

struct Inner {
    live: Image,
    durable: Image,
    /// Pages written since the last sync.
    dirty: BTreeSet<u64>,
    host_full: bool,
    /// Fails every write once this many more writes went through.
    fail_after: Option<u64>,
    /// Cuts the power once this many more writes or syncs went through.
    cut_after: Option<(u64, u64)>,
    cut_image: Option<Image>,
}

impl MemDevice {
    pub fn new(page_size: usize, capacity_pages: u64) -> MemDevice {
        Self::from_image(page_size, capacity_pages, Image::new())
    }

    /// A device whose live and durable bytes are `image` (a machine after reboot).
    pub fn from_image(page_size: usize, capacity_pages: u64, image: Image) -> MemDevice {
        MemDevice {
            page_size,
            capacity: capacity_pages,
            inner: Mutex::new(Inner {
                live: image.clone(),
                durable: image,
                dirty: BTreeSet::new(),
                host_full: false,
                fail_after: None,
                cut_after: None,
                cut_image: None,
            }),
        }
    }

    /// The bytes as they would be after the power failed now: the durable bytes, and
    /// each page written since the last sync dropped, kept, or torn at a 512-byte
    /// boundary, chosen by `seed`.
    pub fn power_cut(&self, seed: u64) -> Image {
        let inner = self.inner.lock().unwrap();
        inner
            .cut_image
            .clone()
            .unwrap_or_else(|| inner.power_cut(seed, self.page_size))
    }

    /// The bytes as a killed process leaves them: everything written survives.
    pub fn live_image(&self) -> Image {
        self.inner.lock().unwrap().live.clone()
    }

    /// Makes later `allocate` calls fail as on a full host file system.
    pub fn set_host_full(&self, full: bool) {
        self.inner.lock().unwrap().host_full = full;
    }

    /// Makes every write fail with EIO after `n` more writes.
    pub fn fail_writes_after(&self, n: u64) {
        self.inner.lock().unwrap().fail_after = Some(n);
    }

    /// Cuts the power after `n` more writes or syncs: the image is taken then, and
    /// later writes are silently lost (the process does not notice, as in a real cut).
    pub fn cut_power_after(&self, n: u64, seed: u64) {
        self.inner.lock().unwrap().cut_after = Some((n, seed));
    }

    pub fn power_is_cut(&self) -> bool {
        self.inner.lock().unwrap().cut_image.is_some()
    }

    fn check(&self, page: u64, offset: usize, len: usize) -> Result<()> {
        let end = page * self.page_size as u64 + offset as u64 + len as u64;
        if end > self.capacity * self.page_size as u64 {
            return Err(Error::Corrupt {
                page,
                why: "page lies beyond the end of the device".into(),
            });
        }
        Ok(())
    }
}

impl Inner {
    fn power_cut(&self, seed: u64, page_size: usize) -> Image {
        let mut rng = seed | 1;
        let mut image = self.durable.clone();
        for &p in &self.dirty {
            let choice = xorshift(&mut rng) % 3;
            let live = self.live.get(&p);
            match (choice, live) {
                (0, _) | (_, None) => {}
                (1, Some(l)) => {
                    image.insert(p, l.clone());
                }
                (_, Some(l)) => {
                    let sectors = page_size / 512;
                    let cut = (xorshift(&mut rng) as usize % sectors) * 512;
                    let mut torn = image
                        .get(&p)
                        .cloned()
                        .unwrap_or_else(|| vec![0; page_size].into_boxed_slice());
                    torn[..cut].copy_from_slice(&l[..cut]);
                    image.insert(p, torn);
                }
            }
        }
        image
    }

    /// Counts one write or sync toward a scheduled power cut; true once the power is off.
    fn tick(&mut self, page_size: usize) -> bool {
        if self.cut_image.is_some() {
            return true;
        }
        if let Some((n, seed)) = self.cut_after {
            if n == 0 {
                self.cut_image = Some(self.power_cut(seed, page_size));
                return true;
            }
            self.cut_after = Some((n - 1, seed));
        }
        false
    }
}

fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

impl PageDevice for MemDevice {
    fn page_size(&self) -> usize {
        self.page_size
    }

    fn capacity_pages(&self) -> u64 {
        self.capacity
    }

    fn read(&self, page: u64, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.check(page, offset, buf.len())?;
        let inner = self.inner.lock().unwrap();
        let ps = self.page_size;
        let mut done = 0;
        let mut pos = page as usize * ps + offset;
        while done < buf.len() {
            let (p, off) = (pos / ps, pos % ps);
            let n = (ps - off).min(buf.len() - done);
            match inner.live.get(&(p as u64)) {
                Some(bytes) => buf[done..done + n].copy_from_slice(&bytes[off..off + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
            pos += n;
        }
        Ok(())
    }

    fn write(&self, page: u64, offset: usize, data: &[u8]) -> Result<()> {
        self.check(page, offset, data.len())?;
        let mut inner = self.inner.lock().unwrap();
        if let Some(n) = inner.fail_after {
            if n == 0 {
                return Err(Error::Io(std::io::Error::from_raw_os_error(libc::EIO)));
            }
            inner.fail_after = Some(n - 1);
        }
        if inner.tick(self.page_size) {
            return Ok(());
        }
        let ps = self.page_size;
        let mut done = 0;
        let mut pos = page as usize * ps + offset;
        while done < data.len() {
            let (p, off) = (pos / ps, pos % ps);
            let n = (ps - off).min(data.len() - done);
            let bytes = inner
                .live
                .entry(p as u64)
                .or_insert_with(|| vec![0; ps].into_boxed_slice());
            bytes[off..off + n].copy_from_slice(&data[done..done + n]);
            inner.dirty.insert(p as u64);
            done += n;
            pos += n;
        }
        Ok(())
    }

    fn allocate(&self, start: u64, count: u64) -> Result<()> {
        if start + count > self.capacity {
            return Err(Error::NoSpace);
        }
        if self.inner.lock().unwrap().host_full {
            return Err(Error::NoSpace);
        }
        Ok(())
    }

    /// A trim, as a store file's hole punch or a RADOS object removal: the pages
    /// read as zeros at once, durably too, so a page freed while the last durable
    /// commit still names it shows up at the next open.
    fn free(&self, start: u64, count: u64) {
        let mut inner = self.inner.lock().unwrap();
        if inner.cut_image.is_some() {
            return;
        }
        let freed = start..start.saturating_add(count);
        let inner = &mut *inner;
        for map in [&mut inner.live, &mut inner.durable] {
            match count as usize <= map.len() {
                true => freed.clone().for_each(|p| drop(map.remove(&p))),
                false => map.retain(|p, _| !freed.contains(p)),
            }
        }
        inner.dirty.retain(|p| !freed.contains(p));
    }

    fn sync(&self) -> Result<()> {
        let mut inner = self.inner.lock().unwrap();
        if inner.tick(self.page_size) {
            return Ok(());
        }
        let dirty = std::mem::take(&mut inner.dirty);
        for p in dirty {
            let bytes = inner.live[&p].clone();
            inner.durable.insert(p, bytes);
        }
        Ok(())
    }
}
