//! Restore to a point in time, reset, protection and expiry through a real mount:
//! the commands, the API socket and `mkdir SRC/.clone/NAME@TIME`.

mod common;

use common::{run, run_ok, Mounted, BIN};
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::thread::sleep;
use std::time::Duration;

/// Writes `data` to `path` and fsyncs it: a commit, so a restore point.
fn put(path: &std::path::Path, data: &str) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)
        .unwrap();
    std::io::Write::write_all(&mut f, data.as_bytes()).unwrap();
    f.sync_all().unwrap();
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn restore_reset_protect_and_expire_through_the_commands_and_the_mount() {
    let Some(m) = Mounted::new() else { return };
    let mnt = m.mnt_str();
    fs::create_dir(m.path("prod")).unwrap();
    put(&m.path("prod/f"), "v1");
    sleep(Duration::from_millis(1500));
    let t = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    sleep(Duration::from_millis(1500));
    put(&m.path("prod/f"), "v2");

    let out = run_ok(&[
        BIN,
        "restore-to-point-in-time",
        "--source-cluster",
        "prod",
        "--cluster",
        "old",
        "--restore-to-time",
        &t,
        mnt,
    ]);
    assert!(
        out.starts_with("restored prod as old from its restore point at "),
        "{out}"
    );
    assert_eq!(fs::read_to_string(m.path("old/f")).unwrap(), "v1");
    run_ok(&[
        BIN,
        "restore-to-point-in-time",
        "--source-cluster",
        "prod",
        "--cluster",
        "new",
        "--use-latest-restorable-time",
        mnt,
    ]);
    assert_eq!(fs::read_to_string(m.path("new/f")).unwrap(), "v2");
    fs::create_dir(m.path(&format!("prod/.clone/viadir@{t}"))).unwrap();
    assert_eq!(fs::read_to_string(m.path("viadir/f")).unwrap(), "v1");
    let bad = fs::create_dir(m.path("prod/.clone/x@yesterday")).unwrap_err();
    assert_eq!(bad.raw_os_error(), Some(libc::EINVAL));

    // Bad times are refused, naming the window, and leave nothing behind.
    let early = run(&[
        BIN,
        "restore-to-point-in-time",
        "--source-cluster",
        "prod",
        "--cluster",
        "early",
        "--restore-to-time",
        "2001-01-01T00:00:00Z",
        mnt,
    ]);
    assert!(!early.status.success());
    assert!(
        stderr(&early).contains("before the restore window"),
        "{}",
        stderr(&early)
    );
    assert!(!m.path("early").exists());
    let neither = run(&[
        BIN,
        "restore-to-point-in-time",
        "--source-cluster",
        "prod",
        "--cluster",
        "x",
        mnt,
    ]);
    assert!(!neither.status.success());
    let out = run_ok(&[BIN, "restorable", "--cluster", "prod", "--json", mnt]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(doc["points"].as_u64().unwrap() >= 2, "{out}");

    // Reset: refused while a file of the cluster is open, then to prod's latest.
    put(&m.path("old/f"), "changed");
    let held = fs::File::open(m.path("old/f")).unwrap();
    let busy = run(&[BIN, "reset", "--cluster", "old", "--from-parent", mnt]);
    assert!(!busy.status.success());
    assert!(
        stderr(&busy).contains("in use by process"),
        "{}",
        stderr(&busy)
    );
    drop(held);
    // The kernel releases a closed file's handle asynchronously.
    let reset = (0..20).any(|_| {
        sleep(Duration::from_millis(100));
        run(&[BIN, "reset", "--cluster", "old", "--from-parent", mnt])
            .status
            .success()
    });
    assert!(
        reset,
        "reset still refused 2 s after the last handle closed"
    );
    assert_eq!(fs::read_to_string(m.path("old/f")).unwrap(), "v2");

    // Protection: rm -rf removes nothing; unprotect lifts it.
    run_ok(&[BIN, "protect", "--cluster", "prod", mnt]);
    let rm = run(&["rm", "-rf", &m.path("prod").display().to_string()]);
    assert!(!rm.status.success());
    assert_eq!(fs::read_to_string(m.path("prod/f")).unwrap(), "v2");
    let e = fs::remove_file(m.path("prod/f")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    run_ok(&[BIN, "unprotect", "--cluster", "prod", mnt]);
    fs::remove_file(m.path("prod/f")).unwrap();

    // Expiry.
    let past = run(&[
        BIN,
        "clone",
        "--source-cluster",
        "new",
        "--cluster",
        "tmp",
        "--expires-at",
        "-1m",
        mnt,
    ]);
    assert!(
        !past.status.success() && !m.path("tmp").exists(),
        "{past:?}"
    );
    run_ok(&[
        BIN,
        "clone",
        "--source-cluster",
        "new",
        "--cluster",
        "tmp",
        "--expires-in",
        "2s",
        mnt,
    ]);
    assert!(m.path("tmp").is_dir());
    let status = run_ok(&[BIN, "status", mnt]);
    assert!(
        status.contains("EXPIRES") && status.contains("tmp"),
        "{status}"
    );
    let gone = (0..40).any(|_| {
        sleep(Duration::from_millis(250));
        !m.path("tmp").exists()
    });
    assert!(gone, "a clone expiring in 2 s was still there after 10 s");

    // The API over the socket, as scripts use it.
    let sock = format!("{}.sock", m.store_str());
    let out = run_ok(&[
        "curl",
        "-sf",
        "--unix-socket",
        &sock,
        "http://localhost/api/v1/clusters/new",
    ]);
    assert!(out.contains("\"name\": \"new\""), "{out}");
}
