//! `clonefs fsck`: checks a store that is not mounted; exit status 1 unless clean.
//!
//! The store is opened for checking only, so a check never changes what it reports
//! on; it still takes the store's lock, so it refuses a store a daemon is serving.
//! On a terminal, a line on stderr shows how far it is, redrawn in place a few
//! times a second and erased at the end; `--json` prints the report for scripts.

use super::mount::StoreArgs;
use super::{init_logger, CliResult};
use clonefs::volume::{FsckProgress, FsckReport, Volume};
use std::cell::Cell;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub fn run(args: &StoreArgs, as_json: bool) -> CliResult {
    init_logger("warn");
    let start = Instant::now();
    let store = &args.addr;
    let vol = Volume::open_store(store, &args.opts, true)
        .map_err(|e| format!("cannot check {store}: {e}"))?;
    let report = if std::io::stderr().is_terminal() {
        let space = vol.statfs();
        let line = ProgressLine::new(Instant::now(), space.used / space.page_size);
        let r = vol.fsck_with_progress(&|p| line.show(p));
        line.erase();
        r
    } else {
        vol.fsck()
    }
    .map_err(|e| format!("fsck of {store} stopped: {e}"))?;
    // A RADOS store's lease goes now, not when it would run out.
    vol.close()
        .map_err(|e| format!("closing {store} after the check: {e}"))?;
    if as_json {
        let doc = JsonReport::new(&report, start.elapsed());
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("a report serializes")
        );
    } else {
        println!("{report}");
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The report as `--json` prints it.
#[derive(serde::Serialize)]
struct JsonReport<'a> {
    clean: bool,
    problems: &'a [String],
    notes: &'a [String],
    clusters: usize,
    inodes: u64,
    pages: u64,
    /// From opening the store to the end of the check.
    seconds: f64,
}

impl<'a> JsonReport<'a> {
    fn new(r: &'a FsckReport, took: Duration) -> JsonReport<'a> {
        JsonReport {
            clean: r.is_clean(),
            problems: &r.problems,
            notes: &r.notes,
            clusters: r.clusters,
            inodes: r.inodes,
            pages: r.pages,
            seconds: (took.as_secs_f64() * 1000.0).round() / 1000.0,
        }
    }
}

/// How often the progress line is redrawn, at most.
const REDRAW: Duration = Duration::from_millis(200);

/// The progress line on a terminal. The walk's total is estimated from the pages
/// the store has in use (each is walked once); then the inode tables are counted.
struct ProgressLine {
    /// When the check began (after the store opened): rates count from here.
    start: Instant,
    /// Pages in use: what the walk will reach, if the store is sound.
    total: u64,
    drawn: Cell<Instant>,
    shown: Cell<bool>,
    /// When the walk ended and the tables began.
    tables_from: Cell<Option<Instant>>,
}

impl ProgressLine {
    fn new(start: Instant, total: u64) -> ProgressLine {
        ProgressLine {
            start,
            total,
            drawn: Cell::new(start),
            shown: Cell::new(false),
            tables_from: Cell::new(None),
        }
    }

    fn show(&self, p: FsckProgress) {
        let now = Instant::now();
        if p.of_tables > 0 && self.tables_from.get().is_none() {
            self.tables_from.set(Some(now));
        }
        if now - self.drawn.get() < REDRAW {
            return;
        }
        self.drawn.set(now);
        self.shown.set(true);
        eprint!("\r{}\x1b[K", self.text(p, now));
    }

    fn text(&self, p: FsckProgress, now: Instant) -> String {
        match self.tables_from.get() {
            None => {
                let secs = (now - self.start).as_secs_f64().max(1e-3);
                let rate = p.pages as f64 / secs;
                let total = self.total.max(p.pages);
                let left = (total - p.pages) as f64 / rate.max(1.0);
                format!(
                    "fsck: {} of ~{} pages checked ({}%), {} pages/s, ~{} left",
                    short(p.pages as f64),
                    short(total as f64),
                    p.pages * 100 / total.max(1),
                    short(rate),
                    clock(left)
                )
            }
            Some(from) => {
                let secs = (now - from).as_secs_f64();
                let left = if p.tables == 0 {
                    String::new()
                } else {
                    let s = secs / p.tables as f64 * (p.of_tables - p.tables) as f64;
                    format!(", ~{} left", clock(s))
                };
                format!(
                    "fsck: {} pages checked; inode tables {} of {}{left}",
                    short(p.pages as f64),
                    p.tables,
                    p.of_tables
                )
            }
        }
    }

    fn erase(&self) {
        if self.shown.get() {
            eprint!("\r\x1b[K");
        }
    }
}

/// 950, 12.3k, 2.1M.
fn short(n: f64) -> String {
    if n < 1e4 {
        format!("{n:.0}")
    } else if n < 1e6 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{:.1}M", n / 1e6)
    }
}

/// Seconds as 0:07 or 1:02:03.
fn clock(secs: f64) -> String {
    let s = secs.ceil() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_reads_well() {
        let start = Instant::now();
        let line = ProgressLine::new(start, 2_000_000);
        let walk = FsckProgress {
            pages: 500_000,
            ..Default::default()
        };
        assert_eq!(
            line.text(walk, start + Duration::from_secs(1)),
            "fsck: 500.0k of ~2.0M pages checked (25%), 500.0k pages/s, ~0:03 left"
        );
        line.tables_from.set(Some(start + Duration::from_secs(4)));
        let tables = FsckProgress {
            pages: 2_000_000,
            tables: 10,
            of_tables: 40,
        };
        assert_eq!(
            line.text(tables, start + Duration::from_secs(5)),
            "fsck: 2.0M pages checked; inode tables 10 of 40, ~0:03 left"
        );
        assert_eq!(clock(3725.0), "1:02:05");
    }

    #[test]
    fn the_json_report_has_what_scripts_read() {
        let r = FsckReport {
            problems: vec!["page 9: reference count 2, but the trees hold 1 references".into()],
            notes: vec![],
            clusters: 3,
            inodes: 40,
            pages: 120,
        };
        let v: serde_json::Value =
            serde_json::to_value(JsonReport::new(&r, Duration::from_millis(1234))).unwrap();
        assert_eq!(v["clean"], false);
        assert_eq!(v["problems"][0], r.problems[0]);
        assert_eq!(v["notes"].as_array().unwrap().len(), 0);
        assert_eq!(
            (v["clusters"].clone(), v["inodes"].clone()),
            (3.into(), 40.into())
        );
        assert_eq!(v["pages"], 120);
        assert_eq!(v["seconds"], 1.234);
    }
}
