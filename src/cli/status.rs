//! `clonefs status`: the daemon's status document, as JSON or as a table.
//!
//! The document is the daemon's (`clonefs::status`): this file only reads it back
//! and lays it out. `--json` prints it untouched, so scripts see exactly what the
//! daemon wrote; the table is for people and may change.

use super::{absolute, human, init_logger, print_out, read_status, CliResult};
use clonefs::status::{ClusterView, StatusDoc, StatusView};
use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;
use std::process::ExitCode;

fn local_time(secs: i64) -> String {
    // SAFETY: localtime_r reads `t` and fills `tm`, both valid for the call.
    let tm = unsafe {
        let t: libc::time_t = secs as libc::time_t;
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return secs.to_string();
        }
        tm
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Seconds since the epoch of an RFC 3339 time from the document, if it is one.
fn unix_secs(t: &str) -> Option<i64> {
    humantime::parse_rfc3339_weak(t)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
}

/// Hashes the table's integer keys (times, sizes) with a multiply: SipHash, made
/// to resist keys chosen by an attacker, was a sixth of a 10,000-cluster status,
/// and these keys are the daemon's figures.
type IntHash = BuildHasherDefault<IntHasher>;

#[derive(Default)]
struct IntHasher(u64);

impl Hasher for IntHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b.into());
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        // The table takes its low bits: fold the well-mixed high ones in (sizes are
        // multiples of the page size, and the product's low bits only see the key's).
        self.0 ^ (self.0 >> 32)
    }
}

/// Local times and sizes as the table shows them, each formatted once: thousands
/// of clones share their creation second, their sizes and the start of their
/// restore window (a table of 10,000 clusters was 40 ms of allocations when every
/// cell was a String of its own).
#[derive(Default)]
struct Formatted {
    times: HashMap<i64, String, IntHash>,
    sizes: HashMap<u64, String, IntHash>,
}

impl Formatted {
    fn of(doc: &StatusView) -> Formatted {
        let mut f = Formatted::default();
        for c in &doc.clusters {
            let window = c
                .earliest_restorable
                .as_deref()
                .map(|t| unix_secs(t).unwrap_or(0));
            for t in std::iter::once(c.created).chain(window) {
                f.times.entry(t).or_insert_with(|| local_time(t));
            }
            for n in [c.logical, c.shared, c.unique, c.restore_only] {
                f.sizes.entry(n).or_insert_with(|| human(n));
            }
        }
        f
    }

    /// A cluster's row.
    fn cells<'a>(&'a self, c: &'a ClusterView) -> [Cow<'a, str>; 9] {
        let size = |n: u64| Cow::Borrowed(self.sizes[&n].as_str());
        let name = match c.protected {
            true => Cow::Owned(format!("{} (protected)", c.name)),
            false => Cow::Borrowed(c.name.as_ref()),
        };
        // Its restore window: "N since TIME", "off" or "none yet".
        let window = match (c.retention_secs, &c.earliest_restorable) {
            (0, _) => Cow::Borrowed("off"),
            (_, None) => Cow::Borrowed("none yet"),
            (_, Some(t)) => {
                let since = &self.times[&unix_secs(t).unwrap_or(0)];
                Cow::Owned(format!("{} since {since}", c.restore_points))
            }
        };
        let expires = match c.expires_at.as_deref() {
            None => Cow::Borrowed("-"),
            Some(t) => Cow::Owned(unix_secs(t).map_or(t.to_string(), local_time)),
        };
        [
            name,
            Cow::Borrowed(c.parent.as_deref().unwrap_or("-")),
            Cow::Borrowed(self.times[&c.created].as_str()),
            size(c.logical),
            size(c.shared),
            size(c.unique),
            size(c.restore_only),
            window,
            expires,
        ]
    }
}

