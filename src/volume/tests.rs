//! Unit tests of the volume layer on an in-memory device.

use super::commit::TIMES_INTERVAL;
use super::*;
use crate::error::Error;
use crate::store::memdev::MemDevice;
use crate::store::PageDevice;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub(super) const WHO: NewInode = NewInode {
    perm: 0o755,
    uid: 0,
    gid: 0,
};

/// A writer without CAP_FSETID, in every group.
const DROPS: Writer = Writer {
    caller: Caller {
        fsetid: false,
        in_group: &|_| true,
    },
    from_cache: false,
};

/// A volume without restore points: these tests are of the mechanics beneath them
/// (space coming back, overwrites in place); `points` tests keep them.
fn vol(pages: u64) -> (Arc<Volume>, Arc<MemDevice>) {
    let (v, dev) = Volume::in_memory(4096, pages).unwrap();
    v.set_store_retention(Duration::ZERO).unwrap();
    (v, dev)
}

pub(super) fn reopen(v: Arc<Volume>, dev: &Arc<MemDevice>) -> Arc<Volume> {
    v.close().unwrap();
    drop(v);
    let d = Arc::new(MemDevice::from_image(
        4096,
        dev.capacity_pages(),
        dev.live_image(),
    ));
    Volume::open_device(d, Path::new("mem"), false).unwrap()
}

/// The volume as it opens after the power is cut (`seed` picks which unsynced
/// writes the device keeps).
pub(super) fn after_power_cut(dev: &MemDevice, seed: u64) -> Arc<Volume> {
    let image = dev.power_cut(seed);
    let d = MemDevice::from_image(4096, dev.capacity_pages(), image);
    Volume::open_device(Arc::new(d), Path::new("cut"), false).unwrap()
}

pub(super) fn file(v: &Volume, c: ClusterId, name: &str) -> Ino {
    v.mknod(c, Ino::ROOT, name.as_bytes(), Kind::File, WHO, 0)
        .unwrap()
        .ino
}

/// A volume with cluster "c" holding "wal": 64 KiB of zeros, synced, so that
/// overwrites within it go in place.
fn synced_wal() -> (Arc<Volume>, Arc<MemDevice>, ClusterId, Ino) {
    let (v, dev) = vol(4096);
    let c = v.create_cluster("c", WHO).unwrap().id;
    let f = file(&v, c, "wal");
    v.write(c, f, 0, &vec![0u8; 64 * 1024]).unwrap();
    v.fdatasync(c, f).unwrap();
    (v, dev, c, f)
}

pub(super) fn clean(v: &Volume) {
    let r = v.fsck().unwrap();
    assert!(r.is_clean(), "{r}");
}

#[test]
fn write_read_clone_and_copy_on_write_both_sides() {
    let (v, _) = vol(4096);
    let prod = v.create_cluster("prod", WHO).unwrap().id;
    let f = file(&v, prod, "f");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(v.write(prod, f, 0, &data).unwrap(), data.len());
    assert_eq!(v.read(prod, f, 0, 400_000).unwrap(), data);
    let used = v.statfs().used;
    let test = v.clone_cluster("prod", "test").unwrap().id;
    assert_eq!(v.statfs().used, used, "a clone allocates nothing");
    let tf = v.lookup(test, Ino::ROOT, b"f").unwrap().ino;
    assert_eq!(v.read(test, tf, 0, 400_000).unwrap(), data);
    v.write(prod, f, 5000, b"PROD").unwrap();
    v.write(test, tf, 9000, b"TEST").unwrap();
    let p = v.read(prod, f, 0, 400_000).unwrap();
    let t = v.read(test, tf, 0, 400_000).unwrap();
    assert_eq!(&p[5000..5004], b"PROD");
    assert_eq!(&p[9000..9004], &data[9000..9004]);
    assert_eq!(&t[9000..9004], b"TEST");
    assert_eq!(&t[5000..5004], &data[5000..5004]);
    clean(&v);
    v.delete_cluster("prod").unwrap();
    assert_eq!(v.read(test, tf, 0, 4).unwrap(), &data[0..4]);
    clean(&v);
}

