//! fsck: each kind of damage it reports, and that the check shared between clusters
//! reports exactly what checking each cluster on its own reports.

use super::dir::{Dirent, DIRENT_BYTES};
use super::inode::{Ino, Inode, Kind};
use super::node::NodeKind;
use super::tests::{file, WHO};
use super::{ClusterId, FsckReport, Volume};
use crate::store::PageDevice;
use std::sync::Arc;
use std::time::Duration;

fn vol(pages: u64) -> Arc<Volume> {
    let (v, _) = Volume::in_memory(4096, pages).unwrap();
    v.set_store_retention(Duration::ZERO).unwrap();
    v
}

/// Changes inode `ino` of cluster `c` as its record stands, behind the volume's back.
fn poke(v: &Volume, c: ClusterId, ino: Ino, f: impl Fn(&mut Inode)) {
    v.op(c, false, |op| {
        f(op.inode(ino)?);
        Ok(())
    })
    .unwrap();
}

/// Writes `slot` of directory `dir` as raw bytes, growing the directory to hold it.
fn poke_slot(v: &Volume, c: ClusterId, dir: Ino, slot: u64, bytes: [u8; DIRENT_BYTES]) {
    v.op(c, false, |op| {
        let d = op.dir(dir)?;
        v.eng
            .write_record(&mut d.content, NodeKind::RadixDirents, slot, &bytes, true)?;
        d.size = d.size.max(slot + 1);
        Ok(())
    })
    .unwrap();
    // The cached name index no longer matches the slots.
    v.cluster(c).unwrap().dirs.lock().unwrap().clear();
}

fn entry(ino: Ino, kind: Kind, name: &str) -> [u8; DIRENT_BYTES] {
    Dirent {
        ino,
        kind,
        name: name.as_bytes().to_vec(),
    }
    .encode()
}

fn slots(v: &Volume, c: ClusterId, dir: Ino) -> u64 {
    v.getattr(c, dir).unwrap().size
}

fn sorted(r: &FsckReport) -> (Vec<String>, Vec<String>) {
    let mut p = r.problems.clone();
    let mut n = r.notes.clone();
    p.sort();
    n.sort();
    (p, n)
}

