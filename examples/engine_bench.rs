//! Engine benchmark (no mount): clone time against data size, read throughput
//! against clone-lineage depth, and store space around a clone. Run by
//! `scripts/bench.sh`, or: `cargo run --release --example engine_bench -- [--quick] [DIR]`.
//! Prints one table; every figure is measured in this run.

use clonefs::volume::{Ino, Kind, NewInode, Volume};
use std::time::Instant;

const WHO: NewInode = NewInode {
    perm: 0o755,
    uid: 0,
    gid: 0,
};
const MIB: u64 = 1 << 20;
/// Clones timed per data size.
const CLONE_ROUNDS: usize = 51;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let dir = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "/var/tmp".into());
    let tmp = tempfile::Builder::new()
        .prefix("clonefs-bench")
        .tempdir_in(&dir)
        .expect("temp dir");
    let store = tmp.path().join("bench.clonefs");
    let sizes: Vec<u64> = if quick {
        vec![64 * MIB, 256 * MIB, 1024 * MIB]
    } else {
        vec![64 * MIB, 1024 * MIB, 8192 * MIB]
    };
    Volume::mkfs(&store, 64 << 30, 4096).expect("mkfs");
    let vol = Volume::open_path(&store).expect("open");
    let mut rows: Vec<(String, String, String)> = Vec::new();

    // Clone time against data size.
    let chunk: Vec<u8> = (0..MIB).map(|i| (i * 7 % 251) as u8).collect();
    let mut names = Vec::new();
    for (k, size) in sizes.iter().enumerate() {
        let name = format!("data{k}");
        let c = vol.create_cluster(&name, WHO).unwrap().id;
        let f = vol
            .mknod(c, Ino::ROOT, b"file", Kind::File, WHO, 0)
            .unwrap()
            .ino;
        let t = Instant::now();
        for off in (0..*size).step_by(MIB as usize) {
            vol.write(c, f, off, &chunk).unwrap();
        }
        vol.fsync(c, f).unwrap();
        let secs = t.elapsed().as_secs_f64();
        rows.push((
            format!("write {} MiB + fsync", size / MIB),
            format!("{:.0} MiB/s", (*size / MIB) as f64 / secs),
            "-".into(),
        ));
        names.push(name);
    }
    // A clone takes about a microsecond, where one cache miss or interrupt shows:
    // the sizes take turns, round after round, and each keeps its median.
    let mut times = vec![Vec::new(); sizes.len()];
    for round in 0..CLONE_ROUNDS {
        for (name, t) in names.iter().zip(&mut times) {
            let start = Instant::now();
            vol.clone_cluster(name, &format!("{name}-c{round}"))
                .unwrap();
            t.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    let clone_us: Vec<f64> = times
        .iter_mut()
        .map(|t| {
            t.sort_by(|a, b| a.partial_cmp(b).unwrap());
            t[t.len() / 2]
        })
        .collect();
    for (size, us) in sizes.iter().zip(&clone_us) {
        let verdict = if *us < 10_000.0 {
            "PASS (< 10 ms)"
        } else {
            "MISS (< 10 ms)"
        };
        rows.push((
            format!(
                "clone, {} MiB of data (median of {CLONE_ROUNDS})",
                size / MIB
            ),
            format!("{us:.1} us"),
            verdict.into(),
        ));
    }
    let ratio = clone_us[clone_us.len() - 1] / clone_us[0];
    rows.push((
        format!("clone {} MiB / clone 64 MiB", sizes[sizes.len() - 1] / MIB),
        format!("{ratio:.2}x"),
        if ratio < 2.0 {
            "PASS (< 2x)"
        } else {
            "MISS (< 2x)"
        }
        .into(),
    ));
    vol.commit().unwrap();

    // Read throughput through a lineage of clones, each of which rewrote one page.
    let lineage_size = if quick { 64 * MIB } else { 256 * MIB };
    let c = vol.create_cluster("l0", WHO).unwrap().id;
    let f = vol
        .mknod(c, Ino::ROOT, b"file", Kind::File, WHO, 0)
        .unwrap()
        .ino;
    for off in (0..lineage_size).step_by(MIB as usize) {
        vol.write(c, f, off, &chunk).unwrap();
    }
    let depths = [1usize, 16, 256];
    for depth in 0..depths[depths.len() - 1] {
        let name = format!("l{}", depth + 1);
        vol.clone_cluster(&format!("l{depth}"), &name).unwrap();
        let c = vol.cluster_by_name(&name).unwrap().id;
        let page = (depth as u64 * 7919 % (lineage_size / 4096)) * 4096;
        vol.write(c, f, page, b"lineage").unwrap();
    }
    // The depths take turns, round after round, so that a slow moment of the
    // machine does not land on one depth; each keeps its best round.
    let mut rates = vec![0f64; depths.len()];
    for _ in 0..5 {
        for (k, &d) in depths.iter().enumerate() {
            let c = vol.cluster_by_name(&format!("l{d}")).unwrap().id;
            let t = Instant::now();
            for off in (0..lineage_size).step_by(MIB as usize) {
                std::hint::black_box(vol.read(c, f, off, MIB as usize).unwrap());
            }
            rates[k] = rates[k].max((lineage_size / MIB) as f64 / t.elapsed().as_secs_f64());
        }
    }
    for (&d, rate) in depths.iter().zip(&rates) {
        rows.push((
            format!("read {} MiB at lineage depth {d}", lineage_size / MIB),
            format!("{rate:.0} MiB/s"),
            "-".into(),
        ));
    }
    // As the mount's lineage row: the deepest read within 10% of the shallowest
    // (faster is no slowdown).
    let deep = rates[rates.len() - 1] / rates[0];
    rows.push((
        format!(
            "read at depth {} / at depth {}",
            depths[depths.len() - 1],
            depths[0]
        ),
        format!("{deep:.2}x"),
        if deep >= 0.9 {
            "PASS (>= 0.9x)"
        } else {
            "MISS (>= 0.9x)"
        }
        .into(),
    ));

    // Space: a clone adds almost nothing; rewriting 1% adds about 1%.
    let big = format!("data{}", sizes.len() - 1);
    let size = sizes[sizes.len() - 1];
    vol.commit().unwrap();
    vol.commit().unwrap();
    let before = vol.statfs().used;
    vol.clone_cluster(&big, "space").unwrap();
    vol.commit().unwrap();
    vol.commit().unwrap();
    let after_clone = vol.statfs().used;
    let c = vol.cluster_by_name("space").unwrap().id;
    let f = vol.lookup(c, Ino::ROOT, b"file").unwrap().ino;
    let pages = size / 4096;
    for k in 0..pages / 100 {
        vol.write(c, f, (k * 100 + 37) % pages * 4096, &chunk[..4096])
            .unwrap();
    }
    vol.commit().unwrap();
    vol.commit().unwrap();
    let after_rewrite = vol.statfs().used;
    let added = after_clone.saturating_sub(before);
    rows.push((
        "store used before the clone".into(),
        format!("{:.1} MiB", before as f64 / MIB as f64),
        "-".into(),
    ));
    rows.push((
        "bytes the clone added".into(),
        format!("{:.1} KiB", added as f64 / 1024.0),
        if added < MIB {
            "PASS (< 1 MiB)"
        } else {
            "MISS (< 1 MiB)"
        }
        .into(),
    ));
    let grew = (after_rewrite - after_clone) as f64 / size as f64 * 100.0;
    rows.push((
        "growth after rewriting 1% of the clone's pages".into(),
        format!("{grew:.2}% of the data"),
        if (1.0..1.5).contains(&grew) {
            "PASS (~1% + map nodes)"
        } else {
            "MISS (~1% + map nodes)"
        }
        .into(),
    ));
    vol.close().unwrap();

    let w = rows.iter().map(|r| r.0.len()).max().unwrap();
    println!("{:w$}  {:>18}  target", "engine (no mount)", "figure");
    for (a, b, c) in rows {
        println!("{a:w$}  {b:>18}  {c}");
    }
}
