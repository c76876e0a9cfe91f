//! The catalog: a record tree indexed by slot id, whose slots hold clusters, their
//! restore points and their settings. A cluster's slot id is its cluster id (never
//! reused); restore points and settings take slots of their own, which are reused.
//!
//! Clusters (kind 1) and restore points (kind 2):
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 1 | kind: 1 = cluster, 2 = restore point (0 = free slot) |
//! | 1  | 1 | name length (a restore point: its cluster's name) |
//! | 2  | 1 | parent name length (0 = not a clone) |
//! | 3  | 1 | inode table height |
//! | 8  | 8 | cluster id |
//! | 16 | 8 | inode table root page |
//! | 24 | 8 | next inode number |
//! | 32 | 8 | orphans (inodes unlinked while open) |
//! | 40 | 8 | created (a restore point: its time), ns since the Unix epoch |
//! | 48 | 64 | name |
//! | 112 | 64 | parent name (a restore point: none) |
//!
//! Settings (kind 3), one slot for each cluster whose settings differ from the
//! store's, and one with an empty name for the store's own:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 1 | 3 |
//! | 1  | 1 | name length (0: the store's defaults) |
//! | 4  | 1 | flags: bit 0 = protected |
//! | 8  | 8 | slot id |
//! | 16 | 8 | expires at, ns since the Unix epoch (0 = never) |
//! | 24 | 8 | retention of restore points in seconds (`u64::MAX`: the store's) |
//! | 48 | 64 | name |

use super::node::{Child, NodeKind, Tree};
use crate::error::{Error, Result};
use crate::store::PageNo;

pub const RECORD_BYTES: usize = 176;

/// What a cluster or restore point record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Cluster = 1,
    /// A committed image of cluster `name` at time `created`.
    Point = 2,
}
const SETTINGS: u8 = 3;

/// A cluster or a restore point as the catalog records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    pub id: u64,
    pub name: String,
    pub parent: Option<String>,
    pub created: i64,
    pub itable: Tree,
    pub next_ino: u64,
    pub orphans: u64,
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

impl Record {
    pub fn encode(&self) -> [u8; RECORD_BYTES] {
        let mut b = [0u8; RECORD_BYTES];
        b[0] = self.kind as u8;
        b[1] = self.name.len() as u8;
        b[3] = self.itable.height;
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b[16..24].copy_from_slice(&self.itable.root.0.to_le_bytes());
        b[24..32].copy_from_slice(&self.next_ino.to_le_bytes());
        b[32..40].copy_from_slice(&self.orphans.to_le_bytes());
        b[40..48].copy_from_slice(&self.created.to_le_bytes());
        b[48..48 + self.name.len()].copy_from_slice(self.name.as_bytes());
        if let Some(p) = &self.parent {
            b[2] = p.len() as u8;
            b[112..112 + p.len()].copy_from_slice(p.as_bytes());
        }
        b
    }

    fn decode(b: &[u8], page: PageNo) -> Result<Record> {
        let bad = |why: &str| bad_record(page, why);
        let kind = match b[0] {
            1 => RecordKind::Cluster,
            2 => RecordKind::Point,
            _ => return Err(bad("bad kind")),
        };
        let (nl, pl) = (b[1] as usize, b[2] as usize);
        if nl == 0 || nl > 63 || pl > 63 {
            return Err(bad("bad header"));
        }
        let name = std::str::from_utf8(&b[48..48 + nl]).map_err(|_| bad("name is not UTF-8"))?;
        let parent =
            std::str::from_utf8(&b[112..112 + pl]).map_err(|_| bad("parent is not UTF-8"))?;
        Ok(Record {
            kind,
            id: u64_at(b, 8),
            name: name.to_string(),
            parent: (pl > 0).then(|| parent.to_string()),
            created: u64_at(b, 40) as i64,
            itable: Tree {
                root: PageNo(u64_at(b, 16)),
                height: b[3],
            },
            next_ino: u64_at(b, 24),
            orphans: u64_at(b, 32),
        })
    }
}

/// A cluster's settings, or the store's defaults (`name` empty).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub id: u64,
    pub name: String,
    pub protected: bool,
    /// ns since the Unix epoch.
    pub expires_at: Option<i64>,
    /// How long restore points are kept, in seconds (0: none are); None: the store's.
    pub retention: Option<u64>,
}

