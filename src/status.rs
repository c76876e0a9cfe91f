//! The status document: what a running daemon says about its store and clusters.
//!
//! It is defined once, here, as plain serde types, because three parties must agree
//! on it: the daemon writes it (read from `/.clonefs-status` at the mount root), the
//! command line reads it back (`clonefs status`, and `umount` for the daemon's pid),
//! and scripts read `clonefs status --json` as is. Field names and meanings are
//! therefore an interface: add fields, never rename or repurpose one.
//!
//! The daemon and `clonefs status` handle it as a [`StatusView`]: the same document
//! with its strings borrowed, held to [`StatusDoc`]'s JSON by the tests below (a
//! store of 10,000 clusters must show its status in under 50 ms).
//!
//! A document is a snapshot taken when the status file is opened; every size is in
//! bytes of store pages, and `created` is in seconds since the Unix epoch.

use crate::error::Result;
use crate::store::StoreSpace;
use crate::volume::{ClusterSpace, ClusterSummary, SpaceReport, Volume};
use serde::{Deserialize, Deserializer, Serialize};
use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The store a daemon serves, and its clusters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusDoc {
    /// The store file.
    pub store: String,
    /// The daemon's process id.
    pub pid: u32,
    pub page_size: u64,
    pub capacity: u64,
    pub used: u64,
    pub free: u64,
    /// The commit the clusters' space figures are of (None: not measured yet, and
    /// every figure 0). They come from a background walk, so reading them never
    /// holds a writer up; see `space_current`.
    #[serde(default)]
    pub space_generation: Option<u64>,
    /// When those figures were measured (RFC 3339).
    #[serde(default)]
    pub space_as_of: Option<String>,
    /// They are of the last commit and nothing changed since: the store's now.
    #[serde(default)]
    pub space_current: bool,
    pub clusters: Vec<ClusterStatus>,
    /// Where the daemon serves the store, oldest mount first.
    #[serde(default)]
    pub mounts: Vec<MountStatus>,
}

/// One mount of the store: the whole store, or one cluster at its root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountStatus {
    pub mountpoint: String,
    /// The cluster shown alone at the mount point; null: the whole store.
    pub cluster: Option<String>,
}

/// One cluster: its lineage and space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub name: String,
    pub id: u64,
    /// The cluster it was cloned from, if any (even if that one is gone).
    pub parent: Option<String>,
    /// Seconds since the Unix epoch (negative before it).
    pub created: i64,
    /// Pages its tree reaches.
    pub logical: u64,
    /// Of those, pages other clusters reach too.
    pub shared: u64,
    /// Pages only it reaches.
    pub unique: u64,
    /// Pages only its restore points reach: deleting it frees `unique + restore_only`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restore_only: u64,
    /// A protected cluster cannot be deleted or reset, nor can files in it be removed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub protected: bool,
    /// When the daemon deletes it (RFC 3339), unless protected by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// How long its restore points are kept, in seconds (0: none are taken).
    #[serde(default)]
    pub retention_secs: u64,
    /// How many restore points it has.
    #[serde(default)]
    pub restore_points: usize,
    /// Its earliest restorable time (RFC 3339); the latest is always now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earliest_restorable: Option<String>,
}

/// [`StatusDoc`] with its strings borrowed: from the catalog when the daemon writes
/// it, from the text when `clonefs status` reads it for its table (a document of
/// 10,000 clusters holds 20,000 names that need not be copied, allocated and freed).
/// Its JSON is [`StatusDoc`]'s byte for byte, and it takes exactly the texts
/// [`StatusDoc`] takes: the same fields in the same order, with the same defaults
/// (the tests below hold the two in step); only its error messages name other
/// types. A string with escapes in it is the one kind that is copied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView<'a> {
    #[serde(borrow)]
    pub store: Cow<'a, str>,
    pub pid: u32,
    pub page_size: u64,
    pub capacity: u64,
    pub used: u64,
    pub free: u64,
    #[serde(default)]
    pub space_generation: Option<u64>,
    #[serde(default, borrow, deserialize_with = "borrow_opt")]
    pub space_as_of: Option<Cow<'a, str>>,
    #[serde(default)]
    pub space_current: bool,
    #[serde(borrow)]
    pub clusters: Vec<ClusterView<'a>>,
    #[serde(default, borrow)]
    pub mounts: Vec<MountView<'a>>,
}

/// [`MountStatus`], borrowed (see [`StatusView`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountView<'a> {
    #[serde(borrow)]
    pub mountpoint: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "borrow_opt")]
    pub cluster: Option<Cow<'a, str>>,
}