#[test]
fn everything_survives_a_reopen_and_deleting_frees_unique_pages() {
    let (v, dev) = vol(8192);
    let a = v.create_cluster("a", WHO).unwrap().id;
    v.mkdir(a, Ino::ROOT, b"d", WHO).unwrap();
    let d = v.lookup(a, Ino::ROOT, b"d").unwrap().ino;
    let f = v.mknod(a, d, b"x", Kind::File, WHO, 0).unwrap().ino;
    v.write(a, f, 100_000, b"hello").unwrap();
    v.symlink(a, Ino::ROOT, b"l", b"d/x", WHO).unwrap();
    v.setxattr(a, f, b"user.k", b"v", XattrMode::Create)
        .unwrap();
    v.clone_cluster("a", "b").unwrap();
    let v = reopen(v, &dev);
    let a = v.cluster_by_name("a").unwrap().id;
    let b = v.cluster_by_name("b").unwrap().id;
    for c in [a, b] {
        let d = v.lookup(c, Ino::ROOT, b"d").unwrap().ino;
        let f = v.lookup(c, d, b"x").unwrap();
        assert_eq!(f.size, 100_005);
        assert_eq!(v.read(c, f.ino, 100_000, 10).unwrap(), b"hello");
        assert_eq!(v.read(c, f.ino, 0, 10).unwrap(), vec![0; 10]);
        assert_eq!(v.getxattr(c, f.ino, b"user.k").unwrap(), b"v");
    }
    let l = v.lookup(a, Ino::ROOT, b"l").unwrap().ino;
    assert_eq!(v.readlink(a, l).unwrap(), b"d/x");
    let g = file(&v, b, "big");
    v.write(b, g, 0, &vec![7u8; 1 << 20]).unwrap();
    v.commit().unwrap();
    v.commit().unwrap();
    let unique = v
        .space()
        .unwrap()
        .into_iter()
        .find(|s| s.name == "b")
        .unwrap()
        .unique;
    assert!(unique >= 1 << 20, "{unique}");
    let before = v.statfs().used;
    v.delete_cluster("b").unwrap();
    v.commit().unwrap();
    v.commit().unwrap();
    assert_eq!(
        before - v.statfs().used,
        unique,
        "deleting frees exactly the unique pages"
    );
    clean(&v);
}

#[test]
fn directories_rename_and_links_keep_posix_counts() {
    let (v, _) = vol(4096);
    let c = v.create_cluster("c", WHO).unwrap().id;
    let d1 = v.mkdir(c, Ino::ROOT, b"d1", WHO).unwrap().ino;
    let d2 = v.mkdir(c, Ino::ROOT, b"d2", WHO).unwrap().ino;
    assert_eq!(v.getattr(c, Ino::ROOT).unwrap().nlink, 4);
    let f = v.mknod(c, d1, b"f", Kind::File, WHO, 0).unwrap().ino;
    v.link(c, f, d2, b"g").unwrap();
    assert_eq!(v.getattr(c, f).unwrap().nlink, 2);
    assert!(matches!(v.rmdir(c, Ino::ROOT, b"d1"), Err(Error::NotEmpty)));
    v.rename(c, Ino::ROOT, b"d1", d2, b"sub", RenameFlags::default())
        .unwrap();
    assert_eq!(v.getattr(c, Ino::ROOT).unwrap().nlink, 3);
    assert_eq!(v.getattr(c, d2).unwrap().nlink, 3);
    assert!(matches!(
        v.rename(c, Ino::ROOT, b"d2", d1, b"x", RenameFlags::default()),
        Err(Error::InvalidArgument(_))
    ));
    let h = v.mknod(c, d2, b"h", Kind::File, WHO, 0).unwrap().ino;
    v.rename(
        c,
        d2,
        b"h",
        d2,
        b"g",
        RenameFlags {
            exchange: true,
            noreplace: false,
        },
    )
    .unwrap();
    assert_eq!(v.lookup(c, d2, b"g").unwrap().ino, h);
    assert_eq!(v.lookup(c, d2, b"h").unwrap().ino, f);
    assert!(matches!(
        v.rename(
            c,
            d2,
            b"h",
            d2,
            b"g",
            RenameFlags {
                noreplace: true,
                exchange: false
            }
        ),
        Err(Error::AlreadyExists(_))
    ));
    v.rename(c, d2, b"h", d2, b"g", RenameFlags::default())
        .unwrap();
    assert_eq!(v.getattr(c, f).unwrap().nlink, 2);
    assert!(matches!(v.getattr(c, h), Err(Error::NotFound)));
    let names: Vec<Vec<u8>> = v
        .readdir(c, d2, 0)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        vec![
            b".".to_vec(),
            b"..".to_vec(),
            b"g".to_vec(),
            b"sub".to_vec()
        ]
    );
    clean(&v);
}