/// The status document as a table.
fn status_table(doc: &StatusView) -> String {
    const HEAD: [&str; 9] = [
        "NAME",
        "PARENT",
        "CREATED",
        "LOGICAL",
        "SHARED",
        "UNIQUE",
        "POINTS-ONLY",
        "RESTORE POINTS",
        "EXPIRES",
    ];
    let formatted = Formatted::of(doc);
    // The rows are made twice, for the widths and then for the text, rather than
    // kept: 10,000 rows of cells were 2 MB to fill and free, the owned cells few.
    let rows = || {
        std::iter::once(HEAD.map(Cow::Borrowed))
            .chain(doc.clusters.iter().map(|c| formatted.cells(c)))
    };
    // Cells are ASCII but for names and dates in other scripts: count those by char.
    let width = |cell: &str| match cell.is_ascii() {
        true => cell.len(),
        false => cell.chars().count(),
    };
    let mut widths = [0usize; 9];
    for r in rows() {
        for (w, cell) in widths.iter_mut().zip(&r) {
            *w = (*w).max(width(cell));
        }
    }
    let pad = |out: &mut String, mut n: usize| {
        const SPACES: &str = "                                ";
        while n > 0 {
            let k = n.min(SPACES.len());
            out.push_str(&SPACES[..k]);
            n -= k;
        }
    };
    // One string for the whole table, cells padded by hand: a store with 10,000
    // clusters prints in a few milliseconds.
    let line: usize = widths.iter().map(|w| w + 2).sum();
    let mut out = String::with_capacity((doc.clusters.len() + 4) * line);
    for r in rows() {
        let start = out.len();
        for (i, cell) in r.iter().enumerate() {
            let n = widths[i] - width(cell);
            let right = (3..7).contains(&i);
            if right {
                pad(&mut out, n);
            }
            out.push_str(cell);
            if !right {
                pad(&mut out, n);
            }
            out.push_str("  ");
        }
        let kept = out[start..].trim_end().len();
        out.truncate(start + kept);
        out.push('\n');
    }
    out.push_str(&format!(
        "store: capacity {}, used {}, free {}\n",
        human(doc.capacity),
        human(doc.used),
        human(doc.free)
    ));
    match (&doc.space_as_of, doc.space_current) {
        (None, _) => out.push_str(
            "space per cluster: being measured (it is shown as 0 until then; ask again)\n",
        ),
        (Some(_), true) => {}
        (Some(t), false) => {
            let secs = unix_secs(t).unwrap_or(0);
            out.push_str(&format!(
                "space per cluster: as of {} (commit {}); later changes are measured in the background\n",
                local_time(secs),
                doc.space_generation.unwrap_or(0)
            ));
        }
    }
    for m in &doc.mounts {
        match &m.cluster {
            None => out.push_str(&format!("mounted at {} (the whole store)\n", m.mountpoint)),
            Some(c) => out.push_str(&format!("mounted at {} (cluster {c})\n", m.mountpoint)),
        }
    }
    out
}

/// Reads the status document back; says whether the text is not JSON at all or
/// JSON of another shape.
pub fn parse_status(text: &str) -> Result<StatusDoc, String> {
    StatusDoc::from_json(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => format!("the status document is malformed: {e}"),
        _ => format!("the status document is not JSON: {e}"),
    })
}

/// [`parse_status`], borrowing the document's strings from `text` (for the table:
/// 10,000 clusters are 20,000 names not copied). It takes and refuses the texts
/// [`parse_status`] does; a refusal says what [`parse_status`] says.
fn parse_view(text: &str) -> Result<StatusView<'_>, String> {
    StatusView::from_json(text).map_err(|e| match parse_status(text) {
        Err(why) => why,
        Ok(_) => format!("the status document is malformed: {e}"),
    })
}