/// [`ClusterStatus`], borrowed (see [`StatusView`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    pub id: u64,
    #[serde(default, borrow, deserialize_with = "borrow_opt")]
    pub parent: Option<Cow<'a, str>>,
    pub created: i64,
    pub logical: u64,
    pub shared: u64,
    pub unique: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restore_only: u64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub protected: bool,
    #[serde(
        default,
        borrow,
        deserialize_with = "borrow_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<Cow<'a, str>>,
    #[serde(default)]
    pub retention_secs: u64,
    #[serde(default)]
    pub restore_points: usize,
    #[serde(
        default,
        borrow,
        deserialize_with = "borrow_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub earliest_restorable: Option<Cow<'a, str>>,
}

/// An optional string, borrowed from the text where it has no escapes (serde
/// borrows a bare `Cow` but copies one inside an `Option`). Fields read with it are
/// `default`, so that a missing one is None as it is for [`StatusDoc`]'s options.
fn borrow_opt<'de: 'a, 'a, D>(d: D) -> std::result::Result<Option<Cow<'a, str>>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed>::deserialize(d)?.map(|b| b.0))
}

/// How long a reader of space figures waits for a walk of the latest commit when
/// walks are cheap; on a store whose walks are not (a large one), a reply comes
/// at once with the previous figures (see [`Volume::space_report`]).
pub const SPACE_WAIT: Duration = Duration::from_secs(2);

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A time as the documents give it: RFC 3339 in UTC, to the microsecond.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// What a status document states, taken from a volume at one moment; the document
/// is a view of it ([`StatusSnapshot::view`]). Taking it copies no name: 10,000
/// clusters are 10,000 shared references, and their entries borrow from them.
pub struct StatusSnapshot {
    store: String,
    pid: u32,
    space: StoreSpace,
    report: Option<SpaceReport>,
    clusters: Vec<ClusterSummary>,
    mounts: Vec<MountStatus>,
}

impl StatusSnapshot {
    /// The state of `vol`, served by this process. Its space figures are the latest
    /// of the volume's background walk ([`Volume::space_report`]): asking costs no
    /// walk and holds no writer up, whatever the store holds.
    pub fn take(vol: &Volume) -> Result<StatusSnapshot> {
        let space = vol.statfs();
        let report = vol.space_report(SPACE_WAIT);
        let clusters = vol.cluster_summaries();
        let mounts = vol
            .mount_points()
            .into_iter()
            .map(|m| MountStatus {
                mountpoint: m.point.display().to_string(),
                cluster: m
                    .cluster
                    .map(|c| vol.cluster_info(c).map_or_else(|_| "?".into(), |i| i.name)),
            })
            .collect();
        Ok(StatusSnapshot {
            store: vol.path().display().to_string(),
            pid: std::process::id(),
            space,
            report,
            clusters,
            mounts,
        })
    }

    /// The document.
    pub fn view(&self) -> StatusView<'_> {
        let report = self.report.as_ref();
        // Clusters and their figures are both sorted by name: a walk along the
        // figures finds each cluster's (or passes where it has none).
        let mut figures = report
            .map_or(&[][..], |r| &r.clusters[..])
            .iter()
            .peekable();
        let mut figures_of = |name: &str| {
            while figures.next_if(|s| s.name.as_str() < name).is_some() {}
            figures.next_if(|s| s.name == name)
        };
        StatusView {
            store: Cow::Borrowed(&self.store),
            pid: self.pid,
            page_size: self.space.page_size,
            capacity: self.space.capacity,
            used: self.space.used,
            free: self.space.free,
            space_generation: report.map(|r| r.generation),
            space_as_of: report.map(|r| Cow::Owned(rfc3339(r.as_of))),
            space_current: report.is_some_and(|r| r.current),
            clusters: self
                .clusters
                .iter()
                .map(|c| ClusterView::of(c, figures_of(c.name())))
                .collect(),
            mounts: self
                .mounts
                .iter()
                .map(|m| MountView {
                    mountpoint: Cow::Borrowed(&m.mountpoint),
                    cluster: m.cluster.as_deref().map(Cow::Borrowed),
                })
                .collect(),
        }
    }
}