#[test]
fn truncate_punch_seek_and_shared_copy() {
    let (v, _) = vol(4096);
    let c = v.create_cluster("c", WHO).unwrap().id;
    let f = file(&v, c, "f");
    v.write(c, f, 0, &vec![1u8; 5 * 4096]).unwrap();
    v.fallocate(
        c,
        f,
        4096,
        8192,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
    )
    .unwrap();
    assert_eq!(v.seek(c, f, 0, Whence::Hole).unwrap(), 4096);
    assert_eq!(v.seek(c, f, 4096, Whence::Data).unwrap(), 3 * 4096);
    assert_eq!(v.read(c, f, 4096, 10).unwrap(), vec![0; 10]);
    v.setattr(
        c,
        f,
        &SetAttr {
            size: Some(100),
            ..Default::default()
        },
    )
    .unwrap();
    v.setattr(
        c,
        f,
        &SetAttr {
            size: Some(9000),
            ..Default::default()
        },
    )
    .unwrap();
    let r = v.read(c, f, 0, 9000).unwrap();
    assert_eq!(&r[..100], &[1u8; 100][..]);
    assert!(
        r[100..].iter().all(|b| *b == 0),
        "bytes past a shrink read as zeros"
    );
    let g = file(&v, c, "g");
    v.write(c, f, 0, &vec![9u8; 64 * 4096]).unwrap();
    let used = v.statfs().used;
    assert_eq!(
        v.copy_range(c, f, 0, c, g, 0, 64 * 4096).unwrap(),
        64 * 4096
    );
    assert!(v.statfs().used - used < 8 * 4096, "copy_range shares pages");
    v.write(c, g, 0, b"x").unwrap();
    assert_eq!(v.read(c, f, 0, 1).unwrap(), b"\x09");
    clean(&v);
}

