//! Databases on a real mount: runs `scripts/db-postgres.sh`, `scripts/db-mariadb.sh` and
//! `scripts/db-sqlite.sh`. Each script installs its engine if missing, builds clonefs,
//! puts a database on cluster `prod`, clones it under write load and checks the clone
//! with the engine's own tools and a client-side ledger (see the scripts' headers).
//! `scripts/db-postgres-crash.sh` instead kills the clonefs daemon with SIGKILL under
//! PostgreSQL's write load, three times, and checks fsck, crash recovery, pg_amcheck,
//! every committed ledger id and pgbench's balances after each.
//! `scripts/db-postgres-pitr.sh` restores PostgreSQL's cluster to three times under
//! load and checks each restored server (pg_amcheck, exactly the ledger rows committed
//! by the restore point's time), then reset, expiry and protection of clusters.
//! `scripts/db-postgres-mounts.sh` serves PostgreSQL from a mount of cluster prod
//! alone and a clone of it from a second single-cluster mount, both servers at once.
//!
//! They need root (mount, servers running as their own users) and /dev/fuse: without
//! either, each test says why and passes. They run one at a time, whatever
//! `--test-threads` says, so that on a small machine they do not slow each other into
//! their time limits. The script's output is streamed as it runs (not captured), and its
//! last lines are repeated in the panic message when it fails.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// Time for one script, installing its engine and building clonefs included.
const LIMIT: Duration = Duration::from_secs(20 * 60);
/// After the time limit: how long the script gets to stop its servers and unmount.
const GRACE: Duration = Duration::from_secs(180);

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn why_not() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root");
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse");
    }
    None
}

fn wait_until(child: &mut std::process::Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the script") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

fn run_script(name: &str) {
    if let Some(why) = why_not() {
        eprintln!("skipping scripts/{name}: {why}");
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name);
    // stderr joins stdout so that the lines keep their order.
    let mut child = Command::new("bash")
        .arg("-c")
        .arg("exec bash \"$0\" 2>&1")
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("cannot start bash");
    let out = child.stdout.take().expect("piped stdout");
    let reader = thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(out).lines() {
            let line = line.unwrap_or_else(|e| format!("(unreadable output: {e})"));
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{line}");
            let _ = stdout.flush();
            lines.push(line);
        }
        lines
    });

    let start = Instant::now();
    let status = match wait_until(&mut child, start + LIMIT) {
        Some(status) => status,
        None => {
            // SIGTERM lets the script's trap stop its servers and unmount; the group
            // gets SIGKILL only if that does not end it in time.
            let pid = child.id() as libc::pid_t;
            // SAFETY: kill has no memory preconditions; pid is our child, pid as a
            // negative number is the process group it leads (process_group(0)).
            unsafe { libc::kill(pid, libc::SIGTERM) };
            if wait_until(&mut child, Instant::now() + GRACE).is_none() {
                // SAFETY: as above.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                let _ = child.wait();
            }
            let lines = reader.join().unwrap_or_default();
            panic!(
                "scripts/{name} ran past {} s and was stopped; its last lines:\n{}",
                LIMIT.as_secs(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    };
    let lines = reader.join().expect("reading the script's output");
    assert!(
        status.success(),
        "scripts/{name} failed ({status}) after {} s; its last lines:\n{}",
        start.elapsed().as_secs(),
        lines[lines.len().saturating_sub(40)..].join("\n")
    );
    assert!(
        lines.iter().any(|l| l.ends_with(": PASS")),
        "scripts/{name} exited 0 without printing PASS"
    );
}

#[test]
fn postgres_on_a_cluster_clones_under_load() {
    run_script("db-postgres.sh");
}

#[test]
fn mariadb_on_a_cluster_clones_under_load() {
    run_script("db-mariadb.sh");
}

#[test]
fn sqlite_on_a_cluster_clones_under_load() {
    run_script("db-sqlite.sh");
}

#[test]
fn postgres_on_a_cluster_survives_daemon_sigkills() {
    run_script("db-postgres-crash.sh");
}

#[test]
fn postgres_restores_to_points_in_time() {
    run_script("db-postgres-pitr.sh");
}

#[test]
fn postgres_on_single_cluster_mounts_with_a_clone_beside_it() {
    run_script("db-postgres-mounts.sh");
}
