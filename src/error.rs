//! One error type for the whole crate, with one mapping to errno.
//!
//! Every layer returns [`Error`]; the FUSE adapter only calls [`Error::errno`].
//! The `Display` text is meant for a user: it says what went wrong and, where it
//! helps, what to do about it.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum Error {
    /// The store has no free page left (or the host file system refused to reserve one).
    NoSpace,
    NotFound,
    AlreadyExists(String),
    InvalidName {
        name: String,
        rule: &'static str,
    },
    NameTooLong,
    NotADirectory,
    IsADirectory,
    NotEmpty,
    /// A rename or link across clusters.
    CrossCluster,
    /// An operation the target does not allow (e.g. a regular file at the mount root).
    NotPermitted(&'static str),
    InvalidArgument(&'static str),
    NoData,
    TooBig,
    /// An extended attribute name or value over the kernel's limits.
    XattrTooBig,
    /// SEEK_DATA/SEEK_HOLE past the end of the file.
    NoSuchOffset,
    /// A mode or flag this file system does not implement.
    Unsupported(&'static str),
    /// A page failed its checksum or its structure makes no sense.
    Corrupt {
        page: u64,
        why: String,
    },
    /// The store file cannot be used: missing, not a store, a future version, truncated.
    BadStore {
        path: PathBuf,
        why: String,
    },
    /// Another process holds the store's lock.
    Locked {
        path: PathBuf,
        holder: String,
    },
    /// A protected cluster (named) refuses to be deleted, reset or to lose a name.
    Protected(String),
    /// The cluster is in use (files open, say): the message says by what.
    Busy(String),
    /// A time outside what the operation accepts: the message names the window.
    BadTime(String),
    /// An earlier I/O failure left the store in an unknown state; it refuses writes.
    PreviousIo,
    Io(std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn errno(&self) -> i32 {
        match self {
            Error::NoSpace => libc::ENOSPC,
            Error::NotFound => libc::ENOENT,
            Error::AlreadyExists(_) => libc::EEXIST,
            Error::InvalidName { .. } => libc::EINVAL,
            Error::NameTooLong => libc::ENAMETOOLONG,
            Error::NotADirectory => libc::ENOTDIR,
            Error::IsADirectory => libc::EISDIR,
            Error::NotEmpty => libc::ENOTEMPTY,
            Error::CrossCluster => libc::EXDEV,
            Error::NotPermitted(_) => libc::EPERM,
            Error::InvalidArgument(_) => libc::EINVAL,
            Error::NoData => libc::ENODATA,
            Error::TooBig => libc::EFBIG,
            Error::XattrTooBig => libc::E2BIG,
            Error::NoSuchOffset => libc::ENXIO,
            Error::Unsupported(_) => libc::EOPNOTSUPP,
            Error::Corrupt { .. } | Error::PreviousIo | Error::BadStore { .. } => libc::EIO,
            Error::Locked { .. } | Error::Busy(_) => libc::EBUSY,
            Error::Protected(_) => libc::EPERM,
            Error::BadTime(_) => libc::EINVAL,
            Error::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoSpace => write!(f, "no space left in the store"),
            Error::NotFound => write!(f, "no such file, directory or cluster"),
            Error::AlreadyExists(n) => write!(f, "'{n}' already exists"),
            Error::InvalidName { name, rule } => write!(f, "invalid name '{name}': {rule}"),
            Error::NameTooLong => write!(f, "name longer than 255 bytes"),
            Error::NotADirectory => write!(f, "not a directory"),
            Error::IsADirectory => write!(f, "is a directory"),
            Error::NotEmpty => write!(f, "directory not empty"),
            Error::CrossCluster => write!(f, "cannot move or link across clusters"),
            Error::NotPermitted(why) => write!(f, "operation not permitted: {why}"),
            Error::InvalidArgument(why) => write!(f, "invalid argument: {why}"),
            Error::NoData => write!(f, "no such attribute"),
            Error::TooBig => write!(f, "file too large"),
            Error::XattrTooBig => write!(f, "extended attribute name or value too large"),
            Error::NoSuchOffset => write!(f, "offset beyond the end of the file"),
            Error::Unsupported(what) => write!(f, "not supported: {what}"),
            Error::Corrupt { page, why } => write!(f, "corrupt page {page}: {why}"),
            Error::BadStore { path, why } => write!(f, "{}: {why}", path.display()),
            Error::Locked { path, holder } => {
                write!(f, "{}: store is in use by {holder}", path.display())
            }
            Error::Protected(name) => write!(
                f,
                "cluster '{name}' is protected: it cannot be deleted or reset, and no file \
                 in it can be removed; `clonefs unprotect --cluster {name} MOUNTPOINT` lifts that"
            ),
            Error::Busy(why) => write!(f, "busy: {why}"),
            Error::BadTime(why) => write!(f, "{why}"),
            Error::PreviousIo => write!(
                f,
                "an earlier I/O error left the store in an unknown state; remount it"
            ),
            Error::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            Error::NoSpace
        } else {
            Error::Io(e)
        }
    }
}