/// One cluster per kind of damage to a cluster's inodes and directories, and
/// damage to the counts: every one is reported, with its precise text.
#[test]
fn fsck_reports_each_kind_of_damage() {
    let v = vol(8192);
    let page = vec![7u8; 4096];

    // Files whose records disagree with their maps and names.
    let c = v.create_cluster("c", WHO).unwrap().id;
    let f = [0, 1, 2, 3, 4].map(|k| file(&v, c, &format!("f{k}")));
    for &i in &f {
        for p in 0..3 {
            v.write(c, i, p * 4096, &page).unwrap();
        }
    }
    let d = v.mkdir(c, Ino::ROOT, b"d", WHO).unwrap().ino;
    let e = v.mkdir(c, Ino::ROOT, b"e", WHO).unwrap().ino;
    poke(&v, c, f[0], |i| i.mapped += 1);
    poke(&v, c, f[1], |i| i.size = 4096);
    poke(&v, c, f[2], |i| i.nlink = 5);
    poke(&v, c, e, |i| i.parent = Ino(77));
    let root_slots = slots(&v, c, Ino::ROOT);
    poke_slot(
        &v,
        c,
        Ino::ROOT,
        root_slots,
        entry(Ino(999), Kind::File, "ghost"),
    );
    poke_slot(&v, c, d, 0, entry(f[3], Kind::Dir, "asdir"));
    poke_slot(&v, c, d, 1, entry(f[4], Kind::File, "f4"));
    poke_slot(&v, c, d, 2, entry(f[4], Kind::File, "f4"));
    let mut bad = entry(f[3], Kind::File, "bad");
    bad[8] = 99;
    poke_slot(&v, c, d, 3, bad);
    // A record above the next inode number, and an unlinked inode nobody has open.
    let next = v.cluster(c).unwrap().state.read().unwrap().next_ino;
    v.op(c, false, |op| {
        let rec = Inode::new(Kind::File, 0o644, 0, 0, 0);
        v.eng.write_record(
            &mut op.st.itable,
            NodeKind::RadixInodes,
            next + 3,
            &rec.encode(),
            true,
        )?;
        Ok(())
    })
    .unwrap();
    let lost = file(&v, c, "lost");
    let lost_slot = slots(&v, c, Ino::ROOT) - 1;
    poke_slot(&v, c, Ino::ROOT, lost_slot, [0; DIRENT_BYTES]);
    poke(&v, c, lost, |i| i.nlink = 0);
    let next_now = v.cluster(c).unwrap().state.read().unwrap().next_ino;

    // An empty cluster whose root is not a directory.
    let r = v.create_cluster("r", WHO).unwrap().id;
    poke(&v, r, Ino::ROOT, |i| i.kind = Kind::File);

    // A file unlinked while open: a note, not a problem.
    let o = v.create_cluster("o", WHO).unwrap().id;
    let h = file(&v, o, "h");
    v.open_file(o, h).unwrap();
    v.unlink(o, Ino::ROOT, b"h").unwrap();

    // A cluster whose live inode table is not the one its catalog record holds.
    v.create_cluster("m", WHO).unwrap();
    v.commit().unwrap();
    let other = v.cluster(c).unwrap().state.read().unwrap().itable;
    let m = v.cluster_by_name("m").unwrap().id;
    v.cluster(m).unwrap().state.write().unwrap().itable = other;

    // Counts: one too many on a data page, and a page no tree references.
    let data = v.eng.lookup(content(&v, c, f[3]), NodeKind::RadixData, 0);
    let data = data.unwrap();
    v.eng.store.incref(data);
    let (leaked, _) = v.eng.store.allocate(1, false).unwrap();

    let report = v.fsck().unwrap();
    println!("{report}");
    let (problems, notes) = sorted(&report);
    let mut want = vec![
        format!(
            "cluster c: inode {} records 4 mapped pages, its map holds 3",
            f[0]
        ),
        format!("cluster c: inode {} maps page 1 beyond its size 4096", f[1]),
        format!(
            "cluster c: inode {} (File) has link count 5, but 1 names and 1 expected",
            f[2]
        ),
        format!("cluster c: directory {e} lies in 1 but names 77 as parent"),
        "cluster c: directory 1 names inode 999 which does not exist".to_string(),
        format!(
            "cluster c: directory {d} names inode {} as Dir, it is File",
            f[3]
        ),
        format!("cluster c: directory {d} holds the name \"f4\" twice"),
        format!(
            "cluster c: inode {} (File) has link count 1, but 3 names and 3 expected",
            f[4]
        ),
        format!("cluster c: directory {d} slot 3: directory slot with unknown kind 99"),
        format!(
            "cluster c: inode {} is at or above the next inode number {next_now}",
            next + 3
        ),
        format!(
            "cluster c: inode {} (File) has link count 1, but 0 names and 0 expected",
            next + 3
        ),
        "cluster c: 1 unlinked inodes, but the cluster records 0 orphans".to_string(),
        "cluster r: no root directory (inode 1)".to_string(),
        "cluster r: inode 1 (File) has link count 2, but 0 names and 0 expected".to_string(),
        "cluster m: the catalog records another inode table than the live one".to_string(),
        format!("page {data}: reference count 2, but the trees hold 1 references"),
        format!("page {leaked}: reference count 1, but no tree references it (leaked)"),
    ];
    want.sort();
    assert_eq!(problems, want, "{report}");
    assert_eq!(
        notes,
        vec!["cluster o: 1 unlinked inodes still open (freed on release or at mount)"]
    );
    assert!(!report.is_clean());
    assert_eq!(report.clusters, 4);
}

/// Damage to pages themselves: a map node that fails its checksum, and one that
/// references a page beyond the store (with a checksum that fits).
#[test]
fn fsck_reports_bad_pages() {
    let (v, dev) = Volume::in_memory(4096, 4096).unwrap();
    v.set_store_retention(Duration::ZERO).unwrap();
    let c = v.create_cluster("c", WHO).unwrap().id;
    let page = vec![7u8; 4096];
    let f = [0, 1].map(|k| file(&v, c, &format!("f{k}")));
    for &i in &f {
        v.write(c, i, 0, &page).unwrap();
    }
    v.commit().unwrap();
    let (bent, bad) = (content(&v, c, f[0]).root, content(&v, c, f[1]).root);
    let v = super::tests::reopen(v, &dev);
    let cap = v.eng.store.capacity_pages();
    let mut b = vec![0u8; 4096];
    dev.read(bent.0, 0, &mut b).unwrap();
    b[32 + 8..32 + 16].copy_from_slice(&(cap + 5).to_le_bytes());
    b[24..28].fill(0);
    let crc = crc32fast::hash(&b);
    b[24..28].copy_from_slice(&crc.to_le_bytes());
    dev.write(bent.0, 0, &b).unwrap();
    dev.write(bad.0, 40, &[0x5A]).unwrap();
    let v = super::tests::reopen(v, &dev);
    let report = v.fsck().unwrap();
    println!("{report}");
    let (problems, _) = sorted(&report);
    let has = |s: &str| problems.iter().any(|p| p.contains(s));
    assert!(
        has(&format!(
            "page {bent} references page {}, outside the store",
            cap + 5
        )),
        "{report}"
    );
    assert!(
        has(&format!("page {bad}")) && has("fails its checksum"),
        "{report}"
    );
}