pub fn run(mountpoint: &Path, as_json: bool) -> CliResult {
    init_logger("warn");
    let mnt = absolute(mountpoint)?;
    let doc = read_status(&mnt)?;
    let text = if as_json {
        doc
    } else {
        status_table(&parse_view(&doc)?)
    };
    print_out(&text)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_show_protection_restore_windows_and_expiry() {
        let doc = r#"{"store": "/s", "pid": 42, "page_size": 4096,
            "capacity": 1048576, "used": 8192, "free": 1040384,
            "clusters": [{"name": "a", "id": 1, "parent": null, "created": 1700000000,
                          "logical": 0, "shared": 0, "unique": 0, "protected": true,
                          "retention_secs": 60, "restore_points": 3,
                          "earliest_restorable": "2023-11-14T22:13:21.5Z",
                          "expires_at": "2023-11-15T00:00:00Z"},
                         {"name": "b", "id": 2, "parent": "a", "created": 1700000001,
                          "logical": 0, "shared": 0, "unique": 0, "retention_secs": 60,
                          "expires_at": "soon"},
                         {"name": "c", "id": 3, "parent": "a", "created": 1700000001,
                          "logical": 0, "shared": 0, "unique": 0, "retention_secs": 60,
                          "restore_points": 1, "earliest_restorable": "x"}]}"#;
        let table = status_table(&parse_view(doc).unwrap());
        let rows: Vec<Vec<&str>> = table
            .lines()
            .map(|l| {
                l.split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .collect();
        let since = format!("3 since {}", local_time(1_700_000_001));
        let expires = local_time(1_700_006_400);
        assert_eq!(rows[1][0], "a (protected)", "{table}");
        assert_eq!(rows[1][7..], [since.as_str(), &expires], "{table}");
        assert_eq!(rows[2][7..], ["none yet", "soon"], "{table}");
        let epoch = format!("1 since {}", local_time(0));
        assert_eq!(rows[3][7..], [epoch.as_str(), "-"], "{table}");
    }

    #[test]
    fn json_reads_the_status_document() {
        let doc = r#"{"store": "/s \"q\"", "pid": 42, "page_size": 4096,
            "capacity": 1048576, "used": 8192, "free": 1040384,
            "clusters": [{"name": "prod", "id": 1, "parent": null, "created": 1700000000,
                          "logical": 67108864, "shared": 0, "unique": 67108864},
                         {"name": "test", "id": 2, "parent": "prod", "created": 1700000001,
                          "logical": 67108864, "shared": 67108864, "unique": 4096}]}"#;
        let v = parse_status(doc).unwrap();
        assert_eq!(v.pid, 42);
        assert_eq!(v.store, "/s \"q\"");
        let table = status_table(&v.view());
        assert_eq!(table, status_table(&parse_view(doc).unwrap()));
        assert!(table.starts_with("NAME"), "{table}");
        assert!(table.contains("prod"), "{table}");
        assert!(table.contains("64.0M"), "{table}");
        assert!(table.contains("4.0K"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("store: capacity 1.0M, used 8.0K, free")),
            "{table}"
        );
        assert!(table.contains("being measured"), "{table}");
        let mut measured = v.clone();
        measured.space_generation = Some(7);
        measured.space_as_of = Some("2026-12-01T02:00:00Z".into());
        assert!(status_table(&measured.view()).contains("(commit 7)"));
        measured.space_current = true;
        assert!(!status_table(&measured.view()).contains("space per cluster"));
        assert!(parse_status("{\"a\": }").unwrap_err().contains("not JSON"));
        assert!(parse_status("[1, 2] x").is_err());
        assert!(parse_status("{\"pid\": 1}")
            .unwrap_err()
            .contains("malformed"));
        let escaped = doc.replace("\"prod\"", "\"\\u00e9\"");
        assert_eq!(parse_status(&escaped).unwrap().clusters[0].name, "é");
        assert_eq!(parse_view(&escaped).unwrap().clusters[0].name, "é");
        for bad in ["{\"a\": }", "[1, 2] x", "{\"pid\": 1}", "[]", "null"] {
            assert_eq!(parse_view(bad).unwrap_err(), parse_status(bad).unwrap_err());
        }
    }
}
