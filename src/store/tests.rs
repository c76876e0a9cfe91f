use super::memdev::MemDevice;
use super::*;

fn new_store(pages: u64) -> Store {
    let dev: Arc<dyn PageDevice> = Arc::new(MemDevice::new(4096, pages));
    Store::format(dev.as_ref(), 7).unwrap();
    let (store, _) = Store::open(dev, Path::new("mem")).unwrap();
    store.recount_done();
    store
}

#[test]
fn allocations_are_contiguous_and_released_pages_coalesce() {
    let s = new_store(4096);
    let (a, n) = s.allocate(100, false).unwrap();
    assert_eq!((a, n), (PageNo(2), 100));
    let (b, m) = s.allocate(50, false).unwrap();
    assert_eq!((b, m), (PageNo(102), 50));
    let before = s.space().used;
    let mut pages: Vec<PageNo> = (2..152).map(PageNo).collect();
    for p in &pages {
        assert_eq!(s.decref(*p).unwrap(), 0);
    }
    s.release(&mut pages);
    assert_eq!(s.space().used, before - 150 * 4096);
    assert_eq!(
        s.alloc.lock().unwrap().free.len(),
        1,
        "released runs coalesce into one extent"
    );
}

#[test]
fn exhausting_the_store_is_nospace_and_the_reserve_is_kept_for_frees() {
    let s = new_store(256);
    let mut got = 0;
    while let Ok((_, n)) = s.allocate(7, false) {
        got += n;
    }
    assert!(matches!(s.allocate(1, false), Err(Error::NoSpace)));
    assert!(
        s.allocate(1, true).is_ok(),
        "the reserve serves operations that free space"
    );
    assert_eq!(got, 254 - s.alloc.lock().unwrap().reserve);
}

#[test]
fn refcounts_never_go_below_zero() {
    let s = new_store(128);
    let (p, _) = s.allocate(1, false).unwrap();
    s.incref(p);
    assert_eq!(s.decref(p).unwrap(), 1);
    assert_eq!(s.decref(p).unwrap(), 0);
    assert!(matches!(s.decref(p), Err(Error::Corrupt { .. })));
}

#[test]
fn superblock_copies_alternate_and_the_newest_valid_wins() {
    let dev = Arc::new(MemDevice::new(4096, 128));
    let mut sb = Store::format(dev.as_ref(), 1).unwrap();
    let (store, _) = Store::open(dev.clone(), Path::new("mem")).unwrap();
    sb.generation = 2;
    sb.next_cluster_id = 9;
    store.commit(&sb).unwrap();
    assert_eq!(
        Store::read_superblock(dev.as_ref(), Path::new("m")).unwrap(),
        sb
    );
    // Tear the newest copy: the older one is used.
    dev.write(0, 20, &[0xff; 4]).unwrap();
    let old = Store::read_superblock(dev.as_ref(), Path::new("m")).unwrap();
    assert_eq!(old.generation, 0, "format wrote generation 0 into copy 1");
}

#[test]
fn bad_superblocks_are_named() {
    let dev = MemDevice::new(4096, 128);
    let e = Store::read_superblock(&dev, Path::new("/x/s"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/x/s") && e.contains("not a clonefs store"),
        "{e}"
    );
    let mut sb = Store::format(&dev, 1).unwrap();
    sb.generation = 5;
    let mut b = sb.encode(4096);
    b[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let crc = crc32fast::hash(&b[0..64]);
    b[64..68].copy_from_slice(&crc.to_le_bytes());
    dev.write(0, 0, &b).unwrap();
    dev.write(1, 0, &b).unwrap();
    let e = Store::read_superblock(&dev, Path::new("s"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("newer clonefs"), "{e}");
}

/// A device whose syncs take a while and cover the writes finished when they
/// begin; `durable` is the count of writes some finished sync covers, and
/// `overlap` the most syncs that were in flight at once.
struct SlowSync {
    mem: MemDevice,
    writes: AtomicU64,
    durable: AtomicU64,
    in_flight: AtomicU64,
    overlap: AtomicU64,
}

impl PageDevice for SlowSync {
    fn page_size(&self) -> usize {
        self.mem.page_size()
    }
    fn capacity_pages(&self) -> u64 {
        self.mem.capacity_pages()
    }
    fn read(&self, page: u64, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.mem.read(page, offset, buf)
    }
    fn write(&self, page: u64, offset: usize, data: &[u8]) -> Result<()> {
        self.mem.write(page, offset, data)?;
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn allocate(&self, start: u64, count: u64) -> Result<()> {
        self.mem.allocate(start, count)
    }
    fn free(&self, start: u64, count: u64) {
        self.mem.free(start, count)
    }
    fn sync(&self) -> Result<()> {
        let covers = self.writes.load(Ordering::SeqCst);
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.overlap.fetch_max(n, Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(2));
        self.durable.fetch_max(covers, Ordering::SeqCst);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn a_shared_sync_ends_after_a_sync_begun_after_the_callers_writes_and_syncs_overlap() {
    let dev = Arc::new(SlowSync {
        mem: MemDevice::new(4096, 256),
        writes: AtomicU64::new(0),
        durable: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        overlap: AtomicU64::new(0),
    });
    Store::format(dev.as_ref(), 7).unwrap();
    let (store, _) = Store::open(dev.clone(), Path::new("slow")).unwrap();
    let (threads, rounds) = (8u64, 25u64);
    let start = std::sync::Barrier::new(threads as usize);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (dev, store, start) = (&dev, &store, &start);
            s.spawn(move || {
                for r in 0..rounds {
                    start.wait();
                    dev.write(FIRST_DATA_PAGE + t, 0, &r.to_le_bytes()).unwrap();
                    let mine = dev.writes.load(Ordering::SeqCst);
                    store.sync_shared().unwrap();
                    let durable = dev.durable.load(Ordering::SeqCst);
                    assert!(durable >= mine, "round {r}: {durable} < {mine}");
                }
            });
        }
    });
    // A caller does not queue behind a sync that began before its writes.
    assert!(dev.overlap.load(Ordering::SeqCst) >= 2);
}