fn content(v: &Volume, c: ClusterId, ino: Ino) -> super::node::Tree {
    let st = v.cluster(c).unwrap();
    let st = st.state.read().unwrap();
    v.load(&st, ino).unwrap().content
}

/// The shared check's report and the reference's (each table checked on its own,
/// as fsck did before it shared work between clusters), on the same quiescent volume.
fn shared_and_reference(v: &Volume) -> (FsckReport, FsckReport) {
    let shared = v.fsck().unwrap();
    let _gate = v.gate.write().unwrap();
    let cs = v.commit.lock().unwrap();
    let clusters = v.fsck_clusters();
    let reference = super::tests_fsck_reference::fsck(&v.eng, cs.tree, &clusters, true).unwrap();
    (shared, reference)
}

fn assert_same(shared: &FsckReport, reference: &FsckReport) {
    assert_eq!(
        sorted(shared),
        sorted(reference),
        "{shared}\n--- reference:\n{reference}"
    );
    assert_eq!(
        (shared.clusters, shared.inodes, shared.pages),
        (reference.clusters, reference.inodes, reference.pages)
    );
}

/// Many clones sharing all their trees, a few diverged (new names, removed names,
/// rewritten pages, a deeper map), then damage in some of those: the check that
/// reads each shared page once reports exactly what checking each table alone does.
#[test]
fn the_shared_check_reports_what_each_table_alone_reports() {
    let v = vol(16384);
    let prod = v.create_cluster("prod", WHO).unwrap().id;
    let many = v.mkdir(prod, Ino::ROOT, b"many", WHO).unwrap().ino;
    for k in 0..300 {
        let f = v
            .mknod(prod, many, format!("{k}").as_bytes(), Kind::File, WHO, 0)
            .unwrap()
            .ino;
        v.write(prod, f, 0, b"x").unwrap();
    }
    // Over 508 pages: a map two levels deep.
    let big = file(&v, prod, "big");
    v.write(prod, big, 0, &vec![3u8; 600 * 4096]).unwrap();
    let small = file(&v, prod, "small");
    v.write(prod, small, 0, &vec![4u8; 8 * 4096]).unwrap();
    for k in 0..120 {
        let name = format!("c{k}");
        let c = v.clone_cluster("prod", &name).unwrap().id;
        if k % 20 == 0 {
            let big = v.lookup(c, Ino::ROOT, b"big").unwrap().ino;
            v.write(c, big, 4096 * (k as u64 * 3), b"diverged").unwrap();
            file(&v, c, "new");
            let many = v.lookup(c, Ino::ROOT, b"many").unwrap().ino;
            v.unlink(c, many, format!("{k}").as_bytes()).unwrap();
            v.mkdir(c, many, b"sub", WHO).unwrap();
        }
    }
    let (shared, reference) = shared_and_reference(&v);
    assert!(shared.is_clean(), "{shared}");
    assert_same(&shared, &reference);
    assert_eq!(shared.clusters, 121);

    // Damage in two diverged clones and in the pages all of them share.
    let c20 = v.cluster_by_name("c20").unwrap().id;
    let big20 = v.lookup(c20, Ino::ROOT, b"big").unwrap().ino;
    poke(&v, c20, big20, |i| i.mapped += 2);
    let c40 = v.cluster_by_name("c40").unwrap().id;
    let small40 = v.lookup(c40, Ino::ROOT, b"small").unwrap().ino;
    poke(&v, c40, small40, |i| i.size = 100);
    let many40 = v.lookup(c40, Ino::ROOT, b"many").unwrap().ino;
    poke_slot(&v, c40, many40, 400, entry(Ino(4242), Kind::File, "nobody"));
    let small0 = v.lookup(prod, Ino::ROOT, b"small").unwrap().ino;
    let shared_page = v
        .eng
        .lookup(content(&v, prod, small0), NodeKind::RadixData, 0);
    v.eng.store.incref(shared_page.unwrap());
    let (shared, reference) = shared_and_reference(&v);
    println!("{shared}");
    assert!(!shared.is_clean());
    assert_same(&shared, &reference);
    assert!(
        shared
            .problems
            .iter()
            .any(|p| p.contains("cluster c40: directory")),
        "{shared}"
    );
}