#[test]
fn a_full_store_is_nospace_and_recovers_after_a_delete() {
    let (v, _) = vol(1024);
    let c = v.create_cluster("c", WHO).unwrap().id;
    let f = file(&v, c, "f");
    let chunk = vec![3u8; 64 * 1024];
    let mut off = 0;
    loop {
        match v.write(c, f, off, &chunk) {
            Ok(n) => off += n as u64,
            Err(Error::NoSpace) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(off > 2 << 20, "{off}");
    clean(&v);
    assert!(matches!(
        v.mknod(c, Ino::ROOT, b"g", Kind::File, WHO, 0),
        Err(Error::NoSpace)
    ));
    v.unlink(c, Ino::ROOT, b"f").unwrap();
    let g = file(&v, c, "g");
    assert_eq!(v.write(c, g, 0, &chunk).unwrap(), chunk.len());
    clean(&v);
}

#[test]
fn bad_names_are_refused() {
    let (v, _) = vol(1024);
    assert!(matches!(
        v.create_cluster("bad_name", WHO),
        Err(Error::InvalidName { .. })
    ));
    v.create_cluster("ok", WHO).unwrap();
    assert!(matches!(
        v.create_cluster("ok", WHO),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        v.clone_cluster("ok", "ok"),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(v.clone_cluster("nope", "x"), Err(Error::NotFound)));
    let c = v.cluster_by_name("ok").unwrap().id;
    let long = vec![b'a'; 256];
    assert!(matches!(
        v.mknod(c, Ino::ROOT, &long, Kind::File, WHO, 0),
        Err(Error::NameTooLong)
    ));
    assert!(matches!(
        v.mknod(c, Ino::ROOT, b"a/b", Kind::File, WHO, 0),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        v.mknod(c, Ino::ROOT, b"..", Kind::File, WHO, 0),
        Err(Error::AlreadyExists(_))
    ));
}

#[test]
fn fdatasync_of_an_overwrite_in_place_survives_a_power_cut() {
    let (v, dev, c, f) = synced_wal();
    // Overwrites in place: no commit needed, the data pages are synced.
    v.write(c, f, 8192, b"committed-txn").unwrap();
    v.fdatasync(c, f).unwrap();
    // A write that grows the file needs a commit, which fdatasync does.
    v.write(c, f, 64 * 1024, b"tail").unwrap();
    v.fdatasync(c, f).unwrap();
    let v2 = after_power_cut(&dev, 99);
    let c = v2.cluster_by_name("c").unwrap().id;
    let f = v2.lookup(c, Ino::ROOT, b"wal").unwrap().ino;
    assert_eq!(v2.read(c, f, 8192, 13).unwrap(), b"committed-txn");
    assert_eq!(v2.read(c, f, 64 * 1024, 10).unwrap(), b"tail");
    clean(&v2);
}

#[test]
fn a_write_that_drops_no_setuid_bit_is_synced_without_a_commit() {
    let (v, dev, c, f) = synced_wal();
    let g = v.durable_generation();
    // The kernel asks every writer without CAP_FSETID to drop the bits.
    v.write_as(c, f, 8192, b"committed-txn", DROPS).unwrap();
    v.fdatasync(c, f).unwrap();
    assert_eq!(v.durable_generation(), g, "an overwrite in place committed");
    // A setuid file: the drop is a change of mode, which the fdatasync commits.
    let t = file(&v, c, "tool");
    let suid = SetAttr {
        perm: Some(0o6755),
        ..SetAttr::default()
    };
    v.setattr(c, t, &suid).unwrap();
    v.write(c, t, 0, b"old!").unwrap();
    v.fdatasync(c, t).unwrap();
    let g = v.durable_generation();
    v.write_as(c, t, 0, b"new!", DROPS).unwrap();
    assert_eq!(v.getattr(c, t).unwrap().perm, 0o755);
    v.fdatasync(c, t).unwrap();
    assert!(
        v.durable_generation() > g,
        "the dropped setuid bit was not committed"
    );
    let v2 = after_power_cut(&dev, 7);
    let c = v2.cluster_by_name("c").unwrap().id;
    let t = v2.lookup(c, Ino::ROOT, b"tool").unwrap();
    assert_eq!(
        (t.perm, v2.read(c, t.ino, 0, 4).unwrap()),
        (0o755, b"new!".to_vec())
    );
    let f = v2.lookup(c, Ino::ROOT, b"wal").unwrap().ino;
    assert_eq!(v2.read(c, f, 8192, 13).unwrap(), b"committed-txn");
    clean(&v2);
}

#[test]
fn times_handed_over_by_the_writeback_cache_wait_like_an_overwrites() {
    let (v, dev, c, f) = synced_wal();
    let g = v.durable_generation();
    // What the kernel sends for a write in its cache and the fdatasync after it:
    // the written page, then the times it kept, then the sync.
    let cached = Writer {
        caller: Caller::PRIVILEGED,
        from_cache: true,
    };
    v.write_as(c, f, 8192, b"committed-txn", cached).unwrap();
    let (m, ct) = (
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_001),
    );
    let times = SetAttr {
        mtime: Some(SetTime::At(m)),
        ctime: Some(ct),
        ..SetAttr::default()
    };
    let a = v.setattr(c, f, &times).unwrap();
    assert_eq!((a.mtime, a.ctime), (m, ct));
    assert!(
        !v.any_dirty() && !v.eng.has_pending(),
        "the times changed the tree"
    );
    v.fdatasync(c, f).unwrap();
    assert_eq!(v.durable_generation(), g, "the times made fdatasync commit");
    // A clone takes them, and fsync makes them durable.
    let t = v.clone_cluster("c", "t").unwrap().id;
    assert_eq!(v.getattr(t, f).unwrap().mtime, a.mtime);
    v.fsync(c, f).unwrap();
    // Anything beside the modification time is an ordinary change.
    let touch = SetAttr {
        atime: Some(SetTime::Now),
        mtime: Some(SetTime::Now),
        ..SetAttr::default()
    };
    v.setattr(c, f, &touch).unwrap();
    assert!(v.any_dirty());
    let v2 = after_power_cut(&dev, 11);
    let c2 = v2.cluster_by_name("c").unwrap().id;
    let got = v2.getattr(c2, f).unwrap();
    assert_eq!((got.mtime, got.ctime), (a.mtime, a.ctime));
    assert_eq!(v2.read(c2, f, 8192, 13).unwrap(), b"committed-txn");
    clean(&v2);
}

#[test]
fn an_overwrite_in_place_leaves_the_tree_alone_and_its_times_reach_clones_and_commits() {
    let (v, dev) = vol(4096);
    let c = v.create_cluster("c", WHO).unwrap().id;
    let f = file(&v, c, "table");
    v.write(c, f, 0, &vec![1u8; 64 * 1024]).unwrap();
    v.commit().unwrap();
    let before = v.getattr(c, f).unwrap();
    std::thread::sleep(Duration::from_millis(2));
    // Straddles a page boundary; every page is the file's own.
    v.write(c, f, 8190, b"in place").unwrap();
    assert!(
        !v.any_dirty() && !v.eng.has_pending(),
        "an overwrite in place changed the tree"
    );
    let after = v.getattr(c, f).unwrap();
    assert!(after.mtime > before.mtime && after.ctime > before.ctime);
    assert_eq!(after.size, before.size);
    assert!(v.times_waited(Duration::ZERO) && !v.times_waited(TIMES_INTERVAL));
    // A clone takes the waiting times with the data, and the next write on either
    // side copies what it changes.
    let t = v.clone_cluster("c", "t").unwrap().id;
    assert_eq!(v.getattr(t, f).unwrap().mtime, after.mtime);
    v.write(c, f, 8190, b"source!!").unwrap();
    v.write(t, f, 0, b"clone").unwrap();
    assert_eq!(v.read(t, f, 8190, 8).unwrap(), b"in place");
    assert_eq!(v.read(c, f, 0, 5).unwrap(), vec![1u8; 5]);
    // Once the copies' deferred drops are applied, the source's pages are its own
    // again: overwrites go back to the fast path.
    v.commit().unwrap();
    assert!(!v.times_waited(Duration::ZERO));
    std::thread::sleep(Duration::from_millis(2));
    v.write(c, f, 100, b"again").unwrap();
    let last = v.getattr(c, f).unwrap();
    assert!(v.times_waited(Duration::ZERO) && !v.any_dirty() && !v.eng.has_pending());
    assert!(last.mtime > after.mtime);
    // fsync commits the waiting times; they survive a power cut.
    v.fsync(c, f).unwrap();
    assert!(!v.times_waited(Duration::ZERO));
    let v2 = after_power_cut(&dev, 3);
    let (c2, t2) = (
        v2.cluster_by_name("c").unwrap().id,
        v2.cluster_by_name("t").unwrap().id,
    );
    let got = v2.getattr(c2, f).unwrap();
    assert_eq!((got.mtime, got.ctime), (last.mtime, last.ctime));
    assert_eq!(v2.read(c2, f, 100, 5).unwrap(), b"again");
    assert_eq!(v2.read(c2, f, 8190, 8).unwrap(), b"source!!");
    assert_eq!(v2.read(t2, f, 8190, 8).unwrap(), b"in place");
    clean(&v2);
}

/// `pages` pages holding write number `k` throughout.
fn filled(k: u32, pages: u32) -> Vec<u8> {
    k.to_le_bytes().repeat(pages as usize * 1024)
}

/// The latest write the first `pages` pages of a file written with [`filled`]
/// hold (the largest number); fails if a page holds parts of two writes.
fn last_write(v: &Volume, c: ClusterId, f: Ino, pages: u32) -> u32 {
    let b = v.read(c, f, 0, pages as usize * 4096).unwrap();
    let mut most = 0;
    for p in b.chunks(4096) {
        let k = u32::from_le_bytes(p[..4].try_into().unwrap());
        assert!(p == filled(k, 1), "a page holds parts of two writes");
        most = most.max(k);
    }
    most
}

/// Runs `write(k)` for k = 1, 2, ... until `stop`, each time then publishing k in
/// `done`.
fn overwrite_until(stop: &AtomicBool, done: &AtomicU64, write: impl Fn(u32)) {
    for k in 1.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        write(k);
        done.store(u64::from(k), Ordering::SeqCst);
    }
}

/// Sets its flag when dropped: a test's writers stop even when a check of the
/// thread that owns it fails (the scope would otherwise wait for them forever).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A snapshot that holds write `k` was taken after write `before` returned and
/// before write `after + 2` began.
fn assert_taken_between(what: &str, k: u32, before: u64, after: u64) {
    let k = u64::from(k);
    assert!(
        before <= k && k <= after + 1,
        "{what} holds write {k}, taken between {before} and {after}"
    );
}

#[test]
fn clones_taken_among_concurrent_overwrites_hold_whole_writes_and_keep_them() {
    const PAGES: u32 = 8;
    let (v, _) = vol(16384);
    let c = v.create_cluster("c", WHO).unwrap().id;
    let files: Vec<Ino> = (0..3).map(|t| file(&v, c, &format!("f{t}"))).collect();
    for &f in &files {
        v.write(c, f, 0, &vec![0u8; PAGES as usize * 4096]).unwrap();
    }
    // Write k fills page k % PAGES with k.
    let done: Vec<AtomicU64> = files.iter().map(|_| AtomicU64::new(0)).collect();
    let stop = AtomicBool::new(false);
    let snapshot = || -> Vec<u64> { done.iter().map(|d| d.load(Ordering::SeqCst)).collect() };
    let clones = std::thread::scope(|s| {
        for (t, &f) in files.iter().enumerate() {
            let (v, done, stop) = (&v, &done, &stop);
            s.spawn(move || {
                overwrite_until(stop, &done[t], |k| {
                    let off = u64::from(k % PAGES) * 4096;
                    assert_eq!(v.write(c, f, off, &filled(k, 1)).unwrap(), 4096);
                })
            });
        }
        let _stop = StopOnDrop(&stop);
        let mut clones = Vec::new();
        for n in 0..20 {
            let before = snapshot();
            let id = v.clone_cluster("c", &format!("s{n}")).unwrap().id;
            let after = snapshot();
            let held: Vec<u32> = files
                .iter()
                .map(|&f| last_write(&v, id, f, PAGES))
                .collect();
            for t in 0..files.len() {
                let what = format!("clone {n}, file {t},");
                assert_taken_between(&what, held[t], before[t], after[t]);
            }
            std::thread::sleep(Duration::from_millis(1));
            clones.push((id, held));
        }
        clones
    });
    // The writes after each clone left it as it was taken.
    for (id, held) in clones {
        let now: Vec<u32> = files
            .iter()
            .map(|&f| last_write(&v, id, f, PAGES))
            .collect();
        assert_eq!(now, held);
    }
    for (t, &f) in files.iter().enumerate() {
        let last = last_write(&v, c, f, PAGES);
        assert_eq!(u64::from(last), done[t].load(Ordering::SeqCst));
    }
    clean(&v);
}

#[test]
fn copies_to_another_cluster_taken_among_overwrites_hold_whole_writes_and_keep_them() {
    const PAGES: u32 = 8;
    const COPIES: usize = 1000;
    let (v, _) = vol(65536);
    let a = v.create_cluster("a", WHO).unwrap().id;
    let b = v.create_cluster("b", WHO).unwrap().id;
    let f = file(&v, a, "f");
    v.write(a, f, 0, &vec![0u8; PAGES as usize * 4096]).unwrap();
    let copies: Vec<Ino> = (0..COPIES).map(|n| file(&v, b, &format!("g{n}"))).collect();
    // Write k fills the whole file with k; a copy takes its first page.
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let held = std::thread::scope(|s| {
        let (v, done, stop) = (&v, &done, &stop);
        s.spawn(move || {
            overwrite_until(stop, done, |k| {
                let n = v.write(a, f, 0, &filled(k, PAGES)).unwrap();
                assert_eq!(n, PAGES as usize * 4096);
            })
        });
        let _stop = StopOnDrop(stop);
        let mut held = Vec::new();
        for &g in &copies {
            let before = done.load(Ordering::SeqCst);
            assert_eq!(v.copy_range(a, f, 0, b, g, 0, 4096).unwrap(), 4096);
            let after = done.load(Ordering::SeqCst);
            let k = last_write(v, b, g, 1);
            assert_taken_between(&format!("copy {g}"), k, before, after);
            held.push(k);
        }
        held
    });
    for (&g, k) in copies.iter().zip(held) {
        assert_eq!(
            last_write(&v, b, g, 1),
            k,
            "a copy changed after it was made"
        );
    }
    clean(&v);
}

#[test]
fn a_file_unlinked_while_open_lives_until_its_last_release() {
    let (v, _) = vol(4096);
    let c = v.create_cluster("c", WHO).unwrap().id;
    let f = file(&v, c, "tmp");
    v.write(c, f, 0, &vec![5u8; 100_000]).unwrap();
    v.open_file(c, f).unwrap();
    v.unlink(c, Ino::ROOT, b"tmp").unwrap();
    assert_eq!(
        v.read(c, f, 99_990, 10).unwrap(),
        vec![5u8; 10],
        "still readable while open"
    );
    // A clone taken now does not keep the orphan: nobody has it open there.
    let t = v.clone_cluster("c", "t").unwrap().id;
    assert!(matches!(v.getattr(t, f), Err(Error::NotFound)));
    clean(&v);
    v.release_file(c, f).unwrap();
    assert!(matches!(v.getattr(c, f), Err(Error::NotFound)));
    clean(&v);
}

#[test]
fn a_write_that_fails_for_space_leaves_no_dangling_page() {
    let (v, _) = vol(1024);
    let c = v.create_cluster("c", WHO).unwrap().id;
    let f = file(&v, c, "f");
    let data = vec![4u8; 600 * 1024];
    v.write(c, f, 0, &data).unwrap();
    v.commit().unwrap();
    let d = v.clone_cluster("c", "d").unwrap().id;
    let g = file(&v, d, "g");
    // Fill the store one page at a time, then free three pages: enough to copy
    // the inode table root, the inode page and the map root, not the data page.
    let mut size = 0;
    while v.write(d, g, size, &[9u8; 4096]).is_ok() {
        size += 4096;
    }
    v.setattr(
        d,
        g,
        &SetAttr {
            size: Some(size - 3 * 4096),
            ..Default::default()
        },
    )
    .unwrap();
    v.commit().unwrap();
    // The shared file's map root can be copied, its data page cannot: the write
    // fails after changing the map, and the inode must still reach the new map.
    assert!(matches!(v.write(c, f, 0, b"xyz"), Err(Error::NoSpace)));
    v.commit().unwrap();
    clean(&v);
    let df = v.lookup(d, Ino::ROOT, b"f").unwrap().ino;
    assert_eq!(v.read(d, df, 0, data.len()).unwrap(), data);
    assert_eq!(v.read(c, f, 0, data.len()).unwrap(), data);
    v.unlink(d, Ino::ROOT, b"g").unwrap();
    v.write(c, f, 0, b"xyz").unwrap();
    v.write(d, df, 0, b"abc").unwrap();
    assert_eq!(v.read(d, df, 0, 3).unwrap(), b"abc");
    assert_eq!(v.read(c, f, 0, 3).unwrap(), b"xyz");
    clean(&v);
}

#[test]
fn times_beyond_the_record_range_clamp_instead_of_wrapping() {
    let (v, _) = vol(1024);
    let c = v.create_cluster("c", WHO).unwrap().id;
    let f = file(&v, c, "f");
    let at = |secs: i64| {
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
        }
    };
    let set = |a: i64, m: i64| {
        v.setattr(
            c,
            f,
            &SetAttr {
                atime: Some(SetTime::At(at(a))),
                mtime: Some(SetTime::At(at(m))),
                ..Default::default()
            },
        )
        .unwrap()
    };
    // Within the range: exact, on both sides of the epoch.
    let a = set(7_258_118_400, -86_400);
    assert_eq!((a.atime, a.mtime), (at(7_258_118_400), at(-86_400)));
    // Year 2286 and year 1600: the ends of the range, not 1702 and 2235.
    let a = set(10_000_000_000, -11_676_096_000);
    let max = SystemTime::UNIX_EPOCH + Duration::from_nanos(i64::MAX as u64);
    let min = SystemTime::UNIX_EPOCH - Duration::from_nanos(i64::MIN.unsigned_abs());
    assert_eq!((a.atime, a.mtime), (max, min));
    assert_eq!(v.getattr(c, f).unwrap().atime, max);
}

