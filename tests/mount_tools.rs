//! Ordinary tools on a real mount: tar, cp -a, rsync -a, diff -r and sha256sum
//! round-trip a tree into a cluster, into its clone and back; cp of a large file
//! shares pages instead of copying them; a clone taken while four threads write is
//! one point in time.

mod common;

use common::{run_ok, s, Mounted};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A tree with small and large files, a sparse file, subdirectories, modes,
/// a symlink and a hard link.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    for i in 0..50u32 {
        let body: Vec<u8> = (0..(i * 997) as usize)
            .map(|k| (k as u32 * 31 + i) as u8)
            .collect();
        std::fs::write(root.join(format!("a/file{i}")), &body).unwrap();
    }
    let big: Vec<u8> = (0..5_000_000u32)
        .map(|k| (k.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(root.join("a/b/big.bin"), &big).unwrap();
    let sparse = std::fs::File::create(root.join("a/b/c/sparse")).unwrap();
    sparse.write_all_at(b"end", 20_000_000).unwrap();
    std::fs::write(root.join("a/b/c/script.sh"), "#!/bin/sh\necho hi\n").unwrap();
    run_ok(&["chmod", "0750", s(&root.join("a/b/c/script.sh"))]);
    run_ok(&["chmod", "0600", s(&root.join("a/file3"))]);
    std::os::unix::fs::symlink("../file1", root.join("a/b/link")).unwrap();
    std::fs::hard_link(root.join("a/file2"), root.join("a/b/hard")).unwrap();
}

fn diff(a: &Path, b: &Path) {
    run_ok(&["diff", "-r", "--no-dereference", s(a), s(b)]);
}

/// `find -printf` of modes, sizes, link targets and link counts, for comparing metadata.
fn listing(root: &Path) -> String {
    let out = run_ok(&[
        "find",
        s(root),
        "-mindepth",
        "1",
        "-printf",
        "%P %y %m %s %n %l\n",
    ]);
    let mut lines: Vec<&str> = out.lines().map(|l| l.trim_end()).collect();
    lines.sort();
    lines
        .iter()
        .map(|l| {
            // Directory sizes are the file system's own business.
            let f: Vec<&str> = l.split(' ').collect();
            if f[1] == "d" {
                format!("{} d {}", f[0], f[2])
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn tools_round_trip_a_tree_through_a_cluster_and_its_clone() {
    let Some(m) = Mounted::with_size("2G") else {
        return;
    };
    let native = tempfile::tempdir().unwrap();
    let src = native.path().join("src");
    make_tree(&src);
    std::fs::create_dir(m.path("prod")).unwrap();

    // tar c | tar x into the cluster.
    run_ok(&[
        "sh",
        "-c",
        &format!(
            "tar -C {} -cf - . | tar -C {} -xpf -",
            s(&src),
            s(&m.path("prod"))
        ),
    ]);
    diff(&src, &m.path("prod"));
    assert_eq!(listing(&src), listing(&m.path("prod")));
    // cp -a and rsync -a inside the mount.
    run_ok(&["cp", "-a", s(&m.path("prod/a")), s(&m.path("prod/a-cp"))]);
    diff(&src.join("a"), &m.path("prod/a-cp"));
    run_ok(&[
        "rsync",
        "-aH",
        &format!("{}/", s(&src)),
        s(&m.path("prod/rs")),
    ]);
    diff(&src, &m.path("prod/rs"));
    assert_eq!(listing(&src), listing(&m.path("prod/rs")));
    let sums = |root: &Path| {
        run_ok(&[
            "sh",
            "-c",
            &format!("cd {} && find . -type f | sort | xargs sha256sum", s(root)),
        ])
    };
    let want = sums(&src);

    // Clone, and the clone holds the same tree.
    std::fs::create_dir(m.path("prod/.clone/test")).unwrap();
    diff(&src, &m.path("test/rs"));
    assert_eq!(sums(&m.path("test/rs")), want);
    assert_eq!(listing(&src), listing(&m.path("test/rs")));
    // Hard links stay hard links; the same file in two clusters is not a hard link.
    let ino =
        |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::symlink_metadata(p).unwrap());
    assert_eq!(
        ino(&m.path("test/rs/a/file2")),
        ino(&m.path("test/rs/a/b/hard"))
    );
    assert_ne!(
        ino(&m.path("test/rs/a/file2")),
        ino(&m.path("prod/rs/a/file2"))
    );
    // .clone is never seen by the tools.
    assert!(!run_ok(&["find", s(&m.path("prod"))]).contains(".clone"));
    assert!(!run_ok(&["ls", "-a", s(&m.path("prod"))]).contains(".clone"));

    // Change the clone with tools; prod keeps the original.
    std::fs::write(m.path("test/rs/a/file1"), b"changed in test").unwrap();
    run_ok(&["rm", "-rf", s(&m.path("test/rs/a/b/c"))]);
    diff(&src, &m.path("prod/rs"));

    // And back out of the clone to a native directory.
    let back = native.path().join("back");
    run_ok(&[
        "rsync",
        "-aH",
        &format!("{}/", s(&m.path("prod/rs"))),
        s(&back),
    ]);
    diff(&src, &back);
    let back2 = native.path().join("back2");
    std::fs::create_dir(&back2).unwrap();
    run_ok(&[
        "sh",
        "-c",
        &format!(
            "tar -C {} -cf - . | tar -C {} -xpf -",
            s(&m.path("test/rs")),
            s(&back2)
        ),
    ]);
    assert_eq!(
        std::fs::read(back2.join("a/file1")).unwrap(),
        b"changed in test"
    );
    assert!(!back2.join("a/b/c").exists());
    let du = run_ok(&["du", "-s", s(&m.path("prod"))]);
    assert!(
        du.split_whitespace()
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 5_000,
        "du sees the data: {du}"
    );
}

fn used(m: &Mounted) -> u64 {
    let out = run_ok(&["stat", "-f", "-c", "%S %b %f", m.mnt_str()]);
    let v: Vec<u64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    v[0] * (v[1] - v[2])
}

#[test]
fn cp_of_a_large_file_shares_pages_within_and_across_clusters() {
    let Some(m) = Mounted::with_size("4G") else {
        return;
    };
    std::fs::create_dir(m.path("prod")).unwrap();
    std::fs::create_dir(m.path("other")).unwrap();
    let big = m.path("prod/big");
    run_ok(&[
        "dd",
        "if=/dev/zero",
        &format!("of={}", s(&big)),
        "bs=1M",
        "count=1024",
        "conv=fsync",
        "status=none",
    ]);
    std::fs::File::open(&big)
        .unwrap()
        .write_all_at(b"marker", 12345)
        .ok();
    let f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
    f.write_all_at(b"marker", 12345).unwrap();
    f.sync_all().unwrap();
    let before = used(&m);
    run_ok(&["cp", s(&big), s(&m.path("prod/big-copy"))]);
    run_ok(&["cp", s(&big), s(&m.path("other/big"))]);
    let grew = used(&m).saturating_sub(before);
    assert!(
        grew < 16 << 20,
        "two 1 GiB copies grew the store by {grew} bytes: pages were copied, not shared"
    );
    run_ok(&["cmp", s(&big), s(&m.path("other/big"))]);
    // Copy-on-write from then on.
    let c = std::fs::OpenOptions::new()
        .write(true)
        .open(m.path("other/big"))
        .unwrap();
    c.write_all_at(b"CHANGED", 12345).unwrap();
    let mut buf = [0u8; 7];
    std::fs::File::open(&big)
        .unwrap()
        .read_exact_at(&mut buf, 12345)
        .unwrap();
    assert_eq!(&buf[..6], b"marker");
    let st = run_ok(&[common::BIN, "status", m.mnt_str()]);
    assert!(st.contains("prod") && st.contains("other"), "{st}");
}

#[test]
fn a_clone_taken_while_four_threads_write_is_one_point_in_time() {
    let Some(m) = Mounted::with_size("1G") else {
        return;
    };
    std::fs::create_dir(m.path("prod")).unwrap();
    const REC: usize = 64;
    let seq = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // (seq, started, finished) of every write, per thread.
    let log = Arc::new(Mutex::new(Vec::<(u64, Instant, Instant)>::new()));
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let (seq, stop, log) = (seq.clone(), stop.clone(), log.clone());
            let path = m.path(&format!("prod/w{t}"));
            std::thread::spawn(move || {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let n = seq.fetch_add(1, Ordering::SeqCst);
                    let mut rec = format!("t{t} seq {n:016}").into_bytes();
                    rec.resize(REC - 1, b'.');
                    rec.push(b'\n');
                    let start = Instant::now();
                    f.write_all(&rec).unwrap();
                    log.lock().unwrap().push((n, start, Instant::now()));
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(400));
    let t0 = Instant::now();
    std::fs::create_dir(m.path("prod/.clone/snap")).unwrap();
    let t1 = Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let mut present = std::collections::HashSet::new();
    for t in 0..4 {
        let body = std::fs::read(m.path(&format!("snap/w{t}"))).unwrap();
        assert_eq!(body.len() % REC, 0, "a torn record in snap/w{t}");
        for rec in body.chunks(REC) {
            let line = String::from_utf8_lossy(rec);
            assert!(
                line.starts_with(&format!("t{t} seq ")),
                "garbage in snap/w{t}: {line}"
            );
            present.insert(
                line[line.find("seq ").unwrap() + 4..][..16]
                    .parse::<u64>()
                    .unwrap(),
            );
        }
    }
    let log = log.lock().unwrap();
    let (mut before, mut after) = (0, 0);
    for (n, start, end) in log.iter() {
        if *end < t0 {
            assert!(
                present.contains(n),
                "write {n} completed before the clone but is missing from it"
            );
            before += 1;
        }
        if *start > t1 {
            assert!(
                !present.contains(n),
                "write {n} began after the clone but is in it"
            );
            after += 1;
        }
    }
    assert!(
        before > 100 && after > 10,
        "the writers ran on both sides of the clone ({before} before, {after} after)"
    );
}
