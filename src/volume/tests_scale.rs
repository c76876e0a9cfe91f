//! What keeps a large store cheap to open and to watch: reference counts saved by
//! a clean close (the next open takes them; a torn, overwritten or missing set is
//! recounted instead), and space figures from a pinned walk of the last commit's
//! trees while writers go on.

use super::tests::{after_power_cut, clean, file};
use super::*;
use crate::store::memdev::MemDevice;
use crate::store::{PageDevice, Store};
use std::path::Path;
use std::sync::atomic::Ordering;

const WHO: NewInode = NewInode {
    perm: 0o755,
    uid: 0,
    gid: 0,
};

/// A volume with clusters, clones that diverged, a deleted source and restore
/// points off: counts above 1 and freed pages both.
fn busy() -> (Arc<Volume>, Arc<MemDevice>) {
    let (v, dev) = Volume::in_memory(4096, 4096).unwrap();
    v.set_store_retention(Duration::ZERO).unwrap();
    let a = v.create_cluster("a", WHO).unwrap().id;
    for k in 0..20u8 {
        let f = file(&v, a, &format!("f{k}"));
        v.write(a, f, 0, &vec![k; 9000 + 4096 * k as usize])
            .unwrap();
    }
    v.clone_cluster("a", "b").unwrap();
    v.clone_cluster("a", "c").unwrap();
    let b = v.cluster_by_name("b").unwrap().id;
    let f = v.lookup(b, Ino::ROOT, b"f3").unwrap().ino;
    v.write(b, f, 4096, &[9; 5000]).unwrap();
    v.delete_cluster("a").unwrap();
    v.commit().unwrap();
    (v, dev)
}

fn image_of(dev: &MemDevice, image: crate::store::memdev::Image) -> Arc<MemDevice> {
    Arc::new(MemDevice::from_image(4096, dev.capacity_pages(), image))
}

fn open(dev: Arc<MemDevice>) -> Arc<Volume> {
    Volume::open_device(dev, Path::new("mem"), false).unwrap()
}

/// Closes `v` and opens what its device holds on a new one (a clean restart).
fn reopen(v: Arc<Volume>, dev: &MemDevice) -> (Arc<Volume>, Arc<MemDevice>) {
    v.close().unwrap();
    drop(v);
    let d = image_of(dev, dev.live_image());
    (open(d.clone()), d)
}

