//! What zero-message open changes (src/fs/handles.rs), on a real mount: without
//! OPEN and RELEASE, an unlinked file lives by the kernel's references, across the
//! kernel dropping its caches and in another process; the status file, read without
//! a handle, shows the store as it is at each open. Both with the writeback cache
//! off (no OPEN) and on (OPEN kept).

mod common;

use common::{run_ok, Mounted, BIN};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::process::{Command, Stdio};

fn drop_kernel_caches() {
    // Dentries and inodes not in use go; an open file's inode stays.
    let _ = fs::write("/proc/sys/vm/drop_caches", "2");
}

fn unlinked_open_files_live_until_closed_on(opts: &[&str]) {
    let Some(mut m) = Mounted::with_options("1G", opts) else {
        return;
    };
    fs::create_dir(m.path("c")).unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(m.path("c/f"), &data).unwrap();

    // This process and a child each hold it open; the name goes.
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("c/f"))
        .unwrap();
    let mut child = Command::new("timeout")
        .args(["60", "sh", "-c", "exec 3<\"$1\"; read _; cat <&3", "sh"])
        .arg(m.path("c/f"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    fs::remove_file(m.path("c/f")).unwrap();
    assert!(!m.path("c/f").exists());
    drop_kernel_caches();

    // Still a file on both descriptors, writable and readable.
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut back = Vec::new();
    f.read_to_end(&mut back).unwrap();
    assert_eq!(back, data);
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(b"HEAD").unwrap();
    child.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(&out.stdout[..4], b"HEAD");
    assert_eq!(&out.stdout[4..], &data[4..]);
    drop(f);

    // Another file of the same name is a new file.
    fs::write(m.path("c/f"), b"new").unwrap();
    assert_eq!(fs::read(m.path("c/f")).unwrap(), b"new");
    m.umount();
    let fsck = run_ok(&[BIN, "fsck", m.store_str()]);
    assert!(fsck.contains("0 problems"), "{fsck}");
}

#[test]
fn unlinked_open_files_live_until_closed() {
    unlinked_open_files_live_until_closed_on(&[]);
}

#[test]
fn unlinked_open_files_live_until_closed_with_writeback_cache() {
    unlinked_open_files_live_until_closed_on(&["--writeback-cache"]);
}

fn status_file_shows_the_store_at_each_open_on(opts: &[&str]) {
    let Some(m) = Mounted::with_options("1G", opts) else {
        return;
    };
    let status = m.path(".clonefs-status");
    let clusters = || -> Vec<String> {
        let text = fs::read_to_string(&status).unwrap();
        let doc: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let mut v: Vec<String> = doc["clusters"]
            .as_array()
            .unwrap_or_else(|| panic!("no clusters in {text}"))
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    assert!(clusters().is_empty());
    // Same-length documents with other bytes, longer and shorter ones, in turn.
    for name in ["a1", "a2", "a3", "longer-name", "b"] {
        fs::create_dir(m.path(name)).unwrap();
        assert!(clusters().contains(&name.to_owned()));
        fs::write(m.path(&format!("{name}/f")), vec![1u8; 8192]).unwrap();
        assert!(clusters().contains(&name.to_owned()));
    }
    fs::remove_dir_all(m.path("a2")).unwrap();
    assert_eq!(clusters(), ["a1", "a3", "b", "longer-name"]);
    // The command reads the same file.
    let table = run_ok(&[BIN, "status", m.mnt_str()]);
    assert!(table.contains("longer-name"), "{table}");
}

#[test]
fn status_file_shows_the_store_at_each_open() {
    status_file_shows_the_store_at_each_open_on(&[]);
}

#[test]
fn status_file_shows_the_store_at_each_open_with_writeback_cache() {
    status_file_shows_the_store_at_each_open_on(&["--writeback-cache"]);
}