impl<'a> ClusterView<'a> {
    /// A cluster's entry; `space` from [`Volume::space_report`] (None: not measured, zeros).
    pub fn of(cl: &'a ClusterSummary, space: Option<&ClusterSpace>) -> ClusterView<'a> {
        ClusterView {
            name: Cow::Borrowed(cl.name()),
            id: cl.id().0,
            parent: cl.parent().map(Cow::Borrowed),
            created: unix_secs(cl.created()),
            logical: space.map_or(0, |s| s.logical),
            shared: space.map_or(0, |s| s.shared),
            unique: space.map_or(0, |s| s.unique),
            restore_only: space.map_or(0, |s| s.restore_only),
            protected: cl.protected,
            expires_at: cl.expires_at.map(|t| Cow::Owned(rfc3339(t))),
            retention_secs: cl.retention.as_secs(),
            restore_points: cl.restore_points,
            earliest_restorable: cl.earliest_point.map(|t| Cow::Owned(rfc3339(t))),
        }
    }

    /// The entry with its strings its own.
    pub fn to_status(&self) -> ClusterStatus {
        let own = |s: &Option<Cow<str>>| s.as_deref().map(String::from);
        ClusterStatus {
            name: self.name.to_string(),
            id: self.id,
            parent: own(&self.parent),
            created: self.created,
            logical: self.logical,
            shared: self.shared,
            unique: self.unique,
            restore_only: self.restore_only,
            protected: self.protected,
            expires_at: own(&self.expires_at),
            retention_secs: self.retention_secs,
            restore_points: self.restore_points,
            earliest_restorable: own(&self.earliest_restorable),
        }
    }
}

impl StatusDoc {
    /// The document for `vol` (see [`StatusSnapshot::take`]), its strings its own.
    pub fn of(vol: &Volume) -> Result<StatusDoc> {
        Ok(StatusSnapshot::take(vol)?.view().to_doc())
    }

    /// Compact JSON ending in a newline, as the status file and `status --json` show
    /// it (10,000 clusters make 2 MB; pretty, 3.5 MB and half again the time to
    /// write and read). Fields at their default (false, 0, null) are left out of a
    /// cluster's entry; readers take the default (`jq '.clusters[].protected'`
    /// gives null, which is false).
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string(self).expect("a StatusDoc always serializes");
        s.push('\n');
        s
    }

    pub fn from_json(text: &str) -> serde_json::Result<StatusDoc> {
        serde_json::from_str(text)
    }

    /// The document, borrowed.
    pub fn view(&self) -> StatusView<'_> {
        StatusView {
            store: Cow::Borrowed(&self.store),
            pid: self.pid,
            page_size: self.page_size,
            capacity: self.capacity,
            used: self.used,
            free: self.free,
            space_generation: self.space_generation,
            space_as_of: self.space_as_of.as_deref().map(Cow::Borrowed),
            space_current: self.space_current,
            clusters: self.clusters.iter().map(ClusterStatus::view).collect(),
            mounts: self
                .mounts
                .iter()
                .map(|m| MountView {
                    mountpoint: Cow::Borrowed(&m.mountpoint),
                    cluster: m.cluster.as_deref().map(Cow::Borrowed),
                })
                .collect(),
        }
    }
}

impl ClusterStatus {
    /// The entry, borrowed.
    pub fn view(&self) -> ClusterView<'_> {
        ClusterView {
            name: Cow::Borrowed(&self.name),
            id: self.id,
            parent: self.parent.as_deref().map(Cow::Borrowed),
            created: self.created,
            logical: self.logical,
            shared: self.shared,
            unique: self.unique,
            restore_only: self.restore_only,
            protected: self.protected,
            expires_at: self.expires_at.as_deref().map(Cow::Borrowed),
            retention_secs: self.retention_secs,
            restore_points: self.restore_points,
            earliest_restorable: self.earliest_restorable.as_deref().map(Cow::Borrowed),
        }
    }
}

impl<'a> StatusView<'a> {
    /// As [`StatusDoc::to_json`].
    pub fn to_json(&self) -> String {
        let mut out = Vec::new();
        self.write_json(&mut out);
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }

