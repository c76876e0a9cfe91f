//! Bad input and faults at the engine level: damaged or foreign store files, a
//! store already open, a flipped byte in a metadata page, a full host file system,
//! failing writes. Each must be a clear error — never a panic, never a silent
//! repair — and must leave a store that reopens consistent.

use clonefs::error::Error;
use clonefs::store::memdev::MemDevice;
use clonefs::store::PageDevice;
use clonefs::volume::{ClusterId, Ino, Kind, NewInode, Volume};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const PS: usize = 4096;
const WHO: NewInode = NewInode {
    perm: 0o755,
    uid: 0,
    gid: 0,
};

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Opens `path` and returns the error, which must be `BadStore` naming the file and
/// saying `what` (any of the alternatives).
fn bad_store(path: &Path, what: &[&str]) -> String {
    let r = std::panic::catch_unwind(|| Volume::open_path(path));
    let e = match r {
        Err(_) => panic!("opening {} panicked", path.display()),
        Ok(Ok(_)) => panic!("{} opened", path.display()),
        Ok(Err(e)) => e,
    };
    let msg = e.to_string();
    assert!(
        matches!(e, Error::BadStore { .. }),
        "{}: expected BadStore, got {e:?}",
        path.display()
    );
    assert_eq!(e.errno(), libc::EIO);
    assert!(
        msg.contains(&path.display().to_string()),
        "the message names the file: {msg}"
    );
    assert!(
        what.iter().any(|w| msg.contains(w)),
        "the message says {what:?}: {msg}"
    );
    msg
}

fn mkfs(dir: &Path, name: &str, bytes: u64) -> PathBuf {
    let p = dir.join(name);
    Volume::mkfs(&p, bytes, PS).unwrap();
    p
}

/// Rewrites both superblock copies through `f`, fixing their CRC unless `keep_crc`.
fn edit_superblocks(path: &Path, keep_crc: bool, f: impl Fn(&mut [u8])) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    for slot in 0..2u64 {
        let mut b = vec![0u8; 68];
        file.read_exact_at(&mut b, slot * PS as u64).unwrap();
        f(&mut b);
        if !keep_crc {
            let crc = crc32fast::hash(&b[0..64]);
            b[64..68].copy_from_slice(&crc.to_le_bytes());
        }
        file.write_all_at(&b, slot * PS as u64).unwrap();
    }
    file.sync_all().unwrap();
}

#[test]
fn opening_a_bad_store_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    println!("{}", bad_store(&d.join("missing"), &["No such file"]));

    let empty = d.join("empty");
    std::fs::File::create(&empty).unwrap();
    println!("{}", bad_store(&empty, &["too short"]));

    let noise = d.join("noise");
    std::fs::write(&noise, pattern(7, 1 << 20)).unwrap();
    println!("{}", bad_store(&noise, &["not a clonefs store"]));

    // A flipped byte in both copies, in each field of the superblock.
    for (off, what) in [
        (8, "version"),
        (13, "page size"),
        (17, "checksum"),
        (25, "checksum"),
        (33, "checksum"),
        (50, "checksum"),
        (65, "checksum"),
    ] {
        let p = mkfs(d, &format!("flipped-{off}"), 4 << 20);
        edit_superblocks(&p, true, |b| b[off] ^= 0x40);
        println!("{}", bad_store(&p, &[what, "checksum"]));
    }

    // A store made by a future clonefs: the next format version, with a valid checksum.
    let future = mkfs(d, "future", 4 << 20);
    edit_superblocks(&future, false, |b| {
        b[8..12].copy_from_slice(&(clonefs::store::FORMAT_VERSION + 1).to_le_bytes())
    });
    println!("{}", bad_store(&future, &["newer clonefs"]));

    // A store made before restore points (format version 1) opens, keeps its
    // clusters, and is written as the current version from its first commit
    // that changes something.
    let old = mkfs(d, "v1", 4 << 20);
    {
        let v = Volume::open_path(&old).unwrap();
        v.create_cluster("kept", WHO).unwrap();
        v.close().unwrap();
    }
    edit_superblocks(&old, false, |b| {
        b[8..12].copy_from_slice(&1u32.to_le_bytes())
    });
    let v = Volume::open_path(&old).unwrap();
    assert!(v.cluster_by_name("kept").is_ok());
    v.create_cluster("new", WHO).unwrap();
    v.close().unwrap();
    drop(v);
    let file = std::fs::File::open(&old).unwrap();
    let newest = (0..2u64)
        .map(|slot| {
            let mut b = [0u8; 32];
            file.read_exact_at(&mut b, slot * PS as u64).unwrap();
            let generation = u64::from_le_bytes(b[24..32].try_into().unwrap());
            (generation, u32::from_le_bytes(b[8..12].try_into().unwrap()))
        })
        .max()
        .unwrap();
    assert_eq!(newest.1, clonefs::store::FORMAT_VERSION);

    // Truncated: the superblock promises more pages than the file holds.
    let short = mkfs(d, "truncated", 4 << 20);
    OpenOptions::new()
        .write(true)
        .open(&short)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    println!("{}", bad_store(&short, &["truncated"]));
    let shorter = mkfs(d, "truncated-more", 4 << 20);
    OpenOptions::new()
        .write(true)
        .open(&shorter)
        .unwrap()
        .set_len(5000)
        .unwrap();
    println!("{}", bad_store(&shorter, &["too short", "truncated"]));
}

