//! The catalog: one record per cluster, in a record tree indexed by cluster id.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 1 | 1 = in use |
//! | 1  | 1 | name length |
//! | 2  | 1 | parent name length (0 = not a clone) |
//! | 3  | 1 | inode table height |
//! | 8  | 8 | cluster id |
//! | 16 | 8 | inode table root page |
//! | 24 | 8 | next inode number |
//! | 32 | 8 | orphans (inodes unlinked while open) |
//! | 40 | 8 | created (ns since the Unix epoch) |
//! | 48 | 64 | name |
//! | 112 | 64 | parent name |

use super::node::{Child, NodeKind, Tree};
use crate::error::{Error, Result};
use crate::store::PageNo;

pub const RECORD_BYTES: usize = 176;

/// A cluster as the catalog records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
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
        b[0] = 1;
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

    pub fn decode(b: &[u8], page: PageNo) -> Result<Option<Record>> {
        if b[0] == 0 {
            return Ok(None);
        }
        let bad = |why: &str| Error::Corrupt {
            page: page.0,
            why: format!("catalog record: {why}"),
        };
        let (nl, pl) = (b[1] as usize, b[2] as usize);
        if b[0] != 1 || nl == 0 || nl > 63 || pl > 63 {
            return Err(bad("bad header"));
        }
        let name = std::str::from_utf8(&b[48..48 + nl]).map_err(|_| bad("name is not UTF-8"))?;
        let parent =
            std::str::from_utf8(&b[112..112 + pl]).map_err(|_| bad("parent is not UTF-8"))?;
        Ok(Some(Record {
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
        }))
    }
}

/// The page a catalog record references: its cluster's inode table.
pub fn record_children(b: &[u8]) -> Vec<Child> {
    if b[0] == 0 {
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
        assert_eq!(Record::decode(&r.encode(), PageNo(3)).unwrap(), Some(r));
    }
}
