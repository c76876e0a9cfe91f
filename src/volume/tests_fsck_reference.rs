//! The fsck of before the shared check, kept verbatim as the reference the shared
//! check must agree with: it checks each distinct inode table on its own, re-reading
//! every page each table reaches.

use super::catalog::{RecordKind, Slot};
use super::check::{catalog_records, inodes, FsckReport};
use super::dir::Dirent;
use super::inode::{Ino, Inode, Kind};
use super::node::{Engine, NodeKind, Tree};
use crate::error::Result;
use crate::store::PageNo;
use std::collections::{HashMap, HashSet};

/// Checks a quiescent store: every node's checksum and header, every reference
/// count against the references the trees hold, free space against use, and each
/// cluster's directories against its inodes.
pub(super) fn fsck(
    eng: &Engine,
    catalog: Tree,
    clusters: &[(String, Tree, u64, u64)],
    live: bool,
) -> Result<FsckReport> {
    let mut r = FsckReport {
        clusters: clusters.len(),
        ..Default::default()
    };
    let cap = eng.store.capacity_pages();
    let mut expected: HashMap<u64, u32> = HashMap::new();
    let mut stack = Vec::new();
    if !catalog.root.is_none() {
        stack.push((catalog.root, Some(NodeKind::RadixCatalog), PageNo(0)));
    }
    while let Some((p, kind, parent)) = stack.pop() {
        if p.0 < crate::store::FIRST_DATA_PAGE || p.0 >= cap {
            r.problems.push(format!(
                "page {parent} references page {p}, outside the store"
            ));
            continue;
        }
        let n = expected.entry(p.0).or_default();
        *n += 1;
        if *n > 1 {
            continue;
        }
        if let Some(k) = kind {
            match eng.read_node(p, k) {
                Ok(b) => stack.extend(eng.children(&b).into_iter().map(|(c, ck)| (c, ck, p))),
                Err(e) => r.problems.push(e.to_string()),
            }
        }
    }
    r.pages = expected.len() as u64;
    for (&p, &n) in &expected {
        let have = eng.store.refcount(PageNo(p));
        if have != n {
            r.problems.push(format!(
                "page {p}: reference count {have}, but the trees hold {n} references"
            ));
        }
        if eng.store.is_free(PageNo(p)) {
            r.problems
                .push(format!("page {p} is in use but the allocator has it free"));
        }
    }
    if live {
        for (p, n) in eng.store.counts() {
            if !expected.contains_key(&p.0) {
                r.problems.push(format!(
                    "page {p}: reference count {n}, but no tree references it (leaked)"
                ));
            }
        }
    }
    let committed: HashMap<String, Tree> = catalog_records(eng, catalog)?
        .into_iter()
        .filter_map(|slot| match slot {
            Slot::Record(rec) if rec.kind == RecordKind::Cluster => Some((rec.name, rec.itable)),
            _ => None,
        })
        .collect();
    let mut seen_roots = HashSet::new();
    for (name, itable, next_ino, orphans) in clusters {
        if committed.get(name) != Some(itable) {
            r.problems.push(format!(
                "cluster {name}: the catalog records another inode table than the live one"
            ));
        }
        if !seen_roots.insert(itable.root) {
            continue;
        }
        match check_cluster(eng, name, *itable, *next_ino, *orphans, &mut r) {
            Ok(n) => r.inodes += n,
            Err(e) => r.problems.push(format!("cluster {name}: {e}")),
        }
    }
    Ok(r)
}

fn check_cluster(
    eng: &Engine,
    name: &str,
    itable: Tree,
    next_ino: u64,
    orphans: u64,
    r: &mut FsckReport,
) -> Result<u64> {
    let ps = eng.ps as u64;
    let all: HashMap<Ino, Inode> = inodes(eng, itable)?.into_iter().collect();
    let mut links: HashMap<Ino, u32> = HashMap::new();
    let mut subdirs: HashMap<Ino, u32> = HashMap::new();
    let mut problem = |s: String| r.problems.push(format!("cluster {name}: {s}"));
    if !all.get(&Ino::ROOT).is_some_and(|i| i.kind == Kind::Dir) {
        problem("no root directory (inode 1)".into());
    }
    let mut b = [0u8; super::dir::DIRENT_BYTES];
    for (&ino, i) in &all {
        if ino.0 >= next_ino {
            problem(format!(
                "inode {ino} is at or above the next inode number {next_ino}"
            ));
        }
        if i.kind == Kind::Dir {
            let mut names = HashSet::new();
            for s in 0..i.size {
                eng.read_record(i.content, NodeKind::RadixDirents, s, &mut b)?;
                match Dirent::decode(&b) {
                    Ok(None) => {}
                    Err(why) => problem(format!("directory {ino} slot {s}: {why}")),
                    Ok(Some(e)) => {
                        if !names.insert(e.name.clone()) {
                            problem(format!(
                                "directory {ino} holds the name {:?} twice",
                                String::from_utf8_lossy(&e.name)
                            ));
                        }
                        match all.get(&e.ino) {
                            None => problem(format!(
                                "directory {ino} names inode {} which does not exist",
                                e.ino
                            )),
                            Some(t) if t.kind != e.kind => problem(format!(
                                "directory {ino} names inode {} as {:?}, it is {:?}",
                                e.ino, e.kind, t.kind
                            )),
                            Some(t) => {
                                *links.entry(e.ino).or_default() += 1;
                                if t.kind == Kind::Dir {
                                    *subdirs.entry(ino).or_default() += 1;
                                    if t.parent != ino {
                                        problem(format!(
                                            "directory {} lies in {ino} but names {} as parent",
                                            e.ino, t.parent
                                        ));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        } else {
            let t = i.content;
            let mapped = if t.root.is_none() {
                0
            } else {
                eng.count_leaves(t.root, NodeKind::RadixData, t.height - 1)?
            };
            if mapped != i.mapped {
                problem(format!(
                    "inode {ino} records {} mapped pages, its map holds {mapped}",
                    i.mapped
                ));
            }
            if let Some(p) = eng.seek(t, NodeKind::RadixData, i.size.div_ceil(ps), true)? {
                if p < eng.reach(t.height) {
                    problem(format!(
                        "inode {ino} maps page {p} beyond its size {}",
                        i.size
                    ));
                }
            }
        }
    }
    let mut orphans_found = 0;
    for (&ino, i) in &all {
        let l = links.get(&ino).copied().unwrap_or(0);
        let want = if i.kind == Kind::Dir {
            2 + subdirs.get(&ino).copied().unwrap_or(0)
        } else {
            l
        };
        let named_ok = if i.kind == Kind::Dir {
            l == u32::from(ino != Ino::ROOT)
        } else {
            true
        };
        if i.nlink == 0 && l == 0 {
            orphans_found += 1;
            continue;
        }
        if i.nlink != want || !named_ok {
            problem(format!(
                "inode {ino} ({:?}) has link count {}, but {l} names and {want} expected",
                i.kind, i.nlink
            ));
        }
    }
    if orphans_found > 0 {
        if orphans_found > orphans {
            problem(format!(
                "{orphans_found} unlinked inodes, but the cluster records {orphans} orphans"
            ));
        } else {
            r.notes.push(format!("cluster {name}: {orphans_found} unlinked inodes still open (freed on release or at mount)"));
        }
    }
    Ok(all.len() as u64)
}