impl Settings {
    pub fn encode(&self) -> [u8; RECORD_BYTES] {
        let mut b = [0u8; RECORD_BYTES];
        b[0] = SETTINGS;
        b[1] = self.name.len() as u8;
        b[4] = self.protected as u8;
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b[16..24].copy_from_slice(&self.expires_at.unwrap_or(0).to_le_bytes());
        b[24..32].copy_from_slice(&self.retention.unwrap_or(u64::MAX).to_le_bytes());
        b[48..48 + self.name.len()].copy_from_slice(self.name.as_bytes());
        b
    }

    fn decode(b: &[u8], page: PageNo) -> Result<Settings> {
        let nl = b[1] as usize;
        if nl > 63 || b[4] > 1 {
            return Err(bad_record(page, "bad settings header"));
        }
        let name = std::str::from_utf8(&b[48..48 + nl])
            .map_err(|_| bad_record(page, "name is not UTF-8"))?;
        let expires = u64_at(b, 16) as i64;
        let retention = u64_at(b, 24);
        Ok(Settings {
            id: u64_at(b, 8),
            name: name.to_string(),
            protected: b[4] == 1,
            expires_at: (expires != 0).then_some(expires),
            retention: (retention != u64::MAX).then_some(retention),
        })
    }

    /// Settings that say nothing the store's defaults do not: no slot needed.
    pub fn is_default(&self) -> bool {
        !self.protected && self.expires_at.is_none() && self.retention.is_none()
    }
}

/// What one catalog slot holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slot {
    Record(Record),
    Settings(Settings),
}

impl Slot {
    pub fn id(&self) -> u64 {
        match self {
            Slot::Record(r) => r.id,
            Slot::Settings(s) => s.id,
        }
    }
}

/// Decodes one slot (None: a free one).
pub fn decode(b: &[u8], page: PageNo) -> Result<Option<Slot>> {
    match b[0] {
        0 => Ok(None),
        SETTINGS => Settings::decode(b, page).map(|s| Some(Slot::Settings(s))),
        _ => Record::decode(b, page).map(|r| Some(Slot::Record(r))),
    }
}

fn bad_record(page: PageNo, why: &str) -> Error {
    Error::Corrupt {
        page: page.0,
        why: format!("catalog record: {why}"),
    }
}

/// The page a catalog record references: a cluster's or restore point's inode table.
pub fn record_children(b: &[u8]) -> Vec<Child> {
    if b[0] != RecordKind::Cluster as u8 && b[0] != RecordKind::Point as u8 {
        return Vec::new();
    }
    vec![(PageNo(u64_at(b, 16)), Some(NodeKind::RadixInodes))]
}

/// Checks a cluster name against the DB-cluster identifier rules.
pub fn validate_name(name: &str) -> Result<()> {
    const RULE: &str = "a cluster name is 1-63 letters, digits or hyphens, starts with a letter, \
                        and has no trailing hyphen and no two hyphens in a row";
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        && name.as_bytes()[0].is_ascii_alphabetic()
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            name: name.escape_default().to_string(),
            rule: RULE,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_follow_the_identifier_rules() {
        for good in ["a", "prod", "db-1", "A1-b2-c3", &"x".repeat(63)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1db",
            "-a",
            "a-",
            "a--b",
            "a_b",
            "a.b",
            "a/b",
            "ü",
            &"x".repeat(64),
            ".clone",
        ] {
            let e = validate_name(bad).unwrap_err();
            assert!(e.to_string().contains("starts with a letter"), "{bad}: {e}");
        }
    }

    #[test]
    fn records_round_trip() {
        let r = Record {
            kind: RecordKind::Point,
            id: 7,
            name: "test".into(),
            parent: Some("prod".into()),
            created: 42,
            itable: Tree {
                root: PageNo(9),
                height: 2,
            },
            next_ino: 100,
            orphans: 1,
        };
        let b = r.encode();
        assert_eq!(decode(&b, PageNo(3)).unwrap(), Some(Slot::Record(r)));
        assert_eq!(
            record_children(&b),
            vec![(PageNo(9), Some(NodeKind::RadixInodes))]
        );
        let s = Settings {
            id: 8,
            name: "prod".into(),
            protected: true,
            expires_at: Some(-5),
            retention: Some(0),
        };
        let b = s.encode();
        assert_eq!(decode(&b, PageNo(3)).unwrap(), Some(Slot::Settings(s)));
        assert!(record_children(&b).is_empty());
        assert_eq!(decode(&[0; RECORD_BYTES], PageNo(3)).unwrap(), None);
    }
}