/// A superblock whose checksum is right but whose catalog root lies outside the
/// store (a bug or a forged file): an error naming the page, not a panic.
#[test]
fn a_catalog_root_outside_the_store_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for root in [5_000u64, 1 << 40, u64::MAX / 3] {
        let p = mkfs(dir.path(), &format!("root-{root}"), 4 << 20);
        edit_superblocks(&p, false, |b| {
            b[32..40].copy_from_slice(&root.to_le_bytes());
            b[40..44].copy_from_slice(&1u32.to_le_bytes());
        });
        let r = std::panic::catch_unwind(|| Volume::open_path(&p));
        match r {
            Err(_) => panic!("opening a store whose catalog root is page {root} panicked"),
            Ok(Ok(_)) => panic!("a store whose catalog root is page {root} opened"),
            Ok(Err(e)) => {
                println!("{e}");
                assert_eq!(e.errno(), libc::EIO, "{e}");
                assert!(e.to_string().contains(&root.to_string()), "{e}");
            }
        }
    }
}

#[test]
fn a_second_open_is_locked_and_says_who_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = mkfs(dir.path(), "store", 4 << 20);
    let v = Volume::open_path(&p).unwrap();
    let e = match Volume::open_path(&p) {
        Err(e) => e,
        Ok(_) => panic!("a second open of the same store succeeded"),
    };
    let msg = e.to_string();
    println!("{msg}");
    assert!(matches!(e, Error::Locked { .. }), "{e:?}");
    assert_eq!(e.errno(), libc::EBUSY);
    assert!(msg.contains(&p.display().to_string()), "{msg}");
    assert!(
        msg.contains(&format!("process {}", std::process::id())),
        "the message names this process: {msg}"
    );
    v.close().unwrap();
    drop(v);
    let v = Volume::open_path(&p).expect("the lock goes with the first volume");
    v.close().unwrap();
}

fn file(v: &Volume, c: ClusterId, name: &str, data: &[u8]) -> Ino {
    let ino = v
        .mknod(c, Ino::ROOT, name.as_bytes(), Kind::File, WHO, 0)
        .unwrap()
        .ino;
    assert_eq!(v.write(c, ino, 0, data).unwrap(), data.len());
    ino
}

fn read_all(v: &Volume, cluster: &str, name: &str) -> Result<Vec<u8>, Error> {
    let c = v.cluster_by_name(cluster)?.id;
    let a = v.lookup(c, Ino::ROOT, name.as_bytes())?;
    v.read(c, a.ino, 0, a.size as usize)
}

