//! Directories: an array of fixed-size slots in a record tree, and an index in memory.
//!
//! A slot is 272 bytes: inode number (8), kind (1), name length (1), name (up to 255).
//! A zero inode number marks a free slot. Creating or removing a name writes one
//! slot, so a directory of 10^5 entries is never rewritten whole. The index (name ->
//! slot, slot -> entry) is built from the slots the first time a directory is used
//! and lives as long as the cluster's in-memory state; readdir offsets are slot
//! numbers, so they stay valid while entries come and go.

use super::inode::{Ino, Kind};
use std::collections::{BTreeMap, BTreeSet, HashMap};

pub const DIRENT_BYTES: usize = 272;
pub const NAME_MAX: usize = 255;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dirent {
    pub ino: Ino,
    pub kind: Kind,
    pub name: Vec<u8>,
}

impl Dirent {
    pub fn encode(&self) -> [u8; DIRENT_BYTES] {
        let mut b = [0u8; DIRENT_BYTES];
        b[0..8].copy_from_slice(&self.ino.0.to_le_bytes());
        b[8] = self.kind.code();
        b[9] = self.name.len() as u8;
        b[10..10 + self.name.len()].copy_from_slice(&self.name);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Option<Dirent>, String> {
        let ino = u64::from_le_bytes(b[0..8].try_into().unwrap());
        if ino == 0 {
            return Ok(None);
        }
        let kind = Kind::from_code(b[8])
            .ok_or_else(|| format!("directory slot with unknown kind {}", b[8]))?;
        let len = b[9] as usize;
        if len == 0 {
            return Err("directory slot with an empty name".into());
        }
        Ok(Some(Dirent {
            ino: Ino(ino),
            kind,
            name: b[10..10 + len].to_vec(),
        }))
    }
}

/// The in-memory index of one directory.
#[derive(Default, Debug)]
pub struct DirIndex {
    by_name: HashMap<Vec<u8>, u64>,
    by_slot: BTreeMap<u64, Dirent>,
    free: BTreeSet<u64>,
    /// Slots ever used: the directory's size in slots.
    pub high: u64,
}

impl DirIndex {
    pub fn load(slots: impl Iterator<Item = (u64, Option<Dirent>)>, high: u64) -> DirIndex {
        let mut d = DirIndex {
            high,
            ..Default::default()
        };
        let mut seen = BTreeSet::new();
        for (slot, e) in slots {
            seen.insert(slot);
            match e {
                Some(e) => {
                    d.by_name.insert(e.name.clone(), slot);
                    d.by_slot.insert(slot, e);
                }
                None => {
                    d.free.insert(slot);
                }
            }
        }
        d
    }

    pub fn get(&self, name: &[u8]) -> Option<(u64, &Dirent)> {
        let slot = *self.by_name.get(name)?;
        Some((slot, &self.by_slot[&slot]))
    }

    pub fn len(&self) -> usize {
        self.by_slot.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_slot.is_empty()
    }

    /// The slot a new entry goes into (lowest free, else a fresh one).
    pub fn free_slot(&self) -> u64 {
        self.free.first().copied().unwrap_or(self.high)
    }

    pub fn insert(&mut self, slot: u64, e: Dirent) {
        self.free.remove(&slot);
        self.high = self.high.max(slot + 1);
        self.by_name.insert(e.name.clone(), slot);
        self.by_slot.insert(slot, e);
    }

    pub fn remove(&mut self, slot: u64) -> Option<Dirent> {
        let e = self.by_slot.remove(&slot)?;
        self.by_name.remove(&e.name);
        self.free.insert(slot);
        Some(e)
    }

    /// Entries from slot `from` on.
    pub fn from_slot(&self, from: u64) -> impl Iterator<Item = (u64, &Dirent)> {
        self.by_slot.range(from..).map(|(s, e)| (*s, e))
    }
}
