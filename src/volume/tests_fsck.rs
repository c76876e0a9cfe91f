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