    /// [`StatusView::to_json`], appended to `out` (a daemon writes a document of
    /// 10,000 clusters into a buffer the size of the last one, not one that doubles
    /// its way up to 2 MB).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(&mut *out, self).expect("a StatusView always serializes");
        out.push(b'\n');
    }

    /// The document with its strings its own.
    pub fn to_doc(&self) -> StatusDoc {
        StatusDoc {
            store: self.store.to_string(),
            pid: self.pid,
            page_size: self.page_size,
            capacity: self.capacity,
            used: self.used,
            free: self.free,
            space_generation: self.space_generation,
            space_as_of: self.space_as_of.as_deref().map(String::from),
            space_current: self.space_current,
            clusters: self.clusters.iter().map(ClusterView::to_status).collect(),
            mounts: self
                .mounts
                .iter()
                .map(|m| MountStatus {
                    mountpoint: m.mountpoint.to_string(),
                    cluster: m.cluster.as_deref().map(String::from),
                })
                .collect(),
        }
    }

    /// Reads a document, borrowing its strings from `text`.
    pub fn from_json(text: &'a str) -> serde_json::Result<StatusView<'a>> {
        serde_json::from_str(text)
    }
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{Ino, Kind, NewInode};

    #[test]
    fn status_lists_clusters_with_lineage() {
        let (vol, _dev) = Volume::in_memory(4096, 1024).unwrap();
        let who = NewInode::dir_of_this_process();
        vol.create_cluster("prod", who).unwrap();
        vol.clone_cluster("prod", "test").unwrap();
        let doc = StatusDoc::of(&vol).unwrap().to_json();
        assert!(doc.contains("\"name\":\"prod\""), "{doc}");
        assert!(doc.contains("\"parent\":null"), "{doc}");
        assert!(doc.contains("\"parent\":\"prod\""), "{doc}");
        assert!(
            doc.contains(&format!("\"pid\":{}", std::process::id())),
            "{doc}"
        );
        assert!(doc.ends_with("}\n"), "{doc}");
        assert_eq!(
            StatusDoc::from_json(&doc).unwrap(),
            StatusDoc::of(&vol).unwrap()
        );
    }

    #[test]
    fn each_cluster_has_its_own_figures_and_one_made_since_the_walk_has_zeros() {
        let (vol, _dev) = Volume::in_memory(4096, 1024).unwrap();
        let who = NewInode::dir_of_this_process();
        for (k, name) in ["b", "d", "f", "h"].into_iter().enumerate() {
            let c = vol.create_cluster(name, who).unwrap().id;
            let f = vol
                .mknod(c, Ino::ROOT, b"f", Kind::File, who, 0)
                .unwrap()
                .ino;
            vol.write(c, f, 0, &vec![1; 4096 * (1 + 3 * k)]).unwrap();
        }
        vol.delete_cluster("d").unwrap();
        vol.clone_cluster("f", "a").unwrap();
        vol.clone_cluster("f", "e").unwrap();
        vol.clone_cluster("f", "i").unwrap();
        let snapshot = StatusSnapshot::take(&vol).unwrap();
        let view = snapshot.view();
        // The figures the snapshot took: of the last commit, before the clones.
        let report = vol.space_report(Duration::ZERO).unwrap();
        assert_eq!(report.generation, view.space_generation.unwrap());
        let names: Vec<&str> = view.clusters.iter().map(|c| c.name.as_ref()).collect();
        assert_eq!(names, ["a", "b", "e", "f", "h", "i"]);
        for c in &view.clusters {
            let space = report.of_cluster(&c.name);
            assert_eq!(c.logical, space.map_or(0, |s| s.logical), "{}", c.name);
            assert_eq!(c.unique, space.map_or(0, |s| s.unique), "{}", c.name);
            assert_eq!(space.is_none(), ["a", "e", "i"].contains(&c.name.as_ref()));
        }
        let logical: Vec<u64> = view.clusters.iter().map(|c| c.logical).collect();
        assert!(
            logical[1] < logical[3] && logical[3] < logical[4],
            "{logical:?}"
        );
    }

    #[test]
    fn status_strings_are_escaped() {
        let mut doc = StatusDoc {
            store: "a\"b\\c".into(),
            pid: 1,
            page_size: 4096,
            capacity: 0,
            used: 0,
            free: 0,
            space_generation: None,
            space_as_of: None,
            space_current: false,
            clusters: vec![],
            mounts: vec![],
        };
        assert!(doc.to_json().contains(r#""store":"a\"b\\c""#));
        doc.store = "l1\nl2\t\u{1}".into();
        assert!(doc.to_json().contains(r#""store":"l1\nl2\t\u0001""#));
        doc.store = "é".into();
        assert!(doc.to_json().contains("\"store\":\"é\""));
        assert_eq!(StatusDoc::from_json(&doc.to_json()).unwrap(), doc);
    }

    /// Documents with every optional field both set and not, and strings that need
    /// escapes or are not ASCII.
    fn assorted_docs() -> Vec<StatusDoc> {
        let plain = ClusterStatus {
            name: "prod".into(),
            id: 1,
            parent: None,
            created: 1_700_000_000,
            logical: 8192,
            shared: 0,
            unique: 8192,
            restore_only: 0,
            protected: false,
            expires_at: None,
            retention_secs: 0,
            restore_points: 0,
            earliest_restorable: None,
        };
        let full = ClusterStatus {
            name: "q\"uote\\d\u{1}é".into(),
            id: u64::MAX,
            parent: Some("prod".into()),
            created: -5,
            restore_only: 4096,
            protected: true,
            expires_at: Some("2026-12-01T02:00:00.000001Z".into()),
            retention_secs: 604_800,
            restore_points: 3,
            earliest_restorable: Some("2026-11-30T02:00:00Z".into()),
            ..plain.clone()
        };
        let empty = StatusDoc {
            store: "/s".into(),
            pid: 7,
            page_size: 4096,
            capacity: 1 << 30,
            used: 8192,
            free: (1 << 30) - 8192,
            space_generation: None,
            space_as_of: None,
            space_current: false,
            clusters: vec![],
            mounts: vec![],
        };
        let busy = StatusDoc {
            store: "/a \"b\"/\tc é".into(),
            space_generation: Some(9),
            space_as_of: Some("2026-12-01T02:00:00Z".into()),
            space_current: true,
            clusters: vec![plain, full],
            mounts: vec![
                MountStatus {
                    mountpoint: "/m".into(),
                    cluster: None,
                },
                MountStatus {
                    mountpoint: "/m \"2\"".into(),
                    cluster: Some("prod".into()),
                },
            ],
            ..empty.clone()
        };
        vec![empty, busy]
    }

    #[test]
    fn a_view_writes_the_documents_json_byte_for_byte() {
        for doc in assorted_docs() {
            assert_eq!(doc.view().to_json(), doc.to_json());
            assert_eq!(
                serde_json::to_string_pretty(&doc.view()).unwrap(),
                serde_json::to_string_pretty(&doc).unwrap()
            );
        }
    }

    #[test]
    fn a_view_reads_what_the_document_reads_and_borrows_plain_strings() {
        let mut texts: Vec<String> = assorted_docs().iter().map(StatusDoc::to_json).collect();
        let full = texts[1].clone();
        // Fields left out or null, of another type, or twice.
        for (from, to) in [
            (r#""parent":null,"#, ""),
            (r#""parent":"prod","#, ""),
            (r#","cluster":null"#, ""),
            (r#","cluster":"prod""#, ""),
            (r#""space_as_of":"2026-12-01T02:00:00Z","#, ""),
            (
                r#""space_as_of":"2026-12-01T02:00:00Z","#,
                r#""space_as_of":null,"#,
            ),
            (
                r#""space_as_of":"2026-12-01T02:00:00Z","#,
                r#""space_as_of":3,"#,
            ),
            (r#","mounts":["#, r#","mounts":null,"x":["#),
            (r#""pid":7,"#, ""),
            (r#""pid":7,"#, r#""pid":-7,"#),
            (r#""pid":7,"#, r#""pid":7,"pid":8,"#),
            (r#""id":1,"#, ""),
            (r#""name":"prod","#, r#""name":null,"#),
            (r#""created":1700000000,"#, r#""created":1.5,"#),
            (r#""restore_points":3,"#, r#""restore_points":-1,"#),
            (r#""protected":true,"#, r#""protected":1,"#),
            (r#""store":"#, r#""extra":{"a":[1,"b"]},"store":"#),
        ] {
            assert!(full.contains(from), "{from}");
            texts.push(full.replacen(from, to, 1));
        }
        texts.extend(["{}", "[]", "null", "{\"a\": }", "", &full[..100]].map(String::from));
        for text in &texts {
            match (StatusDoc::from_json(text), StatusView::from_json(text)) {
                (Ok(doc), Ok(view)) => assert_eq!(doc.view(), view, "{text}"),
                (Err(_), Err(_)) => {}
                (a, b) => panic!("{text}: {a:?} / {b:?}"),
            }
        }
        let view = StatusView::from_json(&full).unwrap();
        assert!(matches!(view.clusters[0].name, Cow::Borrowed("prod")));
        assert!(matches!(
            view.clusters[1].parent,
            Some(Cow::Borrowed("prod"))
        ));
        assert!(matches!(
            view.mounts[1].cluster,
            Some(Cow::Borrowed("prod"))
        ));
        assert!(matches!(view.clusters[1].name, Cow::Owned(_)));
    }
}
