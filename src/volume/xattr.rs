//! Extended attributes: a small tree of pages per inode holding every name and
//! value, rewritten whole on change (values are at most 64 KiB, names 255 bytes).

use super::inode::{self, Ino, Inode};
use super::node::NodeKind;
use super::{ClusterId, Volume, XattrMode};
use crate::error::{Error, Result};

const XATTR_NAME_MAX: usize = 255;
const XATTR_SIZE_MAX: usize = 65536;

impl Volume {
    fn xattr_list(&self, i: &Inode) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let raw = self.read_bytes(i.xattrs, 0, i.xattr_len as usize)?;
        let mut out = Vec::new();
        let mut p = 0;
        while p + 5 <= raw.len() {
            let nl = raw[p] as usize;
            let vl = u32::from_le_bytes(raw[p + 1..p + 5].try_into().unwrap()) as usize;
            p += 5;
            if p + nl + vl > raw.len() {
                return Err(Error::Corrupt {
                    page: i.xattrs.root.0,
                    why: "xattr list overruns its length".into(),
                });
            }
            out.push((raw[p..p + nl].to_vec(), raw[p + nl..p + nl + vl].to_vec()));
            p += nl + vl;
        }
        Ok(out)
    }

    pub fn getxattr(&self, c: ClusterId, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.read_op(c, |_, st| {
            let i = self.load(st, ino)?;
            self.xattr_list(&i)?
                .into_iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v)
                .ok_or(Error::NoData)
        })
    }

    /// Attribute names, each followed by a NUL, as listxattr(2) returns them.
    pub fn listxattr(&self, c: ClusterId, ino: Ino) -> Result<Vec<u8>> {
        self.read_op(c, |_, st| {
            let i = self.load(st, ino)?;
            let mut out = Vec::new();
            for (n, _) in self.xattr_list(&i)? {
                out.extend_from_slice(&n);
                out.push(0);
            }
            Ok(out)
        })
    }

    pub fn setxattr(
        &self,
        c: ClusterId,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
    ) -> Result<()> {
        if name.is_empty() || name.len() > XATTR_NAME_MAX || value.len() > XATTR_SIZE_MAX {
            return Err(Error::XattrTooBig);
        }
        self.change_xattrs(c, ino, true, |list| {
            let pos = list.iter().position(|(n, _)| n == name);
            match (pos, mode) {
                (Some(_), XattrMode::Create) => {
                    return Err(Error::AlreadyExists(String::from_utf8_lossy(name).into()))
                }
                (None, XattrMode::Replace) => return Err(Error::NoData),
                (Some(p), _) => list[p].1 = value.to_vec(),
                (None, _) => list.push((name.to_vec(), value.to_vec())),
            }
            Ok(())
        })
    }

    pub fn removexattr(&self, c: ClusterId, ino: Ino, name: &[u8]) -> Result<()> {
        self.change_xattrs(c, ino, false, |list| {
            let p = list
                .iter()
                .position(|(n, _)| n == name)
                .ok_or(Error::NoData)?;
            list.remove(p);
            Ok(())
        })
    }

    fn change_xattrs(
        &self,
        c: ClusterId,
        ino: Ino,
        room: bool,
        f: impl Fn(&mut Vec<(Vec<u8>, Vec<u8>)>) -> Result<()>,
    ) -> Result<()> {
        self.op(c, room, |op| {
            let i = op.inode(ino)?;
            let mut list = self.xattr_list(i)?;
            f(&mut list)?;
            let mut raw = Vec::new();
            for (n, v) in &list {
                raw.push(n.len() as u8);
                raw.extend_from_slice(&(v.len() as u32).to_le_bytes());
                raw.extend_from_slice(n);
                raw.extend_from_slice(v);
            }
            let mut scratch = 0;
            if raw.is_empty() {
                self.eng.drop_tree(&mut i.xattrs);
            } else if self
                .write_bytes(&mut i.xattrs, &mut scratch, 0, &raw, true)?
                .0
                < raw.len()
            {
                return Err(Error::NoSpace);
            }
            let ps = self.eng.ps as u64;
            if !raw.is_empty() {
                self.eng.unmap_range(
                    &mut i.xattrs,
                    NodeKind::RadixData,
                    (raw.len() as u64).div_ceil(ps),
                    u64::MAX,
                    true,
                )?;
            }
            i.xattr_len = raw.len() as u64;
            i.ctime = inode::now_ns();
            Ok(())
        })
    }
}