fn contents(v: &Volume) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for cl in v.clusters() {
        let c = cl.id;
        for e in v.readdir(c, Ino::ROOT, 0).unwrap() {
            if e.kind == Kind::File {
                let size = v.getattr(c, e.ino).unwrap().size;
                let name = format!("{}/{}", cl.name, String::from_utf8_lossy(&e.name));
                out.push((name, v.read(c, e.ino, 0, size as usize).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_clean_close_saves_the_counts_and_the_next_open_takes_them() {
    let (v, dev) = busy();
    let before = contents(&v);
    let used = v.statfs().used;
    let (v, dev) = reopen(v, &dev);
    assert!(v.counts_were_saved());
    assert_eq!(contents(&v), before);
    assert_eq!(
        v.statfs().used,
        used,
        "the saved counts' own pages are freed"
    );
    // fsck compares every count with a recount of the trees, leaks included.
    clean(&v);
    // And again, after changes on the reopened store.
    let b = v.cluster_by_name("b").unwrap().id;
    let f = file(&v, b, "new");
    v.write(b, f, 0, &[1; 20000]).unwrap();
    v.clone_cluster("b", "d").unwrap();
    let (v, _) = reopen(v, &dev);
    assert!(v.counts_were_saved());
    clean(&v);
}

#[test]
fn saved_counts_that_were_overwritten_or_torn_are_recounted() {
    let (v, dev) = busy();
    let before = contents(&v);
    v.close().unwrap();
    let sb = Store::read_superblock(dev.as_ref(), Path::new("mem")).unwrap();
    let map = sb.counts.expect("a clean close names its saved counts");
    for damage in [0usize, 100, 4095] {
        let d = image_of(&dev, dev.live_image());
        d.write(map.first.0 + map.pages - 1, damage, &[0x5a])
            .unwrap();
        let v = open(d);
        assert!(!v.counts_were_saved(), "damage at byte {damage} is noticed");
        assert_eq!(contents(&v), before);
        clean(&v);
    }
}

#[test]
fn a_crash_after_an_open_from_saved_counts_recounts_and_loses_nothing_synced() {
    let (v, dev) = busy();
    let (v, dev) = reopen(v, &dev);
    assert!(v.counts_were_saved());
    let c = v.cluster_by_name("c").unwrap().id;
    let f = file(&v, c, "late");
    v.write(c, f, 0, &[4; 10000]).unwrap();
    v.fsync(c, f).unwrap();
    let synced = contents(&v);
    v.write(c, f, 20000, &[5; 10000]).unwrap();
    let v2 = after_power_cut(&dev, 7);
    assert!(!v2.counts_were_saved());
    let late = contents(&v2);
    assert!(late
        .iter()
        .any(|(n, d)| n == "c/late" && d[..10000] == [4; 10000]));
    assert_eq!(late.len(), synced.len());
    clean(&v2);
}

#[test]
fn a_power_cut_anywhere_in_a_close_leaves_a_store_that_opens_clean() {
    let mut saved = [0, 0];
    for n in 0..40 {
        let (v, dev) = busy();
        let before = contents(&v);
        dev.cut_power_after(n, n);
        let _ = v.close();
        drop(v);
        let v = open(image_of(&dev, dev.power_cut(n)));
        assert_eq!(contents(&v), before, "cut after {n} writes");
        clean(&v);
        saved[v.counts_were_saved() as usize] += 1;
    }
    assert!(
        saved[0] > 0 && saved[1] > 0,
        "cuts both before and after the saved counts' superblock: {saved:?}"
    );
}

#[test]
fn pinned_walks_among_writers_read_intact_trees_and_end_exact() {
    let (v, _dev) = busy();
    let b = v.cluster_by_name("b").unwrap().id;
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            // Copy-on-write, shadowing, frees and new clusters, all the time.
            let mut k = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let f = v.lookup(b, Ino::ROOT, b"f5").unwrap().ino;
                v.write(b, f, (k as u64 % 8) * 4096, &[k as u8; 6000])
                    .unwrap();
                let g = file(&v, b, &format!("g{k}"));
                v.write(b, g, 0, &[1; 8192]).unwrap();
                // The one before goes: as many rounds as the walks take (on a busy
                // host, many) must not fill the store.
                if k > 0 {
                    v.unlink(b, Ino::ROOT, format!("g{}", k - 1).as_bytes())
                        .unwrap();
                }
                v.clone_cluster("b", &format!("x{k}")).unwrap();
                if k > 0 {
                    v.delete_cluster(&format!("x{}", k - 1)).unwrap();
                }
                v.commit().unwrap();
                k += 1;
            }
        });
        for _ in 0..30 {
            let cancel_at = v.space.0.lock().unwrap().cancel;
            let r = v.walk_committed(cancel_at).unwrap();
            let r = r.expect("nobody cancels this walk");
            assert!(r.clusters.iter().any(|c| c.name == "b"));
            for c in r.clusters.iter() {
                assert_eq!(c.shared + c.unique, c.logical, "{c:?}");
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    v.commit().unwrap();
    let report = v.space_report(Duration::from_secs(30)).unwrap();
    assert!(report.current);
    let mut live = v.space().unwrap();
    live.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(*report.clusters, live);
    clean(&v);
}

#[test]
fn a_walk_holds_frees_back_until_it_ends() {
    let (v, _dev) = Volume::in_memory(4096, 1024).unwrap();
    v.set_store_retention(Duration::ZERO).unwrap();
    let c = v.create_cluster("c", WHO).unwrap().id;
    let f = file(&v, c, "f");
    v.write(c, f, 0, &vec![3; 2 << 20]).unwrap();
    v.commit().unwrap();
    let used = v.statfs().used;
    {
        let _pin = v.eng.pin();
        v.unlink(c, Ino::ROOT, b"f").unwrap();
        v.commit().unwrap();
        v.commit().unwrap();
        let during = v.statfs().used;
        assert!(during >= used, "the pinned trees keep their pages");
    }
    assert!(
        v.statfs().used < used - (1 << 20),
        "and free them when unpinned"
    );
    clean(&v);
}

#[test]
fn fsck_checks_saved_counts_against_its_recount() {
    let (v, dev) = busy();
    v.close().unwrap();
    drop(v);
    let check = |d: Arc<MemDevice>| {
        Volume::open_device(d, Path::new("mem"), true)
            .unwrap()
            .fsck()
            .unwrap()
    };
    let r = check(image_of(&dev, dev.live_image()));
    assert!(r.is_clean() && r.notes.is_empty(), "{r}");
    // Saved counts that say otherwise than the trees: a problem, named by page.
    let sb = Store::read_superblock(dev.as_ref(), Path::new("mem")).unwrap();
    let map = sb.counts.unwrap();
    let d = image_of(&dev, dev.live_image());
    let mut b = vec![0u8; 4096];
    d.read(map.first.0, 0, &mut b).unwrap();
    // The first run covers the pages from 2 on: make it say 2 references.
    b[28..32].copy_from_slice(&2u32.to_le_bytes());
    let crc = {
        let mut h = crc32fast::Hasher::new();
        h.update(&b[..20]);
        h.update(&[0; 4]);
        h.update(&b[24..]);
        h.finalize()
    };
    b[20..24].copy_from_slice(&crc.to_le_bytes());
    d.write(map.first.0, 0, &b).unwrap();
    let r = check(d);
    assert!(
        r.problems
            .iter()
            .any(|p| p.contains("the counts saved at the last close say 2")),
        "{r}"
    );
    // Torn ones: only a note (the next mount recounts).
    let d = image_of(&dev, dev.live_image());
    d.write(map.first.0, 40, &[0x77]).unwrap();
    let r = check(d);
    assert!(r.is_clean(), "{r}");
    assert!(r.notes.iter().any(|n| n.contains("unusable")), "{r}");
}

#[test]
fn a_count_that_drifted_is_corrected_at_close_not_saved() {
    let (v, dev) = busy();
    // A reference no tree holds (as a bug would leave), and one more on a page
    // that is free.
    let used = v.eng.store.counts().next().unwrap().0;
    v.eng.store.incref(used);
    v.eng.store.allocate(1, false).unwrap();
    let (v, _) = reopen(v, &dev);
    assert!(v.counts_were_saved());
    // fsck compares every count with the trees, the stray page's too.
    clean(&v);
    assert!(!v.eng.store.is_free(used));
}