#[test]
fn a_directory_removed_while_open_lives_until_its_release() {
    let (v, dev) = vol(1024);
    let c = v.create_cluster("c", WHO).unwrap().id;
    let d = v.mkdir(c, Ino::ROOT, b"d", WHO).unwrap().ino;
    v.open_file(c, d).unwrap();
    v.rmdir(c, Ino::ROOT, b"d").unwrap();
    assert!(matches!(v.lookup(c, Ino::ROOT, b"d"), Err(Error::NotFound)));
    let a = v.getattr(c, d).unwrap();
    assert_eq!((a.kind, a.nlink), (Kind::Dir, 0));
    assert_eq!(v.getattr(c, Ino::ROOT).unwrap().nlink, 2);
    clean(&v);
    // Its last release frees it.
    v.release_file(c, d).unwrap();
    assert!(matches!(v.getattr(c, d), Err(Error::NotFound)));
    clean(&v);
    // Left open at a crash (or an unmount), the next open frees it.
    let e = v.mkdir(c, Ino::ROOT, b"e", WHO).unwrap().ino;
    v.open_file(c, e).unwrap();
    v.rmdir(c, Ino::ROOT, b"e").unwrap();
    let v = reopen(v, &dev);
    assert!(matches!(v.getattr(c, e), Err(Error::NotFound)));
    clean(&v);
}

#[test]
fn fallocate_maps_every_hole_around_existing_data_and_keeps_it() {
    let (v, _) = vol(8192);
    let c = v.create_cluster("c", WHO).unwrap().id;
    let f = file(&v, c, "f");
    v.write(c, f, 300 * 4096 + 10, b"keep me").unwrap();
    v.fallocate(c, f, 4096, 600 * 4096, 0).unwrap();
    let a = v.getattr(c, f).unwrap();
    assert_eq!(a.size, 601 * 4096);
    assert_eq!(
        a.blocks,
        600 * 8,
        "pages 1..601 are mapped, page 0 stays a hole"
    );
    assert_eq!(v.read(c, f, 300 * 4096 + 10, 7).unwrap(), b"keep me");
    assert_eq!(v.read(c, f, 4096, 4096).unwrap(), vec![0; 4096]);
    assert_eq!(v.seek(c, f, 0, Whence::Data).unwrap(), 4096);
    clean(&v);
}