/// The store's pages that are data radix nodes (magic 0xC10F, kind 1) whose first
/// entry maps a page holding `first_page`.
fn map_nodes_of(store: &[u8], first_page: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    for (n, page) in store.chunks_exact(PS).enumerate().skip(2) {
        if u16::from_le_bytes([page[0], page[1]]) != 0xC10F || page[2] != 1 {
            continue;
        }
        let first = u64::from_le_bytes(page[32..40].try_into().unwrap()) as usize;
        if first > 1
            && (first + 1) * PS <= store.len()
            && &store[first * PS..(first + 1) * PS] == first_page
        {
            out.push(n as u64);
        }
    }
    out
}

#[test]
fn a_flipped_byte_in_a_file_map_is_eio_for_that_file_only() {
    let dir = tempfile::tempdir().unwrap();
    let p = mkfs(dir.path(), "store", 64 << 20);
    let (fa, ha, gb) = (pattern(1, 300_000), pattern(2, 50_000), pattern(3, 200_000));
    {
        let v = Volume::open_path(&p).unwrap();
        let a = v.create_cluster("alpha", WHO).unwrap().id;
        let b = v.create_cluster("beta", WHO).unwrap().id;
        file(&v, a, "f", &fa);
        file(&v, a, "h", &ha);
        file(&v, b, "g", &gb);
        v.close().unwrap();
    }
    let store = std::fs::read(&p).unwrap();
    let nodes = map_nodes_of(&store, &fa[..PS]);
    assert!(!nodes.is_empty(), "found the page map of alpha/f");
    // Flip a byte in an unused entry of the map: only the checksum can tell.
    let off = 32 + 8 * 300 + 3;
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    for &n in &nodes {
        f.write_all_at(&[0x5A], n * PS as u64 + off).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    println!("flipped a byte in page(s) {nodes:?}");

    for round in 0..2 {
        let v = Volume::open_path(&p).expect("a store with one bad page still opens");
        let e = read_all(&v, "alpha", "f").expect_err("reading alpha/f fails");
        println!("round {round}: {e}");
        assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
        assert_eq!(e.errno(), libc::EIO);
        assert!(
            nodes
                .iter()
                .any(|n| e.to_string().contains(&format!("page {n}"))),
            "the error names the page: {e}"
        );
        assert_eq!(
            read_all(&v, "alpha", "h").unwrap(),
            ha,
            "alpha/h reads fine"
        );
        assert_eq!(read_all(&v, "beta", "g").unwrap(), gb, "beta/g reads fine");
        let r = v.fsck().unwrap();
        println!("{r}");
        assert!(!r.is_clean(), "fsck reports the bad page");
        assert!(
            r.problems
                .iter()
                .any(|m| nodes.iter().any(|n| m.contains(&format!("page {n}")))),
            "{r}"
        );
        v.close().unwrap();
        drop(v);
        // Not repaired behind the user's back: the byte is still flipped.
        let mut b = [0u8; 1];
        let f = std::fs::File::open(&p).unwrap();
        for &n in &nodes {
            f.read_exact_at(&mut b, n * PS as u64 + off).unwrap();
            assert_eq!(b[0], 0x5A, "page {n} was rewritten");
        }
    }
}

/// A file whose map is damaged can still be deleted: the commit that frees it
/// must not fail on the bad page, and the store is clean afterwards.
#[test]
fn a_file_with_a_damaged_map_can_be_unlinked() {
    let dir = tempfile::tempdir().unwrap();
    let p = mkfs(dir.path(), "store", 64 << 20);
    let (fa, gb) = (pattern(21, 300_000), pattern(22, 200_000));
    {
        let v = Volume::open_path(&p).unwrap();
        // Restore points would keep the damaged map (and fsck would rightly report
        // it) until they age out: this test is of the unlink beneath them.
        v.set_store_retention(std::time::Duration::ZERO).unwrap();
        let a = v.create_cluster("alpha", WHO).unwrap().id;
        file(&v, a, "f", &fa);
        file(&v, a, "g", &gb);
        v.close().unwrap();
    }
    let store = std::fs::read(&p).unwrap();
    let nodes = map_nodes_of(&store, &fa[..PS]);
    assert!(!nodes.is_empty());
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    for &n in &nodes {
        f.write_all_at(&[0x5A], n * PS as u64 + 32 + 8 * 300 + 3)
            .unwrap();
    }
    drop(f);
    let v = Volume::open_path(&p).unwrap();
    let a = v.cluster_by_name("alpha").unwrap().id;
    assert!(matches!(
        read_all(&v, "alpha", "f"),
        Err(Error::Corrupt { .. })
    ));
    v.unlink(a, Ino::ROOT, b"f").unwrap();
    v.commit().unwrap();
    v.commit().unwrap();
    // New data may now take the pages the damaged map pointed to.
    let h = file(&v, a, "h", &pattern(23, 400_000));
    v.commit().unwrap();
    // The counts saved at the last close predate the damage: the damaged node's
    // children stay counted (leaked, and nothing else) until the next open,
    // which recounts because of it.
    assert!(v.counts_were_saved());
    let r = v.fsck().unwrap();
    assert!(!r.problems.is_empty(), "{r}");
    for p in &r.problems {
        assert!(p.contains("no tree references it (leaked)"), "{r}");
    }
    assert_eq!(read_all(&v, "alpha", "g").unwrap(), gb);
    v.close().unwrap();
    drop(v);
    let v = Volume::open_path(&p).unwrap();
    assert!(!v.counts_were_saved());
    clean(&v);
    let a = v.cluster_by_name("alpha").unwrap().id;
    assert_eq!(v.read(a, h, 0, 400_000).unwrap(), pattern(23, 400_000));
    assert_eq!(read_all(&v, "alpha", "g").unwrap(), gb);
    v.close().unwrap();
}

fn mem_volume(pages: u64) -> (Arc<Volume>, Arc<MemDevice>) {
    Volume::in_memory(PS, pages).unwrap()
}

fn reopen(dev: &MemDevice, image: clonefs::store::memdev::Image) -> Arc<Volume> {
    let d = Arc::new(MemDevice::from_image(PS, dev.capacity_pages(), image));
    Volume::open_device(d, Path::new("image"), false).unwrap()
}

fn clean(v: &Volume) {
    let r = v.fsck().unwrap();
    assert!(r.is_clean(), "{r}");
}

#[test]
fn a_full_host_is_nospace_and_the_volume_stays_consistent() {
    let (v, dev) = mem_volume(4096);
    let c = v.create_cluster("c", WHO).unwrap().id;
    let data = pattern(5, 100_000);
    let f = file(&v, c, "f", &data);
    v.commit().unwrap();
    dev.set_host_full(true);
    let e = v.write(c, f, 200_000, &[7u8; 10_000]).unwrap_err();
    assert!(matches!(e, Error::NoSpace), "{e:?}");
    assert_eq!(e.errno(), libc::ENOSPC);
    let e = v.mknod(c, Ino::ROOT, b"g", Kind::File, WHO, 0).unwrap_err();
    assert!(matches!(e, Error::NoSpace), "{e:?}");
    assert!(matches!(
        v.clone_cluster("c", "d").and_then(|_| v.commit()),
        Ok(()) | Err(Error::NoSpace)
    ));
    assert_eq!(v.read(c, f, 0, 200_000).unwrap(), data, "nothing changed");
    dev.set_host_full(false);
    clean(&v);
    assert_eq!(v.write(c, f, 200_000, &[7u8; 10_000]).unwrap(), 10_000);
    let g = file(&v, c, "g", b"hello");
    v.commit().unwrap();
    clean(&v);
    drop(v);
    let v = reopen(&dev, dev.power_cut(1));
    let c = v.cluster_by_name("c").unwrap().id;
    let mut want = data.clone();
    want.resize(200_000, 0);
    want.extend_from_slice(&[7u8; 10_000]);
    assert_eq!(v.read(c, f, 0, 300_000).unwrap(), want);
    assert_eq!(v.read(c, g, 0, 10).unwrap(), b"hello");
    clean(&v);
}

/// A commit that fails for want of space must leave every change for the next one.
#[test]
fn a_commit_that_fails_on_a_full_host_loses_nothing() {
    let (v, dev) = mem_volume(4096);
    let c = v.create_cluster("c", WHO).unwrap().id;
    let f = file(&v, c, "f", &pattern(6, 20_000));
    v.commit().unwrap();
    // Copies the inode's record page into this epoch: later changes to it and to
    // the file's private data page need no new page.
    v.write(c, f, 0, b"A").unwrap();
    dev.set_host_full(true);
    v.write(c, f, 1, b"B").unwrap();
    let r = v.commit();
    println!("commit on a full host: {r:?}");
    dev.set_host_full(false);
    v.commit().unwrap();
    clean(&v);
    drop(v);
    let v = reopen(&dev, dev.power_cut(3));
    let c = v.cluster_by_name("c").unwrap().id;
    assert_eq!(v.read(c, f, 0, 2).unwrap(), b"AB");
    clean(&v);
}

#[test]
fn a_failed_write_is_eio_then_previous_io_and_the_durable_image_is_consistent() {
    for n in [0u64, 1, 3, 10, 25, 60] {
        let (v, dev) = mem_volume(4096);
        let c = v.create_cluster("c", WHO).unwrap().id;
        let synced: Vec<Vec<u8>> = (0..4).map(|k| pattern(10 + k, 60_000)).collect();
        let inos: Vec<Ino> = (0..4)
            .map(|k| file(&v, c, &format!("f{k}"), &synced[k]))
            .collect();
        v.clone_cluster("c", "k").unwrap();
        v.commit().unwrap();
        dev.fail_writes_after(n);
        // Overwrites within the files (sizes stay), then a commit.
        let mut later: Vec<(usize, u64, Vec<u8>)> = Vec::new();
        let mut first_err = None;
        for step in 0..120u64 {
            let k = (step % 4) as usize;
            let off = (step * 7919) % 50_000;
            let bytes = pattern(100 + step, 5_000);
            later.push((k, off, bytes.clone()));
            let r = if step % 10 == 9 {
                v.commit()
            } else {
                v.write(c, inos[k], off, &bytes).map(|_| ())
            };
            match (r, &first_err) {
                (Ok(()), _) => {}
                (Err(e), None) => {
                    assert!(matches!(e, Error::Io(_)), "the first failure is EIO: {e:?}");
                    assert_eq!(e.errno(), libc::EIO);
                    first_err = Some(e);
                }
                (Err(e), Some(_)) => {
                    assert!(matches!(e, Error::PreviousIo), "then PreviousIo: {e:?}");
                    assert_eq!(e.errno(), libc::EIO);
                }
            }
        }
        assert!(first_err.is_some(), "writes failed after {n}");
        assert!(matches!(v.commit(), Err(Error::PreviousIo)));
        assert!(matches!(
            v.mknod(c, Ino::ROOT, b"x", Kind::File, WHO, 0),
            Err(Error::PreviousIo)
        ));
        drop(v);
        for seed in 1..4 {
            let v = reopen(&dev, dev.power_cut(seed));
            clean(&v);
            for (name, writes_ok) in [("c", true), ("k", false)] {
                let c = v.cluster_by_name(name).unwrap().id;
                for (k, want) in synced.iter().enumerate() {
                    let ino = v.lookup(c, Ino::ROOT, format!("f{k}").as_bytes()).unwrap();
                    let got = v.read(c, ino.ino, 0, 100_000).unwrap();
                    assert_eq!(got.len(), want.len(), "{name}/f{k}: size as synced");
                    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
                        let ok = g == w
                            || writes_ok
                                && later.iter().any(|(lk, off, b)| {
                                    *lk == k
                                        && (*off as usize..*off as usize + b.len()).contains(&i)
                                        && b[i - *off as usize] == g
                                });
                        assert!(
                            ok,
                            "n={n} seed={seed}: {name}/f{k} byte {i}: {g} (synced {w})"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn the_store_file_is_not_touched_by_a_failed_open() {
    // A foreign file must come out of a failed open byte for byte as it went in.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("foreign");
    let body = pattern(9, 3 * PS);
    std::fs::write(&p, &body).unwrap();
    assert!(Volume::open_path(&p).is_err());
    assert_eq!(std::fs::read(&p).unwrap(), body);
}

/// Everything a user can do to a volume, ignoring errors: lists, reads, fsck,
/// writes and commits.
fn exercise(v: &Volume) {
    for info in v.clusters() {
        let c = info.id;
        let mut stack = vec![Ino::ROOT];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = v.readdir(c, dir, 0) else {
                continue;
            };
            for e in entries.into_iter().skip(2) {
                match e.kind {
                    Kind::Dir if stack.len() < 64 => stack.push(e.ino),
                    Kind::File => {
                        if let Ok(a) = v.getattr(c, e.ino) {
                            let _ = v.read(c, e.ino, 0, a.size.min(1 << 20) as usize);
                            let _ = v.write(c, e.ino, a.size / 2, b"poke");
                        }
                    }
                    _ => {}
                }
            }
        }
        let _ = v.mknod(c, Ino::ROOT, b"new", Kind::File, WHO, 0);
    }
    let _ = v.clone_cluster("alpha", "alpha-copy");
    let _ = v.space();
    let _ = v.fsck();
    let _ = v.commit();
    let _ = v.delete_cluster("beta");
    let _ = v.commit();
}

#[test]
fn a_random_flipped_byte_is_never_a_panic() {
    let (v, dev) = mem_volume(1024);
    let a = v.create_cluster("alpha", WHO).unwrap().id;
    let b = v.create_cluster("beta", WHO).unwrap().id;
    let d = v.mkdir(a, Ino::ROOT, b"dir", WHO).unwrap().ino;
    for k in 0..20u64 {
        let ino = v
            .mknod(a, d, format!("n{k}").as_bytes(), Kind::File, WHO, 0)
            .unwrap()
            .ino;
        v.write(a, ino, k * 1000, &pattern(k, 3000)).unwrap();
    }
    file(&v, a, "big", &pattern(99, 700_000));
    file(&v, b, "g", &pattern(98, 50_000));
    v.setxattr(a, d, b"user.k", b"v", clonefs::volume::XattrMode::Any)
        .unwrap();
    v.clone_cluster("alpha", "gamma").unwrap();
    v.close().unwrap();
    drop(v);
    let image = dev.live_image();
    let mut pages: Vec<u64> = image.keys().copied().collect();
    pages.sort_unstable();
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {x}");
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut opened, mut refused) = (0, 0);
    for _ in 0..400 {
        let mut img = image.clone();
        let page = pages[(next() % pages.len() as u64) as usize];
        // Mostly the header and the first entries, where a flip matters most.
        let off = if next() % 2 == 0 {
            (next() % 96) as usize
        } else {
            (next() % PS as u64) as usize
        };
        let bit = 1u8 << (next() % 8);
        img.get_mut(&page).unwrap()[off] ^= bit;
        let r = std::panic::catch_unwind(|| {
            let dev = Arc::new(MemDevice::from_image(PS, 1024, img));
            match Volume::open_device(dev, Path::new("flipped"), false) {
                Ok(v) => {
                    exercise(&v);
                    true
                }
                Err(_) => false,
            }
        });
        match r {
            Ok(true) => opened += 1,
            Ok(false) => refused += 1,
            Err(_) => panic!("page {page} byte {off} bit {bit:#x} flipped: a panic"),
        }
    }
    println!("400 flips: {opened} stores opened and exercised, {refused} refused");
}
