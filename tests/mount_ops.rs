//! Conformance of a real mount with a local Linux file system: every operation the
//! kernel can send, driven through std::fs and libc. Where the two can be compared,
//! the same closure runs in a native directory (/var/tmp) and in a cluster, each
//! writing a transcript of results and errnos, and the transcripts must match; every
//! test also asserts the expected values itself, so a native quirk cannot hide a bug.

mod common;
mod rng;

use common::{run_ok, Mounted};
use std::ffi::{CString, OsStr};
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// ---- helpers ----------------------------------------------------------------------

const NOBODY: u32 = 65534;

fn errname(e: i32) -> String {
    let n = match e {
        0 => "ok",
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::E2BIG => "E2BIG",
        libc::EBUSY => "EBUSY",
        libc::ENOSYS => "ENOSYS",
        other => return format!("errno {other}"),
    };
    n.to_string()
}

fn last_errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

fn os_errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// A transcript of what a sequence of operations gave.
#[derive(Default)]
struct Log(Vec<String>);

impl Log {
    /// Records an io::Result as "ok" or its errno name; gives the value back.
    fn io<T>(&mut self, what: &str, r: io::Result<T>) -> Option<T> {
        match r {
            Ok(v) => {
                self.0.push(format!("{what}: ok"));
                Some(v)
            }
            Err(e) => {
                self.0.push(format!("{what}: {}", errname(os_errno(&e))));
                None
            }
        }
    }

    /// Records a libc return value (negative: errno); gives it back.
    fn sys(&mut self, what: &str, r: i64) -> i64 {
        let e = if r < 0 { last_errno() } else { 0 };
        self.0.push(format!("{what}: {}", errname(e)));
        r
    }

    /// Records a value.
    fn val(&mut self, what: &str, v: impl Debug) {
        self.0.push(format!("{what} = {v:?}"));
    }

    /// The errno a recorded step gave (its name), for the test's own assertions.
    fn get(&self, what: &str) -> &str {
        let key = format!("{what}: ");
        let key2 = format!("{what} = ");
        self.0
            .iter()
            .find_map(|l| l.strip_prefix(&key).or_else(|| l.strip_prefix(&key2)))
            .unwrap_or_else(|| panic!("no step {what:?} in {:#?}", self.0))
    }
}

/// A native directory to compare with: in /var/tmp (a local disk file system), or
/// in the temporary directory if that is missing.
fn native_dir() -> tempfile::TempDir {
    let base = if Path::new("/var/tmp").is_dir() {
        PathBuf::from("/var/tmp")
    } else {
        std::env::temp_dir()
    };
    let d = tempfile::Builder::new()
        .prefix("clonefs-native.")
        .tempdir_in(base)
        .unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// Runs `f` in a fresh native directory and in a fresh directory `name` of
/// cluster `c` on the mount; panics unless both transcripts are the same. Returns
/// the mount's transcript.
fn compare(m: &Mounted, c: &str, name: &str, f: impl Fn(&Path, &mut Log)) -> Log {
    let native = native_dir();
    let mut a = Log::default();
    f(native.path(), &mut a);
    let dir = m.path(c).join(name);
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let mut b = Log::default();
    f(&dir, &mut b);
    if a.0 != b.0 {
        let mut diff = String::new();
        for i in 0..a.0.len().max(b.0.len()) {
            let (x, y) = (
                a.0.get(i).map_or("-", String::as_str),
                b.0.get(i).map_or("-", String::as_str),
            );
            let mark = if x == y { "  " } else { "!!" };
            diff.push_str(&format!("{mark} native: {x}\n   clonefs: {y}\n"));
        }
        panic!("{name}: the mount differs from a local file system:\n{diff}");
    }
    b
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// A shared, writable mapping of the first `len` bytes of the file open as `fd`.
///
/// # Safety
/// The file stays at least `len` bytes long while the mapping is used, and the
/// caller unmaps it (`munmap`) before the descriptor closes.
unsafe fn map_shared<'a>(fd: i32, len: usize) -> &'a mut [u8] {
    let p = libc::mmap(
        std::ptr::null_mut(),
        len,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
        fd,
        0,
    );
    assert_ne!(p, libc::MAP_FAILED, "mmap: {}", io::Error::last_os_error());
    std::slice::from_raw_parts_mut(p as *mut u8, len)
}

/// A mount with cluster `c`; `None` (skipped) without FUSE or without root, which
/// these tests need to chown, to act as another user and to compare with a local
/// file system as root.
fn mount_with(opts: &[&str]) -> Option<Mounted> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: mount_ops needs root");
        return None;
    }
    let alone = opts.contains(&ALONE);
    let opts: Vec<&str> = opts.iter().copied().filter(|o| *o != ALONE).collect();
    let mut m = Mounted::with_options("1G", &opts)?;
    fs::create_dir(m.path("c")).unwrap();
    if alone {
        m.mount_alone("c");
    }
    Some(m)
}

/// Not a `clonefs mount` option: `mount_with` takes it to mount cluster `c` alone
/// (`clonefs mount STORE DIR --cluster c`) beside the store mount, and `m.path("c/..")`
/// then leads through that mount, so the same comparisons run on a mount whose root
/// is a cluster's (and with the store mount beside it, as it is used).
const ALONE: &str = "(cluster c mounted alone)";

/// (atime, mtime, ctime) in ns, of `p` itself (not following a symlink).
fn times(p: &Path) -> [i128; 3] {
    let md = fs::symlink_metadata(p).unwrap();
    let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
    [
        ns(md.atime(), md.atime_nsec()),
        ns(md.mtime(), md.mtime_nsec()),
        ns(md.ctime(), md.ctime_nsec()),
    ]
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

/// Long enough for a coarse (jiffy) file system clock to move on.
fn tick() {
    std::thread::sleep(Duration::from_millis(25));
}

/// Runs `op` and records, for each path, whether its mtime and ctime moved.
fn times_moved(log: &mut Log, what: &str, paths: &[&Path], op: impl FnOnce()) {
    let pairs: Vec<(&Path, &Path)> = paths.iter().map(|p| (*p, *p)).collect();
    times_moved_to(log, what, &pairs, op)
}

/// Like `times_moved`, for (path before, path after) pairs: the op may move them.
fn times_moved_to(log: &mut Log, what: &str, pairs: &[(&Path, &Path)], op: impl FnOnce()) {
    let before: Vec<[i128; 3]> = pairs.iter().map(|(p, _)| times(p)).collect();
    tick();
    op();
    for ((_, p), b) in pairs.iter().zip(before) {
        let a = times(p);
        let name = p.file_name().unwrap().to_string_lossy();
        log.val(
            &format!("{what}: {name} (mtime, ctime) moved"),
            (a[1] != b[1], a[2] != b[2]),
        );
    }
}

/// Every attribute of every entry under `d`, recursively, sorted by path.
fn snapshot(d: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![d.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                todo.push(p.clone());
            }
            out.push(format!(
                "{} mode {:o} {}:{} size {} nlink {} blocks {} rdev {} a {}.{} m {}.{} c {}.{}",
                p.strip_prefix(d).unwrap().display(),
                md.mode(),
                md.uid(),
                md.gid(),
                if md.is_dir() { 0 } else { md.len() },
                md.nlink(),
                md.blocks(),
                md.rdev(),
                md.atime(),
                md.atime_nsec(),
                md.mtime(),
                md.mtime_nsec(),
                md.ctime(),
                md.ctime_nsec()
            ));
        }
    }
    out.sort();
    out
}

/// What the kernel showed of `rel` (from its caches, much of it) is what the
/// volume stored: the same after an unmount and a mount.
fn remount_keeps(m: &mut Mounted, rel: &str) {
    let before = snapshot(&m.path(rel));
    assert!(!before.is_empty());
    m.umount();
    m.mount_again();
    let after = snapshot(&m.path(rel));
    for (a, b) in before.iter().zip(&after) {
        assert_eq!(a, b, "changed by a remount");
    }
    assert_eq!(before.len(), after.len());
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode()
}

fn utimens(p: &Path, at: libc::timespec, mt: libc::timespec) -> i64 {
    let ts = [at, mt];
    let c = cstr(p);
    // SAFETY: a valid NUL-terminated path and two timespecs.
    unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) as i64 }
}

fn ts(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> i64 {
    let (a, b) = (cstr(from), cstr(to));
    // SAFETY: two valid NUL-terminated paths.
    unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    }
}

fn setxattr(p: &Path, name: &str, v: &[u8], flags: i32) -> i64 {
    let (c, n) = (cstr(p), CString::new(name).unwrap());
    // SAFETY: valid strings and a value buffer of v.len() bytes.
    unsafe { libc::setxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), flags) as i64 }
}

/// getxattr with a buffer of `size` bytes: the value, or the errno.
fn getxattr(p: &Path, name: &str, size: usize) -> Result<Vec<u8>, String> {
    let (c, n) = (cstr(p), CString::new(name).unwrap());
    let mut buf = vec![0u8; size];
    // SAFETY: valid strings and a buffer of `size` bytes.
    let r = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), size) };
    if r < 0 {
        return Err(errname(last_errno()));
    }
    // A size-0 probe gives the value's length: a buffer that long.
    buf.resize(r as usize, 0);
    Ok(buf)
}

fn listxattr(p: &Path, size: usize) -> Result<Vec<String>, String> {
    let c = cstr(p);
    let mut buf = vec![0u8; size];
    // SAFETY: a valid path and a buffer of `size` bytes.
    let r = unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), size) };
    if r < 0 {
        return Err(errname(last_errno()));
    }
    if size == 0 {
        return Ok(vec![format!("size {r}")]);
    }
    let mut names: Vec<String> = buf[..r as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        // Only user.* names: a native file system may add security.* ones.
        .filter(|n| n.starts_with("user."))
        .collect();
    names.sort();
    Ok(names)
}

fn removexattr(p: &Path, name: &str) -> i64 {
    let (c, n) = (cstr(p), CString::new(name).unwrap());
    // SAFETY: valid NUL-terminated strings.
    unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) as i64 }
}

/// Runs `f` in a forked child as `uid`:`gid` with no supplementary groups; returns
/// what `f` returns (0 or an errno), or 200+ if the child could not become the user.
/// `f` runs after fork in a copy of a multithreaded process: it must only make
/// system calls on data prepared beforehand (no allocation, no locks).
fn as_user(uid: u32, gid: u32, f: impl FnOnce() -> i32) -> i32 {
    as_user_in(uid, gid, &[], f)
}

/// As [`as_user`], with supplementary groups `groups`.
fn as_user_in(uid: u32, gid: u32, groups: &[u32], f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child makes only async-signal-safe calls and leaves with _exit.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            let code = if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
                201
            } else if libc::setgid(gid) != 0 {
                202
            } else if libc::setuid(uid) != 0 {
                203
            } else {
                f()
            };
            libc::_exit(code);
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        libc::WEXITSTATUS(status)
    }
}

/// 0 for a successful libc call, else errno (in a forked child: no allocation).
fn rc(r: libc::c_int) -> i32 {
    if r < 0 {
        // SAFETY: errno of this thread.
        unsafe { *libc::__errno_location() }
    } else {
        0
    }
}

/// Opens `p` with `flags` (mode 0o666 when creating) and closes it: 0 or errno.
fn try_open(p: &CString, flags: i32) -> i32 {
    // SAFETY: a valid path; the descriptor is closed at once.
    unsafe {
        let fd = libc::open(p.as_ptr(), flags | libc::O_CLOEXEC, 0o666);
        if fd < 0 {
            return rc(fd);
        }
        libc::close(fd);
        0
    }
}

// ---- attributes and times -----------------------------------------------------------

fn setattr_matches_a_local_file_system_on(opts: &[&str]) {
    let Some(mut m) = mount_with(opts) else {
        return;
    };
    let log = compare(&m, "c", "setattr", |d, log| {
        let f = d.join("f");
        fs::write(&f, b"0123456789").unwrap();
        // chmod, with the special bits.
        for mo in [0o640, 0o4755, 0o2750, 0o1777, 0o000, 0o644] {
            log.io(
                &format!("chmod {mo:o}"),
                fs::set_permissions(&f, fs::Permissions::from_mode(mo)),
            );
            log.val(&format!("mode after chmod {mo:o}"), mode(&f) & 0o7777);
        }
        // chown: uid and gid, either alone; it clears set-user-id (and set-group-id
        // with group execute).
        fs::set_permissions(&f, fs::Permissions::from_mode(0o6755)).unwrap();
        log.io(
            "chown 1234:5678",
            std::os::unix::fs::chown(&f, Some(1234), Some(5678)),
        );
        let md = fs::metadata(&f).unwrap();
        log.val("owner after chown", (md.uid(), md.gid()));
        log.val("mode after chown", md.mode() & 0o7777);
        log.io("chgrp 42", std::os::unix::fs::chown(&f, None, Some(42)));
        let md = fs::metadata(&f).unwrap();
        log.val("owner after chgrp", (md.uid(), md.gid()));
        log.io("chown 0", std::os::unix::fs::chown(&f, Some(0), None));
        let md = fs::metadata(&f).unwrap();
        log.val("owner after chown 0", (md.uid(), md.gid()));
        // truncate: grow (zeros), shrink, grow again (the cut bytes stay zero).
        let g = OpenOptions::new().read(true).write(true).open(&f).unwrap();
        log.io("truncate to 100000", g.set_len(100_000));
        log.val("size", fs::metadata(&f).unwrap().len());
        let all = fs::read(&f).unwrap();
        log.val("head", String::from_utf8_lossy(&all[..10]));
        log.val("tail all zero", all[10..].iter().all(|b| *b == 0));
        g.write_all_at(&[b'x'; 9000], 0).unwrap();
        log.io("truncate to 3", g.set_len(3));
        log.val("content", String::from_utf8_lossy(&fs::read(&f).unwrap()));
        log.io("truncate to 8193", g.set_len(8193));
        let all = fs::read(&f).unwrap();
        log.val("size after regrow", all.len());
        log.val(
            "regrown bytes zero",
            all[..3] == *b"xxx" && all[3..].iter().all(|b| *b == 0),
        );
        log.io("truncate by path", fs::File::create(&f).map(|_| ()));
        log.val("size after O_TRUNC", fs::metadata(&f).unwrap().len());
        // utimensat: explicit times to the ns, UTIME_NOW, UTIME_OMIT.
        log.sys(
            "utimensat explicit",
            utimens(&f, ts(1_000_000_000, 123_456_789), ts(1_500_000_000, 5)),
        );
        let [a, mt, _] = times(&f);
        log.val("times", (a, mt));
        let c0 = times(&f)[2];
        tick();
        log.sys(
            "utimensat omit both",
            utimens(&f, ts(0, libc::UTIME_OMIT), ts(0, libc::UTIME_OMIT)),
        );
        log.val("ctime moved by omit-both", times(&f)[2] != c0);
        log.sys(
            "utimensat omit atime",
            utimens(&f, ts(0, libc::UTIME_OMIT), ts(2_000_000_000, 0)),
        );
        let [a, mt, c1] = times(&f);
        log.val("times after omit atime", (a, mt));
        log.val("ctime moved by utimensat", c1 != c0);
        log.sys(
            "utimensat omit mtime",
            utimens(&f, ts(1_100_000_000, 7), ts(0, libc::UTIME_OMIT)),
        );
        let [a, mt, _] = times(&f);
        log.val("times after omit mtime", (a, mt));
        let before = now_ns();
        tick();
        log.sys(
            "utimensat now",
            utimens(&f, ts(0, libc::UTIME_NOW), ts(0, libc::UTIME_NOW)),
        );
        let [a, mt, c] = times(&f);
        let after = now_ns() + 1_000_000;
        log.val(
            "UTIME_NOW times are now",
            (
                (before..after).contains(&a),
                (before..after).contains(&mt),
                (before..after).contains(&c),
            ),
        );
        // Times far in the future.
        log.sys(
            "utimensat 2200",
            utimens(&f, ts(7_258_118_400, 0), ts(7_258_118_400, 999_999_999)),
        );
        log.val("times 2200", times(&f)[..2].to_vec());
        // Times before the epoch survive.
        log.sys(
            "utimensat before 1970",
            utimens(&f, ts(-86400, 0), ts(-1, 0)),
        );
        let [a, mt, _] = times(&f);
        log.val("times before 1970", (a, mt));
    });
    remount_keeps(&mut m, "c/setattr");
    assert_eq!(log.get("mode after chmod 4755"), "2541"); // 0o4755
    assert_eq!(log.get("owner after chown"), "(1234, 5678)");
    assert_eq!(log.get("mode after chown"), "493"); // 0o755: S_ISUID and S_ISGID gone
    assert_eq!(log.get("size"), "100000");
    assert_eq!(log.get("regrown bytes zero"), "true");
    assert_eq!(log.get("content"), "\"xxx\"");
    assert_eq!(
        log.get("times"),
        "(1000000000123456789, 1500000000000000005)"
    );
    assert_eq!(log.get("ctime moved by utimensat"), "true");
    assert_eq!(
        log.get("times after omit atime"),
        "(1000000000123456789, 2000000000000000000)"
    );
    assert_eq!(
        log.get("times after omit mtime"),
        "(1100000000000000007, 2000000000000000000)"
    );
    assert_eq!(log.get("UTIME_NOW times are now"), "(true, true, true)");
    assert_eq!(
        log.get("times 2200"),
        "[7258118400000000000, 7258118400999999999]"
    );
    // Past 2262-04-11, the end of what the volume's records hold, times clamp to
    // it (they wrapped around to 1677-1970 before); ext4 goes on to 2446.
    let f = m.path("c/setattr/f");
    assert_eq!(
        utimens(&f, ts(10_000_000_000, 0), ts(-11_676_096_000, 0)),
        0
    );
    let writeback = opts.contains(&"--writeback-cache");
    // With the writeback cache the kernel owns a file's times and shows the ones
    // it was asked to set until it forgets the inode; the remount shows the clamp.
    if !writeback {
        assert_eq!(times(&f)[..2], [i64::MAX as i128, i64::MIN as i128]);
    }
    m.umount();
    m.mount_again();
    assert_eq!(times(&f)[..2], [i64::MAX as i128, i64::MIN as i128]);
    assert_eq!(
        log.get("times before 1970"),
        "(-86400000000000, -1000000000)"
    );
}

fn times_move_as_posix_says_on(opts: &[&str]) {
    let Some(mut m) = mount_with(opts) else {
        return;
    };
    let log = compare(&m, "c", "times", |d, log| {
        let dir = d.join("d");
        fs::create_dir(&dir).unwrap();
        let sub = d.join("sub");
        fs::create_dir(&sub).unwrap();
        let f = dir.join("f");
        times_moved(log, "create", &[&dir, &sub], || {
            fs::write(&f, b"").unwrap();
        });
        let [a, mt, c] = times(&f);
        log.val("new file's times equal", a == mt && mt == c);
        log.val("new dir's nlink", fs::metadata(&dir).unwrap().nlink());
        times_moved(log, "write", &[&f, &dir], || {
            let mut h = OpenOptions::new().write(true).open(&f).unwrap();
            h.write_all(b"hello").unwrap();
        });
        times_moved(log, "overwrite in place", &[&f], || {
            OpenOptions::new()
                .write(true)
                .open(&f)
                .unwrap()
                .write_all_at(b"J", 0)
                .unwrap();
        });
        times_moved(log, "truncate grow", &[&f], || {
            OpenOptions::new()
                .write(true)
                .open(&f)
                .unwrap()
                .set_len(50)
                .unwrap();
        });
        times_moved(log, "truncate shrink", &[&f], || {
            OpenOptions::new()
                .write(true)
                .open(&f)
                .unwrap()
                .set_len(2)
                .unwrap();
        });
        times_moved(log, "truncate to the same size", &[&f], || {
            OpenOptions::new()
                .write(true)
                .open(&f)
                .unwrap()
                .set_len(2)
                .unwrap();
        });
        times_moved(log, "write of 0 bytes", &[&f], || {
            let h = OpenOptions::new().write(true).open(&f).unwrap();
            // SAFETY: a zero-length write from a valid pointer.
            assert_eq!(
                unsafe { libc::write(h.as_raw_fd(), b"".as_ptr().cast(), 0) },
                0
            );
        });
        let e = dir.join("e");
        fs::write(&e, b"").unwrap();
        times_moved(log, "O_TRUNC of an empty file", &[&e], || {
            OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&e)
                .unwrap();
        });
        times_moved(log, "fallocate KEEP_SIZE", &[&e], || {
            let h = OpenOptions::new().write(true).open(&e).unwrap();
            // SAFETY: an open descriptor.
            let r = unsafe { libc::fallocate(h.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, 8192) };
            assert_eq!(r, 0);
        });
        times_moved(log, "fallocate growing", &[&e], || {
            let h = OpenOptions::new().write(true).open(&e).unwrap();
            // SAFETY: an open descriptor.
            assert_eq!(unsafe { libc::fallocate(h.as_raw_fd(), 0, 0, 16384) }, 0);
        });
        times_moved(log, "punch hole", &[&e], || {
            let h = OpenOptions::new().write(true).open(&e).unwrap();
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            // SAFETY: an open descriptor.
            assert_eq!(unsafe { libc::fallocate(h.as_raw_fd(), mode, 0, 4096) }, 0);
        });
        times_moved(log, "chmod", &[&f, &dir], || {
            fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        });
        times_moved(log, "chown", &[&f], || {
            std::os::unix::fs::chown(&f, Some(7), Some(7)).unwrap();
        });
        times_moved(log, "setxattr", &[&f], || {
            assert_eq!(setxattr(&f, "user.t", b"v", 0), 0);
        });
        let g = dir.join("g");
        times_moved(log, "link", &[&f, &dir], || {
            fs::hard_link(&f, &g).unwrap();
        });
        log.val("nlink after link", fs::metadata(&f).unwrap().nlink());
        times_moved(log, "unlink", &[&f, &dir], || {
            fs::remove_file(&g).unwrap();
        });
        log.val("nlink after unlink", fs::metadata(&f).unwrap().nlink());
        let h = dir.join("h");
        times_moved(log, "rename in dir", &[&dir, &sub], || {
            fs::rename(&f, &h).unwrap();
        });
        times_moved_to(log, "rename (the file)", &[(&h, &f)], || {
            fs::rename(&h, &f).unwrap();
        });
        let moved = sub.join("f");
        times_moved(log, "rename across dirs", &[&dir, &sub], || {
            fs::rename(&f, &moved).unwrap();
        });
        let x = dir.join("x");
        times_moved(log, "mkdir", &[&dir], || fs::create_dir(&x).unwrap());
        log.val("nlink after mkdir", fs::metadata(&dir).unwrap().nlink());
        let x2 = sub.join("x");
        times_moved_to(
            log,
            "move dir",
            &[(&dir, &dir), (&sub, &sub), (&x, &x2)],
            || {
                fs::rename(&x, &x2).unwrap();
            },
        );
        log.val(
            "nlinks after moving a dir",
            (
                fs::metadata(&dir).unwrap().nlink(),
                fs::metadata(&sub).unwrap().nlink(),
            ),
        );
        log.val(
            "moved dir's .. is its new parent",
            fs::metadata(sub.join("x/..")).unwrap().ino() == fs::metadata(&sub).unwrap().ino(),
        );
        times_moved(log, "rmdir", &[&sub], || {
            fs::remove_dir(sub.join("x")).unwrap()
        });
        log.val("nlink after rmdir", fs::metadata(&sub).unwrap().nlink());
        times_moved(log, "symlink", &[&dir], || {
            std::os::unix::fs::symlink("target", dir.join("l")).unwrap();
        });
        times_moved(log, "mknod fifo", &[&dir], || {
            let c = cstr(&dir.join("p"));
            // SAFETY: a valid path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        });
        times_moved(log, "unlink last link", &[&sub], || {
            fs::remove_file(&moved).unwrap();
        });
    });
    remount_keeps(&mut m, "c/times");
    let t = "(true, true)";
    let f = "(false, false)";
    assert_eq!(log.get("create: d (mtime, ctime) moved"), t);
    assert_eq!(log.get("create: sub (mtime, ctime) moved"), f);
    assert_eq!(log.get("new file's times equal"), "true");
    assert_eq!(log.get("write: f (mtime, ctime) moved"), t);
    assert_eq!(log.get("write: d (mtime, ctime) moved"), f);
    assert_eq!(log.get("overwrite in place: f (mtime, ctime) moved"), t);
    assert_eq!(log.get("truncate grow: f (mtime, ctime) moved"), t);
    assert_eq!(log.get("truncate shrink: f (mtime, ctime) moved"), t);
    assert_eq!(log.get("chmod: f (mtime, ctime) moved"), "(false, true)");
    assert_eq!(log.get("chmod: d (mtime, ctime) moved"), f);
    assert_eq!(log.get("chown: f (mtime, ctime) moved"), "(false, true)");
    assert_eq!(log.get("setxattr: f (mtime, ctime) moved"), "(false, true)");
    assert_eq!(log.get("link: f (mtime, ctime) moved"), "(false, true)");
    assert_eq!(log.get("link: d (mtime, ctime) moved"), t);
    assert_eq!(log.get("nlink after link"), "2");
    assert_eq!(log.get("unlink: f (mtime, ctime) moved"), "(false, true)");
    assert_eq!(log.get("unlink: d (mtime, ctime) moved"), t);
    assert_eq!(log.get("rename in dir: d (mtime, ctime) moved"), t);
    assert_eq!(log.get("rename across dirs: sub (mtime, ctime) moved"), t);
    assert_eq!(log.get("nlink after mkdir"), "3");
    assert_eq!(log.get("nlinks after moving a dir"), "(2, 3)");
    assert_eq!(log.get("moved dir's .. is its new parent"), "true");
    assert_eq!(log.get("nlink after rmdir"), "2");
}

// ---- files: open, read, write ---------------------------------------------------------

fn open_flags_and_io_match_a_local_file_system_on(opts: &[&str]) {
    let Some(m) = mount_with(opts) else { return };
    let log = compare(&m, "c", "io", |d, log| {
        let f = d.join("f");
        // O_CREAT|O_EXCL twice.
        log.io(
            "create_new",
            OpenOptions::new().write(true).create_new(true).open(&f),
        );
        log.io(
            "create_new again",
            OpenOptions::new().write(true).create_new(true).open(&f),
        );
        log.val("new file mode", mode(&f) & 0o7777);
        // Two O_APPEND handles: each write lands at the end at the time.
        let mut a = OpenOptions::new().append(true).open(&f).unwrap();
        let mut b = OpenOptions::new().append(true).open(&f).unwrap();
        a.write_all(b"A1.").unwrap();
        b.write_all(b"B1..").unwrap();
        a.write_all(b"A2").unwrap();
        // pwrite on O_APPEND appends too on Linux.
        b.write_all_at(b"B2", 0).unwrap();
        log.val("appended", String::from_utf8_lossy(&fs::read(&f).unwrap()));
        drop((a, b));
        // O_TRUNC.
        log.io(
            "open O_TRUNC",
            OpenOptions::new().write(true).truncate(true).open(&f),
        );
        log.val("size after O_TRUNC", fs::metadata(&f).unwrap().len());
        // A write past the end leaves a gap of zeros; reads at and past EOF.
        let h = OpenOptions::new().read(true).write(true).open(&f).unwrap();
        h.write_all_at(b"end", 10_000).unwrap();
        let mut buf = vec![7u8; 10_003];
        log.val("pread whole", h.read_at(&mut buf, 0).unwrap());
        log.val(
            "gap is zeros",
            buf[..10_000].iter().all(|b| *b == 0) && &buf[10_000..] == b"end",
        );
        log.val("pread at EOF", h.read_at(&mut buf, 10_003).unwrap());
        log.val("pread past EOF", h.read_at(&mut buf, 1 << 30).unwrap());
        // Handles without the access asked.
        let r = File::open(&f).unwrap();
        log.io("write on O_RDONLY", (&r).write(b"x"));
        let w = OpenOptions::new().write(true).open(&f).unwrap();
        log.io("read on O_WRONLY", (&w).read(&mut buf));
        // Directories.
        log.io("open dir O_WRONLY", OpenOptions::new().write(true).open(d));
        log.io("read a dir", fs::read(d));
        // flush (close), fsync, fdatasync, on files and directories.
        let fd = w.as_raw_fd();
        // SAFETY: fsync/fdatasync/dup/close on descriptors this closure owns.
        unsafe {
            log.sys("fsync", libc::fsync(fd) as i64);
            log.sys("fdatasync", libc::fdatasync(fd) as i64);
            let dup = libc::dup(fd);
            log.sys("close a dup (flush)", libc::close(dup) as i64);
            let dirfd = File::open(d).unwrap();
            log.sys("fsync a dir", libc::fsync(dirfd.as_raw_fd()) as i64);
        }
        log.io("sync_all", w.sync_all());
        drop((r, w, h));
        // An open file, unlinked: still a file to every call on the descriptor.
        let u = d.join("unlinked");
        let h = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&u)
            .unwrap();
        h.write_all_at(b"before", 0).unwrap();
        fs::remove_file(&u).unwrap();
        log.val("fstat nlink after unlink", h.metadata().unwrap().nlink());
        log.io("write after unlink", h.write_all_at(b" and after", 6));
        log.io("ftruncate after unlink", h.set_len(20));
        // SAFETY: an open descriptor.
        log.sys("fallocate after unlink", unsafe {
            libc::fallocate(h.as_raw_fd(), 0, 0, 8192) as i64
        });
        log.io("fsync after unlink", h.sync_all());
        log.io(
            "fchmod after unlink",
            h.set_permissions(fs::Permissions::from_mode(0o600)),
        );
        let md = h.metadata().unwrap();
        log.val(
            "fstat after unlink",
            (md.len(), md.mode() & 0o7777, md.nlink()),
        );
        let mut back = vec![0u8; 20];
        h.read_exact_at(&mut back, 0).unwrap();
        log.val(
            "read after unlink",
            String::from_utf8_lossy(&back).into_owned(),
        );
        log.val("name gone", u.exists());
        drop(h);
        // A directory removed while open lists nothing more.
        fs::create_dir(d.join("gone")).unwrap();
        let dfd = File::open(d.join("gone")).unwrap();
        fs::remove_dir(d.join("gone")).unwrap();
        log.val(
            "fstat of a removed dir",
            dfd.metadata().map(|m| m.nlink()).ok(),
        );
        let dd = cstr(&d.join("gone"));
        // SAFETY: a valid path.
        log.sys(
            "mkdir in the removed dir's place",
            unsafe { libc::mkdir(dd.as_ptr(), 0o755) } as i64,
        );
        drop(dfd);
        // O_NOFOLLOW on a symlink.
        std::os::unix::fs::symlink("f", d.join("l")).unwrap();
        log.io(
            "open symlink O_NOFOLLOW",
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(d.join("l")),
        );
        log.io(
            "open O_DIRECTORY on a file",
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY)
                .open(&f),
        );
        // A large write and read in one call, across many pages.
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        fs::write(d.join("big"), &big).unwrap();
        log.val("big round trip", fs::read(d.join("big")).unwrap() == big);
    });
    assert_eq!(log.get("create_new again"), "EEXIST");
    assert_eq!(log.get("appended"), "\"A1.B1..A2B2\"");
    assert_eq!(log.get("size after O_TRUNC"), "0");
    assert_eq!(log.get("gap is zeros"), "true");
    assert_eq!(log.get("write on O_RDONLY"), "EBADF");
    assert_eq!(log.get("read a dir"), "EISDIR");
    assert_eq!(log.get("fsync"), "ok");
    assert_eq!(log.get("fsync a dir"), "ok");
    assert_eq!(log.get("open symlink O_NOFOLLOW"), "ELOOP");
    assert_eq!(log.get("big round trip"), "true");
    assert_eq!(log.get("fstat after unlink"), "(8192, 384, 0)");
    assert_eq!(log.get("fstat of a removed dir"), "Some(0)");
    assert_eq!(
        log.get("read after unlink"),
        "\"before and after\\0\\0\\0\\0\""
    );
}

/// `len` bytes at a 4096-aligned address inside `v`.
fn aligned(v: &mut Vec<u8>, len: usize) -> &mut [u8] {
    v.resize(len + 4096, 0);
    let off = v.as_ptr().align_offset(4096);
    &mut v[off..off + len]
}

/// How many of the first `pages` pages of `f` (open for reading and writing) the
/// kernel has cached: mincore of a fresh mapping, since mapping a file reads nothing.
fn cached_pages(f: &File, pages: usize) -> usize {
    let len = pages * 4096;
    let mut vec = vec![0u8; pages];
    // SAFETY: a mapping of `len` bytes of an open file at least that long, only
    // passed to mincore and unmapped.
    unsafe {
        let p = map_shared(f.as_raw_fd(), len).as_mut_ptr().cast();
        assert_eq!(libc::mincore(p, len, vec.as_mut_ptr()), 0);
        libc::munmap(p, len);
    }
    vec.iter().filter(|&&b| b & 1 == 1).count()
}

#[test]
fn a_files_cached_pages_outlive_its_handles() {
    let Some(m) = mount_with(&[]) else { return };
    let p = m.path("c/f");
    fs::write(&p, vec![7u8; 16 * 4096]).unwrap();
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    assert_eq!(
        cached_pages(&f, 16),
        16,
        "an open dropped the pages the last handle's writes left cached"
    );
    drop(f);
    // Pages the kernel cannot vouch for are dropped all the same: the destination
    // of a copy_file_range, which the daemon writes.
    fs::write(m.path("c/g"), vec![9u8; 16 * 4096]).unwrap();
    let (src, dst) = (
        File::open(m.path("c/g")).unwrap(),
        OpenOptions::new().write(true).open(&p).unwrap(),
    );
    let (mut i, mut o) = (0i64, 4096i64);
    // SAFETY: open descriptors and valid offset pointers.
    let n =
        unsafe { libc::copy_file_range(src.as_raw_fd(), &mut i, dst.as_raw_fd(), &mut o, 8192, 0) };
    assert_eq!(n, 8192, "copy_file_range: {}", io::Error::last_os_error());
    drop(dst);
    let got = fs::read(&p).unwrap();
    assert!(
        got[..4096].iter().all(|&b| b == 7),
        "bytes before the copy changed"
    );
    assert!(
        got[4096..12288].iter().all(|&b| b == 9),
        "a reopened file shows stale pages where bytes were copied"
    );
    assert!(
        got[12288..].iter().all(|&b| b == 7),
        "bytes after the copy changed"
    );
}

#[test]
fn o_direct_reads_and_writes_aligned_buffers() {
    let Some(m) = mount_with(&[]) else { return };
    let log = compare(&m, "c", "direct", |d, log| {
        let f = d.join("f");
        fs::write(&f, vec![b'.'; 16384]).unwrap();
        let h = log.io(
            "open O_DIRECT",
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&f),
        );
        let Some(h) = h else { return };
        let mut wv = Vec::new();
        let w = aligned(&mut wv, 8192);
        for (i, b) in w.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        log.val(
            "direct pwrite",
            h.write_at(w, 4096).map_err(|e| os_errno(&e)),
        );
        let mut rv = Vec::new();
        let r = aligned(&mut rv, 16384);
        log.val("direct pread", h.read_at(r, 0).map_err(|e| os_errno(&e)));
        log.val(
            "direct read sees the write",
            r[..4096].iter().all(|b| *b == b'.')
                && r[4096..12288] == *w
                && r[12288..].iter().all(|b| *b == b'.'),
        );
        // A direct write past the end grows the file.
        log.val(
            "direct append",
            h.write_at(&w[..4096], 16384).map_err(|e| os_errno(&e)),
        );
        log.val("size", fs::metadata(&f).unwrap().len());
        // A buffered reader sees the direct writes.
        let all = fs::read(&f).unwrap();
        log.val(
            "buffered read sees them",
            all[4096..12288] == *w && all[16384..] == w[..4096],
        );
    });
    assert_eq!(log.get("open O_DIRECT"), "ok");
    assert_eq!(log.get("direct pwrite"), "Ok(8192)");
    assert_eq!(log.get("direct read sees the write"), "true");
    assert_eq!(log.get("size"), "20480");
    assert_eq!(log.get("buffered read sees them"), "true");
}

fn seek(fd: i32, off: i64, whence: i32) -> String {
    // SAFETY: lseek on an open descriptor.
    let r = unsafe { libc::lseek(fd, off, whence) };
    if r < 0 {
        errname(last_errno())
    } else {
        r.to_string()
    }
}

fn fallocate_and_sparse_seek_match_a_local_file_system_on(opts: &[&str]) {
    let Some(m) = mount_with(opts) else { return };
    const MB: i64 = 1 << 20;
    let log = compare(&m, "c", "falloc", |d, log| {
        let f = d.join("f");
        let h = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&f)
            .unwrap();
        let fd = h.as_raw_fd();
        let blocks = || fs::metadata(&f).unwrap().blocks();
        // SAFETY (every fallocate below): an open descriptor, valid ranges.
        log.sys("fallocate 0..64K", unsafe {
            libc::fallocate(fd, 0, 0, 65536) as i64
        });
        log.val("size after mode 0", fs::metadata(&f).unwrap().len());
        log.val("blocks after mode 0", blocks());
        log.val(
            "allocated bytes read zero",
            fs::read(&f).unwrap() == vec![0u8; 65536],
        );
        log.sys("fallocate KEEP_SIZE 64K..128K", unsafe {
            libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, 65536, 65536) as i64
        });
        log.val("size after KEEP_SIZE", fs::metadata(&f).unwrap().len());
        log.val("blocks after KEEP_SIZE", blocks());
        h.write_all_at(&[b'd'; 65536], 0).unwrap();
        log.sys("punch 8K..24K", unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                8192,
                16384,
            ) as i64
        });
        let all = fs::read(&f).unwrap();
        log.val("size after punch", all.len());
        log.val(
            "punched range reads zero, the rest stays",
            all[..8192].iter().all(|b| *b == b'd')
                && all[8192..24576].iter().all(|b| *b == 0)
                && all[24576..].iter().all(|b| *b == b'd'),
        );
        log.val("blocks after punch", blocks());
        log.sys("punch unaligned 100..5000", unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                100,
                4900,
            ) as i64
        });
        let all = fs::read(&f).unwrap();
        log.val(
            "unaligned punch zeros exactly its bytes",
            all[..100].iter().all(|b| *b == b'd')
                && all[100..5000].iter().all(|b| *b == 0)
                && all[5000..8192].iter().all(|b| *b == b'd'),
        );
        log.sys("punch without KEEP_SIZE", unsafe {
            libc::fallocate(fd, libc::FALLOC_FL_PUNCH_HOLE, 0, 4096) as i64
        });
        log.sys("fallocate length 0", unsafe {
            libc::fallocate(fd, 0, 0, 0) as i64
        });
        // ZERO_RANGE: inside (zeros, size kept), and past the end (grows, unless
        // KEEP_SIZE).
        h.write_all_at(&[b'z'; 8192], 0).unwrap();
        log.sys("ZERO_RANGE 1000..3000", unsafe {
            libc::fallocate(fd, libc::FALLOC_FL_ZERO_RANGE, 1000, 2000) as i64
        });
        let all = fs::read(&f).unwrap();
        log.val(
            "zeroed range",
            (
                all[..1000].iter().all(|b| *b == b'z'),
                all[1000..3000].iter().all(|b| *b == 0),
                all[3000..8192].iter().all(|b| *b == b'z'),
                all.len(),
            ),
        );
        log.sys("ZERO_RANGE past the end", unsafe {
            libc::fallocate(fd, libc::FALLOC_FL_ZERO_RANGE, 65536, 10000) as i64
        });
        log.val(
            "size after ZERO_RANGE past the end",
            fs::metadata(&f).unwrap().len(),
        );
        log.sys("ZERO_RANGE|KEEP_SIZE past the end", unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                200_000,
                10000,
            ) as i64
        });
        log.val(
            "size after ZERO_RANGE|KEEP_SIZE",
            fs::metadata(&f).unwrap().len(),
        );
        // SEEK_DATA / SEEK_HOLE on a sparse file: data at [0, 4K) and
        // [1M, 1M + 4K + 100), then a hole to the end at 3M.
        let s = d.join("sparse");
        let h = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&s)
            .unwrap();
        h.write_all_at(&[1u8; 4096], 0).unwrap();
        h.write_all_at(&[2u8; 4196], MB as u64).unwrap();
        h.set_len(3 * MB as u64).unwrap();
        let fd = h.as_raw_fd();
        for (what, off, whence) in [
            ("DATA 0", 0, libc::SEEK_DATA),
            ("HOLE 0", 0, libc::SEEK_HOLE),
            ("HOLE 100", 100, libc::SEEK_HOLE),
            ("DATA 4096", 4096, libc::SEEK_DATA),
            ("DATA 5000", 5000, libc::SEEK_DATA),
            ("HOLE 1M", MB, libc::SEEK_HOLE),
            ("DATA 1M+8K", MB + 8192, libc::SEEK_DATA),
            ("HOLE 2M", 2 * MB, libc::SEEK_HOLE),
            ("DATA 3M", 3 * MB, libc::SEEK_DATA),
            ("HOLE 3M", 3 * MB, libc::SEEK_HOLE),
            ("DATA -1", -1, libc::SEEK_DATA),
        ] {
            log.val(&format!("SEEK_{what}"), seek(fd, off, whence));
        }
        // And the holes read as zeros.
        let mut buf = vec![9u8; 8192];
        h.read_at(&mut buf, 2 * MB as u64).unwrap();
        log.val("hole reads zero", buf.iter().all(|b| *b == 0));
    });
    assert_eq!(log.get("size after mode 0"), "65536");
    assert_eq!(log.get("blocks after mode 0"), "128");
    assert_eq!(log.get("size after KEEP_SIZE"), "65536");
    assert_eq!(log.get("blocks after KEEP_SIZE"), "256");
    assert_eq!(log.get("punched range reads zero, the rest stays"), "true");
    assert_eq!(log.get("blocks after punch"), "224");
    assert_eq!(log.get("unaligned punch zeros exactly its bytes"), "true");
    assert_eq!(log.get("SEEK_DATA 4096"), "\"1048576\"");
    assert_eq!(log.get("SEEK_HOLE 0"), "\"4096\"");
    assert_eq!(log.get("SEEK_HOLE 1M"), "\"1056768\"");
    assert_eq!(log.get("SEEK_DATA 1M+8K"), "\"ENXIO\"");
    assert_eq!(log.get("SEEK_HOLE 3M"), "\"ENXIO\"");
    assert_eq!(log.get("hole reads zero"), "true");
    assert_eq!(log.get("zeroed range"), "(true, true, true, 65536)");
    assert_eq!(log.get("size after ZERO_RANGE past the end"), "75536");
    assert_eq!(log.get("size after ZERO_RANGE|KEEP_SIZE"), "75536");
    // COLLAPSE_RANGE and INSERT_RANGE differ: the kernel's FUSE client refuses
    // them (EOPNOTSUPP) before they reach the server, where ext4 does them.
    let h = OpenOptions::new()
        .write(true)
        .open(m.path("c/falloc/f"))
        .unwrap();
    for mode in [libc::FALLOC_FL_COLLAPSE_RANGE, libc::FALLOC_FL_INSERT_RANGE] {
        // SAFETY: an open descriptor.
        assert_eq!(unsafe { libc::fallocate(h.as_raw_fd(), mode, 0, 4096) }, -1);
        assert_eq!(last_errno(), libc::EOPNOTSUPP);
    }
    assert_eq!(fs::metadata(m.path("c/falloc/f")).unwrap().len(), 75536);
    // Preallocated, never written pages differ too: they are zero pages, so data
    // to SEEK_DATA/SEEK_HOLE (POSIX allows a hole to be reported as data); ext4
    // keeps them as unwritten extents and reports a hole.
    let h = File::create(m.path("c/falloc/prealloc")).unwrap();
    // SAFETY: an open descriptor.
    assert_eq!(unsafe { libc::fallocate(h.as_raw_fd(), 0, 0, 65536) }, 0);
    assert_eq!(seek(h.as_raw_fd(), 0, libc::SEEK_DATA), "0");
    assert_eq!(seek(h.as_raw_fd(), 0, libc::SEEK_HOLE), "65536");
}

/// fsx-style: the same random writes, truncates, punches, zero ranges,
/// preallocations and mapped writes on a native file and on one in the mount;
/// contents and sizes must agree at every read and at the end.
fn random_file_operations_match_a_local_file_system_on(opts: &[&str]) {
    let Some(m) = mount_with(opts) else { return };
    let native = native_dir();
    let paths = [native.path().join("fsx"), m.path("c/fsx")];
    let open = |p: &PathBuf| OpenOptions::new().read(true).write(true).open(p).unwrap();
    for p in &paths {
        File::create(p).unwrap();
    }
    let mut files: Vec<File> = paths.iter().map(open).collect();
    // Where copy_file_range copies from: the same bytes on both sides.
    let source_bytes: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 253) as u8 ^ 0x5a).collect();
    let sources: Vec<File> = [native.path().join("src"), m.path("c/src")]
        .iter()
        .map(|p| {
            fs::write(p, &source_bytes).unwrap();
            File::open(p).unwrap()
        })
        .collect();
    const MAX: u64 = 1 << 20;
    // CLONEFS_FSX_SEED and CLONEFS_FSX_STEPS explore further.
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let mut rng = rng::Rng::new(env("CLONEFS_FSX_SEED", 0x9e37_79b9_7f4a_7c15));
    let steps = env("CLONEFS_FSX_STEPS", 1500);
    let mut history: Vec<String> = Vec::new();
    for step in 0..steps {
        let size = files[0].metadata().unwrap().len();
        let off = rng.below(MAX);
        let span = if rng.below(4) == 0 { 200_000 } else { 9000 };
        let len = 1 + rng.below(span);
        let fill = (step % 251) as u8 + 1;
        let op = rng.below(10);
        let what = match op {
            0 | 1 => {
                let data = vec![fill; len as usize];
                for f in &files {
                    f.write_all_at(&data, off).unwrap();
                }
                format!("write {len} at {off}")
            }
            2 => {
                let to = rng.below(MAX);
                for f in &files {
                    f.set_len(to).unwrap();
                }
                format!("truncate to {to}")
            }
            3..=5 => {
                let mode = [
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    libc::FALLOC_FL_ZERO_RANGE,
                    if rng.below(2) == 0 {
                        0
                    } else {
                        libc::FALLOC_FL_KEEP_SIZE
                    },
                ][(op - 3) as usize];
                for f in &files {
                    // SAFETY: an open descriptor.
                    let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) };
                    assert_eq!(r, 0, "fallocate {mode:#x}: {}", io::Error::last_os_error());
                }
                format!("fallocate {mode:#x} {len} at {off}")
            }
            6 if size >= 8192 => {
                // A write through a shared mapping of the first pages, then msync.
                let mlen = (size.min(65536) / 4096 * 4096) as usize;
                let at = rng.below(mlen as u64 - 100) as usize;
                for f in &files {
                    // SAFETY: a shared mapping of mlen bytes of a file at least
                    // that long, written within bounds, synced and unmapped.
                    unsafe {
                        let map = map_shared(f.as_raw_fd(), mlen);
                        map[at..at + 100].fill(fill);
                        let p = map.as_mut_ptr().cast();
                        assert_eq!(libc::msync(p, mlen, libc::MS_SYNC), 0);
                        libc::munmap(p, mlen);
                    }
                }
                format!("mapped write of 100 at {at}")
            }
            7 => {
                let from = rng.below(MAX - len);
                for (f, src) in files.iter().zip(&sources) {
                    let (mut i, mut o) = (from as i64, off as i64);
                    let mut left = len as usize;
                    while left > 0 {
                        // SAFETY: open descriptors and valid offset pointers.
                        let n = unsafe {
                            libc::copy_file_range(
                                src.as_raw_fd(),
                                &mut i,
                                f.as_raw_fd(),
                                &mut o,
                                left,
                                0,
                            )
                        };
                        assert!(n > 0, "copy_file_range: {}", io::Error::last_os_error());
                        left -= n as usize;
                    }
                }
                format!("copy_file_range {len} from {from} to {off}")
            }
            8 => {
                // Close and open again: the page cache outlives the handles.
                files = paths.iter().map(open).collect();
                "reopen".to_string()
            }
            _ => {
                let mut a = vec![0u8; len as usize];
                let mut b = vec![0u8; len as usize];
                let na = files[0].read_at(&mut a, off).unwrap();
                let nb = files[1].read_at(&mut b, off).unwrap();
                assert_eq!(na, nb, "read {len} at {off} after {history:?}");
                assert!(
                    a[..na] == b[..nb],
                    "read {len} at {off} differs after {:?}",
                    &history[history.len().saturating_sub(10)..]
                );
                format!("read {len} at {off}")
            }
        };
        history.push(what);
        let (sa, sb) = (
            files[0].metadata().unwrap().len(),
            files[1].metadata().unwrap().len(),
        );
        assert_eq!(
            sa,
            sb,
            "size after {:?}",
            &history[history.len().saturating_sub(10)..]
        );
    }
    // The whole file, through fresh descriptors (and so the page cache) and
    // after the mount's caches are dropped by reading a clone.
    let a = fs::read(&paths[0]).unwrap();
    assert!(a == fs::read(&paths[1]).unwrap(), "final contents differ");
    fs::create_dir(m.path("c/.clone/fsx")).unwrap();
    assert!(
        a == fs::read(m.path("fsx/fsx")).unwrap(),
        "the clone differs"
    );
}

// ---- names -------------------------------------------------------------------------

fn directories_and_names_match_a_local_file_system_on(opts: &[&str]) {
    let Some(mut m) = mount_with(opts) else {
        return;
    };
    let log = compare(&m, "c", "names", |d, log| {
        let p = |s: &str| d.join(s);
        fs::write(p("file"), b"f").unwrap();
        fs::create_dir_all(p("full/inner")).unwrap();
        fs::create_dir(p("empty")).unwrap();
        // mkdir / rmdir / unlink refusals.
        log.io("mkdir existing", fs::create_dir(p("empty")));
        log.io("mkdir over a file", fs::create_dir(p("file")));
        log.io("mkdir under a file", fs::create_dir(p("file/x")));
        log.io("mkdir in missing", fs::create_dir(p("missing/x")));
        log.io("rmdir non-empty", fs::remove_dir(p("full")));
        log.io("rmdir a file", fs::remove_dir(p("file")));
        log.io("rmdir missing", fs::remove_dir(p("missing")));
        log.io("rmdir under a file", fs::remove_dir(p("file/x")));
        log.io("rmdir .", fs::remove_dir(p("empty/.")));
        log.io("unlink a dir", fs::remove_file(p("empty")));
        log.io("unlink missing", fs::remove_file(p("missing")));
        log.io("open under a file", File::open(p("file/x")));
        log.io("stat missing", fs::metadata(p("missing")));
        log.io("open missing", File::open(p("missing")));
        log.io(
            "chmod missing",
            fs::set_permissions(p("missing"), fs::Permissions::from_mode(0o600)),
        );
        log.io("readlink missing", fs::read_link(p("missing")));
        log.io("readlink a file", fs::read_link(p("file")));
        log.io("link from missing", fs::hard_link(p("missing"), p("x")));
        log.io("rename from missing", fs::rename(p("missing"), p("x")));
        // Name lengths.
        let long = "n".repeat(255);
        let too_long = "n".repeat(256);
        log.io("create 255-byte name", fs::write(p(&long), b""));
        log.io("stat 255-byte name", fs::metadata(p(&long)));
        log.io("create 256-byte name", fs::write(p(&too_long), b""));
        log.io("stat 256-byte name", fs::metadata(p(&too_long)));
        log.io("mkdir 256-byte name", fs::create_dir(p(&too_long)));
        log.io(
            "rename to 256-byte name",
            fs::rename(p(&long), p(&too_long)),
        );
        log.io(
            "link to 256-byte name",
            fs::hard_link(p("file"), p(&too_long)),
        );
        log.io(
            "symlink at 256-byte name",
            std::os::unix::fs::symlink("file", p(&too_long)),
        );
        // rename.
        fs::write(p("a"), b"old a").unwrap();
        fs::write(p("b"), b"old b").unwrap();
        let keep = File::open(p("b")).unwrap();
        log.io("rename file over file", fs::rename(p("a"), p("b")));
        log.val("b now", String::from_utf8_lossy(&fs::read(p("b")).unwrap()));
        log.val("a gone", !p("a").exists());
        let mut old = String::new();
        (&keep).read_to_string(&mut old).unwrap();
        log.val("replaced file still open reads", old);
        log.val("replaced file nlink", keep.metadata().unwrap().nlink());
        drop(keep);
        fs::create_dir(p("d1")).unwrap();
        fs::write(p("d1/inside"), b"i").unwrap();
        fs::create_dir(p("d2")).unwrap();
        log.io("rename dir over empty dir", fs::rename(p("d1"), p("d2")));
        log.val("d2/inside", fs::read(p("d2/inside")).ok());
        log.val("nlink of the parent", fs::metadata(d).unwrap().nlink());
        log.io(
            "rename dir over non-empty dir",
            fs::rename(p("d2"), p("full")),
        );
        log.io("rename file over dir", fs::rename(p("b"), p("empty")));
        log.io("rename dir over file", fs::rename(p("empty"), p("b")));
        log.io(
            "rename dir into itself",
            fs::rename(p("full"), p("full/inner/x")),
        );
        log.io(
            "rename dir onto its child",
            fs::rename(p("full"), p("full/inner")),
        );
        log.io("rename to itself", fs::rename(p("b"), p("b")));
        fs::hard_link(p("b"), p("b2")).unwrap();
        log.io("rename onto another link", fs::rename(p("b"), p("b2")));
        log.val("both links stay", (p("b").exists(), p("b2").exists()));
        log.sys(
            "RENAME_NOREPLACE onto existing",
            renameat2(&p("b"), &p("file"), libc::RENAME_NOREPLACE),
        );
        log.sys(
            "RENAME_NOREPLACE onto new",
            renameat2(&p("b2"), &p("b3"), libc::RENAME_NOREPLACE),
        );
        log.sys(
            "RENAME_EXCHANGE with missing",
            renameat2(&p("b"), &p("nothing"), libc::RENAME_EXCHANGE),
        );
        log.sys(
            "RENAME_EXCHANGE file and dir",
            renameat2(&p("b"), &p("full/inner"), libc::RENAME_EXCHANGE),
        );
        log.val(
            "after exchange",
            (
                p("b").is_dir(),
                fs::read(p("full/inner")).ok().map(|v| v.len()),
                fs::metadata(p("full")).unwrap().nlink(),
                fs::metadata(d).unwrap().nlink(),
            ),
        );
        log.val(
            "exchanged dir's ..",
            fs::metadata(p("b/..")).unwrap().ino() == fs::metadata(d).unwrap().ino(),
        );
        log.sys(
            "RENAME_EXCHANGE both flags",
            renameat2(
                &p("b"),
                &p("file"),
                libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE,
            ),
        );
        log.sys(
            "RENAME_EXCHANGE dir into its own child",
            renameat2(&p("full"), &p("full/inner"), libc::RENAME_EXCHANGE),
        );
        // Hard links.
        let h = p("h");
        fs::write(&h, b"h").unwrap();
        for i in 1..=3 {
            log.io(&format!("link {i}"), fs::hard_link(&h, p(&format!("h{i}"))));
        }
        log.val("nlink", fs::metadata(&h).unwrap().nlink());
        fs::remove_file(p("h2")).unwrap();
        log.val("nlink after unlink", fs::metadata(p("h3")).unwrap().nlink());
        log.val(
            "links share the inode",
            fs::metadata(&h).unwrap().ino() == fs::metadata(p("h3")).unwrap().ino(),
        );
        log.io("link onto existing", fs::hard_link(&h, p("file")));
        log.io("link a directory", fs::hard_link(p("full"), p("dirlink")));
        // Symlinks.
        log.io("symlink", std::os::unix::fs::symlink("h", p("s")));
        log.val("readlink", fs::read_link(p("s")).ok());
        log.val("read through", fs::read(p("s")).ok());
        log.val(
            "lstat type",
            fs::symlink_metadata(p("s"))
                .unwrap()
                .file_type()
                .is_symlink(),
        );
        log.val("symlink size", fs::symlink_metadata(p("s")).unwrap().len());
        log.io(
            "symlink existing name",
            std::os::unix::fs::symlink("x", p("s")),
        );
        std::os::unix::fs::symlink("loop2", p("loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", p("loop2")).unwrap();
        log.io("open a symlink loop", File::open(p("loop1")));
        log.io(
            "dangling symlink",
            std::os::unix::fs::symlink("nowhere", p("dang")),
        );
        log.io("open dangling", File::open(p("dang")));
        let long_target = "t/".repeat(2000);
        log.io(
            "symlink with a 4000-byte target",
            std::os::unix::fs::symlink(&long_target, p("longlink")),
        );
        log.val(
            "long target round trip",
            fs::read_link(p("longlink"))
                .ok()
                .map(|t| t.as_os_str().len()),
        );
        // Special files.
        let fifo = cstr(&p("fifo"));
        // SAFETY: a valid path.
        log.sys("mkfifo", unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }
            as i64);
        log.val("fifo type", fs::metadata(p("fifo")).unwrap().file_type());
        log.val("fifo mode", mode(&p("fifo")) & 0o7777);
        let dev = cstr(&p("null"));
        // SAFETY: a valid path.
        log.sys("mknod chr", unsafe {
            libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3))
        } as i64);
        log.val("chr rdev", fs::metadata(p("null")).unwrap().rdev());
        // Modes asked for at creation (the test's umask applies to both sides).
        for (name, mo) in [("m1777", 0o1777), ("m2755", 0o2755), ("m4755", 0o4755)] {
            let c = cstr(&p(name));
            // SAFETY: a valid path.
            log.sys(
                &format!("mkdir {mo:o}"),
                unsafe { libc::mkdir(c.as_ptr(), mo) } as i64,
            );
            log.val(&format!("mode of dir {mo:o}"), mode(&p(name)) & 0o7777);
            let f = cstr(&p(&format!("{name}f")));
            // SAFETY: a valid path; the descriptor is closed at once.
            let fd = unsafe { libc::open(f.as_ptr(), libc::O_CREAT | libc::O_WRONLY, mo) };
            log.sys(&format!("create {mo:o}"), fd as i64);
            // SAFETY: our descriptor.
            unsafe { libc::close(fd) };
            log.val(
                &format!("mode of file {mo:o}"),
                mode(&p(&format!("{name}f"))) & 0o7777,
            );
        }
        // Attributes of a symlink itself.
        let sl = cstr(&p("s"));
        let at = [ts(1_000_000, 1), ts(2_000_000, 2)];
        // SAFETY: a valid path and two timespecs.
        log.sys("utimensat a symlink (NOFOLLOW)", unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                sl.as_ptr(),
                at.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        } as i64);
        log.val("symlink times", times(&p("s"))[..2].to_vec());
        log.val(
            "target times untouched",
            times(&p("h"))[1] != 2_000_000_000_000_002,
        );
        log.io(
            "lchown a symlink",
            std::os::unix::fs::lchown(p("s"), Some(5), Some(6)),
        );
        let md = fs::symlink_metadata(p("s")).unwrap();
        log.val("symlink owner", (md.uid(), md.gid()));
        log.val("target owner", fs::metadata(p("h")).unwrap().uid());
        let reg = cstr(&p("regular"));
        // SAFETY: a valid path.
        log.sys(
            "mknod S_IFREG",
            unsafe { libc::mknod(reg.as_ptr(), libc::S_IFREG | 0o640, 0) } as i64,
        );
        log.val(
            "mknod S_IFREG is a file",
            fs::metadata(p("regular")).unwrap().is_file(),
        );
        // The final listing.
        let mut names: Vec<(String, bool)> = fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().chars().take(20).collect(),
                    e.file_type().unwrap().is_dir(),
                )
            })
            .collect();
        names.sort();
        log.val("listing", names);
    });
    remount_keeps(&mut m, "c/names");
    for (step, want) in [
        ("mkdir existing", "EEXIST"),
        ("mkdir under a file", "ENOTDIR"),
        ("rmdir non-empty", "ENOTEMPTY"),
        ("rmdir a file", "ENOTDIR"),
        ("unlink a dir", "EISDIR"),
        ("stat missing", "ENOENT"),
        ("create 255-byte name", "ok"),
        ("create 256-byte name", "ENAMETOOLONG"),
        ("stat 256-byte name", "ENAMETOOLONG"),
        ("rename file over file", "ok"),
        ("rename dir over empty dir", "ok"),
        ("rename dir over non-empty dir", "ENOTEMPTY"),
        ("rename file over dir", "EISDIR"),
        ("rename dir over file", "ENOTDIR"),
        ("rename dir into itself", "EINVAL"),
        ("RENAME_NOREPLACE onto existing", "EEXIST"),
        ("RENAME_EXCHANGE file and dir", "ok"),
        ("link a directory", "EPERM"),
        ("open a symlink loop", "ELOOP"),
        ("open dangling", "ENOENT"),
    ] {
        assert_eq!(log.get(step), want, "{step}");
    }
    assert_eq!(log.get("b now"), "\"old a\"");
    assert_eq!(log.get("replaced file still open reads"), "\"old b\"");
    assert_eq!(log.get("nlink"), "4");
    assert_eq!(log.get("after exchange"), "(true, Some(5), 2, 6)");
    assert_eq!(log.get("symlink owner"), "(5, 6)");
    assert_eq!(log.get("target owner"), "0");

    // Across clusters: EXDEV.
    fs::create_dir(m.path("other")).unwrap();
    fs::write(m.path("c/x"), b"x").unwrap();
    let e = fs::hard_link(m.path("c/x"), m.path("other/x")).unwrap_err();
    assert_eq!(os_errno(&e), libc::EXDEV);
    let e = fs::rename(m.path("c/x"), m.path("other/x")).unwrap_err();
    assert_eq!(os_errno(&e), libc::EXDEV);
    assert_eq!(
        renameat2(&m.path("c/x"), &m.path("other/y"), libc::RENAME_EXCHANGE),
        -1
    );
}

fn names_of_any_bytes_and_odd_opens_match_a_local_file_system_on(opts: &[&str]) {
    let Some(mut m) = mount_with(opts) else {
        return;
    };
    let log = compare(&m, "c", "bytes", |d, log| {
        let names: [&[u8]; 7] = [
            b"\xff\xfe latin-1 \xe9",
            b"new\nline",
            b" ",
            b"...",
            b"-rf",
            "ユニコード".as_bytes(),
            b".clone",
        ];
        for n in names {
            let p = d.join(OsStr::from_bytes(n));
            log.io(&format!("create {:?}", n), fs::write(&p, n));
            log.val(
                &format!("read {:?}", n),
                fs::read(&p).ok() == Some(n.to_vec()),
            );
        }
        let mut listed: Vec<Vec<u8>> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().as_bytes().to_vec())
            .collect();
        listed.sort();
        log.val("listing", listed);
        // A symlink target of any bytes, kept as given.
        let target = OsStr::from_bytes(b"../\x01odd\xff//x/");
        log.io(
            "symlink odd target",
            std::os::unix::fs::symlink(target, d.join("l")),
        );
        log.val(
            "readlink",
            fs::read_link(d.join("l")).ok().map(|t| t.into_os_string()),
        );
        // O_TRUNC with O_RDONLY truncates on Linux.
        fs::write(d.join("t"), b"data").unwrap();
        log.io(
            "O_RDONLY|O_TRUNC",
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_TRUNC)
                .open(d.join("t")),
        );
        log.val(
            "size after O_RDONLY|O_TRUNC",
            fs::metadata(d.join("t")).unwrap().len(),
        );
        // O_CREAT on an existing directory, O_EXCL on a dangling symlink.
        log.io(
            "O_CREAT on a directory",
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(d),
        );
        std::os::unix::fs::symlink("nowhere", d.join("dangling")).unwrap();
        log.io(
            "O_CREAT|O_EXCL on a dangling symlink",
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(d.join("dangling")),
        );
        log.io(
            "O_CREAT through a dangling symlink",
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(d.join("dangling")),
        );
        log.val("created its target", d.join("nowhere").is_file());
    });
    assert_eq!(log.get("create [46, 99, 108, 111, 110, 101]"), "ok");
    assert_eq!(log.get("size after O_RDONLY|O_TRUNC"), "0");
    assert_eq!(log.get("created its target"), "true");
    remount_keeps(&mut m, "c/bytes");
    // O_TMPFILE differs: fuser has no FUSE_TMPFILE, so the kernel answers
    // EOPNOTSUPP, the errno callers fall back on (a local file system makes an
    // unnamed file).
    let before = list(&m.path("c/bytes"));
    let e = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(m.path("c/bytes"))
        .unwrap_err();
    assert_eq!(os_errno(&e), libc::EOPNOTSUPP);
    assert_eq!(list(&m.path("c/bytes")), before);
}

#[test]
fn fifo_and_unix_socket_work_inside_the_mount() {
    let Some(m) = mount_with(&[]) else { return };
    let fifo = m.path("c/fifo");
    let c = cstr(&fifo);
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &fs::metadata(&fifo).unwrap().file_type()
    ));
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            File::open(&fifo).unwrap().read_to_end(&mut v).unwrap();
            v
        })
    };
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut w = OpenOptions::new().write(true).open(&fifo).unwrap();
            for i in 0..100u32 {
                w.write_all(&i.to_le_bytes().repeat(256)).unwrap();
            }
        })
    };
    writer.join().unwrap();
    let got = reader.join().unwrap();
    let want: Vec<u8> = (0..100u32)
        .flat_map(|i| i.to_le_bytes().repeat(256))
        .collect();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "bytes through the FIFO differ");
    // The FIFO stays a FIFO in a clone.
    fs::create_dir(m.path("c/.clone/k")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &fs::metadata(m.path("k/fifo")).unwrap().file_type()
    ));

    // A unix socket bound inside the mount.
    use std::os::unix::net::{UnixListener, UnixStream};
    let sock = m.path("c/sock");
    let l = UnixListener::bind(&sock).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_socket(
        &fs::metadata(&sock).unwrap().file_type()
    ));
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf.map(|b| b.to_ascii_uppercase())).unwrap();
    });
    let mut cl = UnixStream::connect(&sock).unwrap();
    cl.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    cl.read_exact(&mut back).unwrap();
    server.join().unwrap();
    assert_eq!(&back, b"HELLO");
    // Binding an existing name fails as anywhere.
    let e = UnixListener::bind(&sock).unwrap_err();
    assert_eq!(os_errno(&e), libc::EADDRINUSE);
    fs::remove_file(&sock).unwrap();
    assert!(!sock.exists());
}

fn concurrent_operations_in_one_directory_and_one_file_on(opts: &[&str]) {
    let Some(mut m) = mount_with(opts) else {
        return;
    };
    let d = m.path("c/par");
    fs::create_dir(&d).unwrap();
    let big = d.join("shared");
    const PART: usize = 256 * 1024;
    const THREADS: usize = 8;
    File::create(&big)
        .unwrap()
        .set_len((PART * THREADS) as u64)
        .unwrap();
    let hub = d.join("hub");
    fs::write(&hub, b"hub").unwrap();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (d, big, hub) = (&d, &big, &hub);
            s.spawn(move || {
                // Names: create, rename, unlink; every third kept.
                for i in 0..150 {
                    let a = d.join(format!("t{t}-{i}"));
                    fs::write(&a, format!("{t} {i}")).unwrap();
                    let b = d.join(format!("t{t}-{i}-renamed"));
                    fs::rename(&a, &b).unwrap();
                    if i % 3 != 0 {
                        fs::remove_file(&b).unwrap();
                    }
                    if i % 10 == 0 {
                        fs::create_dir(d.join(format!("dir{t}-{i}"))).unwrap();
                    }
                }
                // Hard links to one inode, from every thread at once.
                for i in 0..50 {
                    let l = d.join(format!("hub{t}-{i}"));
                    fs::hard_link(hub, &l).unwrap();
                    if i % 2 == 0 {
                        fs::remove_file(&l).unwrap();
                    }
                }
                // Disjoint ranges of one file, in odd-sized writes.
                let h = OpenOptions::new().write(true).open(big).unwrap();
                let data: Vec<u8> = (0..PART).map(|k| (k * 31 + t * 7) as u8).collect();
                for (k, chunk) in data.chunks(12_345).enumerate() {
                    h.write_all_at(chunk, (t * PART + k * 12_345) as u64)
                        .unwrap();
                }
            });
        }
        // A reader listing all along: never an error, never a duplicate.
        s.spawn(|| {
            for _ in 0..20 {
                let names = list(&d);
                let mut sorted = names.clone();
                sorted.sort();
                sorted.dedup();
                assert_eq!(sorted.len(), names.len(), "a name listed twice");
            }
        });
    });
    let names = list(&d);
    for t in 0..THREADS {
        for i in 0..150 {
            let kept = names.contains(&format!("t{t}-{i}-renamed"));
            assert_eq!(kept, i % 3 == 0, "t{t}-{i}");
            assert!(!names.contains(&format!("t{t}-{i}")));
        }
    }
    assert_eq!(fs::metadata(&hub).unwrap().nlink(), 1 + THREADS as u64 * 25);
    assert_eq!(fs::metadata(&d).unwrap().nlink(), 2 + THREADS as u64 * 15);
    let all = fs::read(&big).unwrap();
    for t in 0..THREADS {
        let want: Vec<u8> = (0..PART).map(|k| (k * 31 + t * 7) as u8).collect();
        assert!(all[t * PART..(t + 1) * PART] == want[..], "part {t}");
    }
    // The same after a remount, and the store checks clean.
    remount_keeps(&mut m, "c/par");
    m.umount();
    let out = common::run(&[common::BIN, "fsck", m.store_str()]);
    assert!(out.status.success(), "{out:?}");
}

// ---- readdir, statfs, xattrs -------------------------------------------------------

fn list(d: &Path) -> Vec<String> {
    fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn readdir_lists_every_entry_once_on(opts: &[&str]) {
    let Some(m) = mount_with(opts) else { return };
    let d = m.path("c/many");
    fs::create_dir(&d).unwrap();
    const N: usize = 3000;
    for i in 0..N {
        fs::write(d.join(format!("file-{i:05}")), b"").unwrap();
    }
    fs::create_dir(d.join("a-dir")).unwrap();
    let names = list(&d);
    assert_eq!(names.len(), N + 1);
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), N + 1, "an entry was listed twice");
    assert!(sorted
        .iter()
        .all(|n| n == "a-dir" || n.starts_with("file-")));
    // d_type without a stat.
    let dirs: Vec<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    assert_eq!(dirs, ["a-dir"]);
    // `ls -f` (getdents through libc, with . and ..) agrees.
    let out = run_ok(&["ls", "-f", common::s(&d)]);
    assert_eq!(out.lines().count(), N + 3);

    // Unlinking while listing: every entry not removed is listed exactly once,
    // whether the removed ones are or not.
    let mut seen: Vec<String> = Vec::new();
    let mut it = fs::read_dir(&d).unwrap();
    for e in it.by_ref().take(500) {
        seen.push(e.unwrap().file_name().into_string().unwrap());
    }
    let mut removed = std::collections::HashSet::new();
    for n in &seen {
        if n.starts_with("file-") {
            fs::remove_file(d.join(n)).unwrap();
            removed.insert(n.clone());
        }
    }
    for i in (0..N).step_by(3) {
        let n = format!("file-{i:05}");
        if !removed.contains(&n) {
            fs::remove_file(d.join(&n)).unwrap();
            removed.insert(n);
        }
    }
    for e in it {
        seen.push(e.unwrap().file_name().into_string().unwrap());
    }
    let mut counts = std::collections::HashMap::new();
    for n in &seen {
        *counts.entry(n.as_str()).or_insert(0) += 1;
    }
    assert!(
        counts.values().all(|c| *c == 1),
        "listed twice: {:?}",
        counts.iter().filter(|(_, c)| **c > 1).collect::<Vec<_>>()
    );
    let left = list(&d);
    assert_eq!(left.len(), N + 1 - removed.len());
    for n in &left {
        assert!(counts.contains_key(n.as_str()), "{n} never listed");
    }
    // Emptied, it lists nothing and rmdir works.
    for n in left {
        if n == "a-dir" {
            fs::remove_dir(d.join(n)).unwrap();
        } else {
            fs::remove_file(d.join(n)).unwrap();
        }
    }
    assert!(list(&d).is_empty());
    assert_eq!(fs::metadata(&d).unwrap().nlink(), 2);
    fs::remove_dir(&d).unwrap();
}

#[test]
fn statfs_reports_the_store() {
    let Some(m) = Mounted::with_size("512M") else {
        return;
    };
    fs::create_dir(m.path("c")).unwrap();
    let out = run_ok(&["df", "-B1", "--output=size,avail", m.mnt_str()]);
    let v: Vec<u64> = out
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    // The size given at mkfs, less the two superblock pages; what is available
    // holds back the reserve for metadata (1/32 of the store, at most 16 MiB).
    assert!(
        v[0] <= 512 << 20 && v[0] >= (512 << 20) - (64 << 10),
        "df size: {out}"
    );
    assert!(v[1] >= 480 << 20 && v[1] < v[0], "df avail: {out}");
    let out = run_ok(&["stat", "-f", "-c", "%l %S %T", m.mnt_str()]);
    assert_eq!(out.split_whitespace().next(), Some("255"), "{out}");
    // Writing 64 MiB takes it from the free space.
    fs::write(m.path("c/big"), vec![1u8; 64 << 20]).unwrap();
    let out = run_ok(&["df", "-B1", "--output=avail", m.mnt_str()]);
    let after: u64 = out.lines().nth(1).unwrap().trim().parse().unwrap();
    assert!(
        v[1] - after >= 63 << 20 && v[1] - after < 66 << 20,
        "avail went from {} to {after}",
        v[1]
    );
    // statvfs inside a cluster says the same.
    // SAFETY: a valid path and an out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = cstr(&m.path("c"));
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    assert_eq!(st.f_blocks * st.f_frsize, v[0]);
    assert_eq!(st.f_namemax, 255);
}

fn xattrs_match_a_local_file_system_on(opts: &[&str]) {
    let Some(m) = mount_with(opts) else { return };
    let log = compare(&m, "c", "xattr", |d, log| {
        let f = d.join("f");
        fs::write(&f, b"").unwrap();
        log.val("get missing", getxattr(&f, "user.a", 64));
        log.val("list empty", listxattr(&f, 1024));
        log.sys("set", setxattr(&f, "user.a", b"one", 0));
        log.val("get", getxattr(&f, "user.a", 64));
        log.val("get size probe", getxattr(&f, "user.a", 0).map(|v| v.len()));
        log.val("get small buffer", getxattr(&f, "user.a", 2));
        log.sys(
            "XATTR_CREATE existing",
            setxattr(&f, "user.a", b"x", libc::XATTR_CREATE),
        );
        log.sys(
            "XATTR_REPLACE missing",
            setxattr(&f, "user.b", b"x", libc::XATTR_REPLACE),
        );
        log.sys(
            "XATTR_REPLACE existing",
            setxattr(&f, "user.a", b"two", libc::XATTR_REPLACE),
        );
        log.sys(
            "XATTR_CREATE new",
            setxattr(&f, "user.b", b"", libc::XATTR_CREATE),
        );
        log.val("get empty value", getxattr(&f, "user.b", 64));
        log.sys("set big value", setxattr(&f, "user.big", &[7u8; 3000], 0));
        log.val(
            "big value back",
            getxattr(&f, "user.big", 4096).map(|v| v == [7u8; 3000]),
        );
        log.val("list", listxattr(&f, 1024));
        log.val("list small buffer", listxattr(&f, 3));
        log.val("get a", getxattr(&f, "user.a", 64));
        log.sys("remove", removexattr(&f, "user.a"));
        log.sys("remove again", removexattr(&f, "user.a"));
        log.val("get removed", getxattr(&f, "user.a", 64));
        log.val("list after remove", listxattr(&f, 1024));
        log.sys("set on a directory", setxattr(d, "user.dir", b"d", 0));
        log.val("get on a directory", getxattr(d, "user.dir", 64));
        std::os::unix::fs::symlink("f", d.join("l")).unwrap();
        let l = cstr(&d.join("l"));
        let n = CString::new("user.l").unwrap();
        // SAFETY: valid strings and a 1-byte value.
        log.sys("lsetxattr user.* on a symlink", unsafe {
            libc::lsetxattr(l.as_ptr(), n.as_ptr(), b"v".as_ptr().cast(), 1, 0) as i64
        });
        log.sys(
            "set through a symlink",
            setxattr(&d.join("l"), "user.via", b"v", 0),
        );
        log.val("set through reached f", getxattr(&f, "user.via", 64));
        log.sys("empty name", setxattr(&f, "", b"v", 0));
        log.sys("unknown namespace", setxattr(&f, "bogus.x", b"v", 0));
        log.val("get unknown namespace", getxattr(&f, "bogus.x", 64));
        log.sys("remove unknown namespace", removexattr(&f, "bogus.x"));
        log.sys("prefix alone", setxattr(&f, "user.", b"v", 0));
        log.sys("trusted.* as root", setxattr(&f, "trusted.t", b"v", 0));
        log.val("get trusted.*", getxattr(&f, "trusted.t", 64));
        log.sys(
            "name of 256 bytes",
            setxattr(&f, &format!("user.{}", "n".repeat(251)), b"v", 0),
        );
        log.sys(
            "value over 64K",
            setxattr(&f, "user.huge", &vec![0u8; 65537], 0),
        );
        // A removed file's xattrs go with it; a new file starts with none.
        fs::remove_file(&f).unwrap();
        fs::write(&f, b"").unwrap();
        log.val("list of a new file", listxattr(&f, 1024));
    });
    assert_eq!(log.get("get missing"), "Err(\"ENODATA\")");
    assert_eq!(log.get("get"), "Ok([111, 110, 101])");
    assert_eq!(log.get("get size probe"), "Ok(3)");
    assert_eq!(log.get("get small buffer"), "Err(\"ERANGE\")");
    assert_eq!(log.get("XATTR_CREATE existing"), "EEXIST");
    assert_eq!(log.get("XATTR_REPLACE missing"), "ENODATA");
    assert_eq!(log.get("list small buffer"), "Err(\"ERANGE\")");
    assert_eq!(log.get("remove again"), "ENODATA");
    assert_eq!(
        log.get("list"),
        "Ok([\"user.a\", \"user.b\", \"user.big\"])"
    );
    assert_eq!(log.get("lsetxattr user.* on a symlink"), "EPERM");
    assert_eq!(log.get("unknown namespace"), "EOPNOTSUPP");
    assert_eq!(log.get("prefix alone"), "EINVAL");
    assert_eq!(log.get("get trusted.*"), "Ok([118])");
    // POSIX ACLs are not kept (the kernel would not enforce them): refused.
    let f = m.path("c/xattr/f");
    // Version 2; USER_OBJ rw-, GROUP_OBJ r--, OTHER r--.
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(1u16, 6u16), (4, 4), (0x20, 4)] {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    assert_eq!(setxattr(&f, "system.posix_acl_access", &acl, 0), -1);
    assert_eq!(last_errno(), libc::EOPNOTSUPP);
}

// ---- locks and mmap -----------------------------------------------------------------

/// Tries a write lock of bytes [0, 100) of `p` from a child process: 0 or errno,
/// and 100 + whether F_GETLK named `holder` as the owner of a conflicting lock.
fn child_locks(p: &CString, holder: u32) -> (i32, i32) {
    let try_lock = as_user(0, 0, || {
        // SAFETY: a valid path and a zeroed flock record.
        unsafe {
            let fd = libc::open(p.as_ptr(), libc::O_RDWR);
            if fd < 0 {
                return 150;
            }
            let mut fl: libc::flock = std::mem::zeroed();
            fl.l_type = libc::F_WRLCK as i16;
            fl.l_whence = libc::SEEK_SET as i16;
            fl.l_len = 100;
            rc(libc::fcntl(fd, libc::F_SETLK, &fl))
        }
    });
    let probe = as_user(0, 0, || {
        // SAFETY: as above.
        unsafe {
            let fd = libc::open(p.as_ptr(), libc::O_RDWR);
            if fd < 0 {
                return 150;
            }
            let mut fl: libc::flock = std::mem::zeroed();
            fl.l_type = libc::F_WRLCK as i16;
            fl.l_whence = libc::SEEK_SET as i16;
            fl.l_len = 100;
            if libc::fcntl(fd, libc::F_GETLK, &mut fl) < 0 {
                return 151;
            }
            if fl.l_type == libc::F_UNLCK as i16 {
                0
            } else {
                100 + (fl.l_pid as u32 == holder) as i32
            }
        }
    });
    (try_lock, probe)
}

#[test]
fn posix_and_flock_locks_conflict_as_on_a_local_file_system() {
    let Some(m) = mount_with(&[]) else { return };
    let log = compare(&m, "c", "locks", |d, log| {
        let f = d.join("f");
        fs::write(&f, vec![0u8; 200]).unwrap();
        let p = cstr(&f);
        let me = std::process::id();
        log.val("child, no lock held", child_locks(&p, me));
        let h = OpenOptions::new().read(true).write(true).open(&f).unwrap();
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as i16;
        fl.l_whence = libc::SEEK_SET as i16;
        fl.l_start = 50;
        fl.l_len = 10;
        // SAFETY: an open descriptor and a flock record.
        log.sys(
            "F_SETLK [50, 60)",
            unsafe { libc::fcntl(h.as_raw_fd(), libc::F_SETLK, &fl) } as i64,
        );
        log.val("child, lock held", child_locks(&p, me));
        fl.l_type = libc::F_UNLCK as i16;
        // SAFETY: as above.
        log.sys(
            "F_SETLK unlock",
            unsafe { libc::fcntl(h.as_raw_fd(), libc::F_SETLK, &fl) } as i64,
        );
        log.val("child, after unlock", child_locks(&p, me));
        // flock(2): two open file descriptions of the same file conflict.
        let a = File::open(&f).unwrap();
        let b = File::open(&f).unwrap();
        // SAFETY: flock on open descriptors.
        unsafe {
            log.sys(
                "flock EX a",
                libc::flock(a.as_raw_fd(), libc::LOCK_EX) as i64,
            );
            log.sys(
                "flock EX|NB b",
                libc::flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) as i64,
            );
            log.sys(
                "flock SH|NB b",
                libc::flock(b.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) as i64,
            );
            log.sys(
                "flock UN a",
                libc::flock(a.as_raw_fd(), libc::LOCK_UN) as i64,
            );
            log.sys(
                "flock SH|NB b after unlock",
                libc::flock(b.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) as i64,
            );
            log.sys(
                "flock SH|NB a (shared)",
                libc::flock(a.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) as i64,
            );
        }
        drop((a, b));
        // The flock command from another process, after ours is gone.
        let out = common::run(&["flock", "-n", "-x", common::s(&f), "true"]);
        log.val("flock command", out.status.code());
    });
    assert_eq!(log.get("child, no lock held"), "(0, 0)");
    assert_eq!(
        log.get("child, lock held"),
        format!("({}, 101)", libc::EAGAIN)
    );
    assert_eq!(log.get("child, after unlock"), "(0, 0)");
    assert_eq!(log.get("flock EX|NB b"), "EAGAIN");
    assert_eq!(log.get("flock SH|NB b after unlock"), "ok");
}

fn shared_writable_mmap_reaches_the_file_and_clones_on(opts: &[&str]) {
    let Some(m) = mount_with(opts) else { return };
    const LEN: usize = 3 * 4096;
    let log = compare(&m, "c", "mmap", |d, log| {
        let f = d.join("shm");
        fs::write(&f, vec![b'a'; LEN]).unwrap();
        let h = OpenOptions::new().read(true).write(true).open(&f).unwrap();
        let h2 = OpenOptions::new().read(true).write(true).open(&f).unwrap();
        // SAFETY: mappings of LEN bytes of files LEN long, used within bounds and
        // unmapped before the descriptors close.
        unsafe {
            let a = map_shared(h.as_raw_fd(), LEN);
            let b = map_shared(h2.as_raw_fd(), LEN);
            a[4096 + 10..4096 + 15].copy_from_slice(b"hello");
            log.sys(
                "msync",
                libc::msync(a.as_mut_ptr().cast(), LEN, libc::MS_SYNC) as i64,
            );
            let mut buf = [0u8; 5];
            h2.read_exact_at(&mut buf, 4096 + 10).unwrap();
            log.val("read(2) sees the mapping's write", buf);
            log.val(
                "the second mapping sees it",
                b[4096 + 10..4096 + 15].to_vec(),
            );
            // write(2) shows in both mappings.
            h.write_all_at(b"WXYZ", 0).unwrap();
            log.val("mapping sees write(2)", (a[..4].to_vec(), b[..4].to_vec()));
            // The other mapping writes, the first reads.
            b[LEN - 3..].copy_from_slice(b"end");
            log.val("first mapping sees the second", a[LEN - 3..].to_vec());
            libc::msync(b.as_mut_ptr().cast(), LEN, libc::MS_SYNC);
            libc::munmap(a.as_mut_ptr().cast(), LEN);
            libc::munmap(b.as_mut_ptr().cast(), LEN);
        }
        drop((h, h2));
        let all = fs::read(&f).unwrap();
        log.val(
            "file after unmap",
            (
                String::from_utf8_lossy(&all[..4]).into_owned(),
                String::from_utf8_lossy(&all[4096 + 10..4096 + 15]).into_owned(),
                String::from_utf8_lossy(&all[LEN - 3..]).into_owned(),
                all.len(),
            ),
        );
    });
    assert_eq!(
        log.get("file after unmap"),
        "(\"WXYZ\", \"hello\", \"end\", 12288)"
    );
    assert_eq!(log.get("first mapping sees the second"), "[101, 110, 100]");
    // The msync'd bytes reached the volume: a clone (made now, outside the kernel's
    // page cache of the source) has them.
    fs::create_dir(m.path("c/.clone/snap")).unwrap();
    let all = fs::read(m.path("snap/mmap/shm")).unwrap();
    assert_eq!(&all[..4], b"WXYZ");
    assert_eq!(&all[4096 + 10..4096 + 15], b"hello");
    assert_eq!(&all[LEN - 3..], b"end");

    // MAP_SHARED after a clone: writing through the source's mapping leaves the
    // clone alone.
    let f = m.path("c/mmap/shm");
    let h = OpenOptions::new().read(true).write(true).open(&f).unwrap();
    // SAFETY: as above.
    unsafe {
        let a = map_shared(h.as_raw_fd(), LEN);
        a[..4].copy_from_slice(b"new!");
        let p = a.as_mut_ptr().cast();
        assert_eq!(libc::msync(p, LEN, libc::MS_SYNC), 0);
        libc::munmap(p, LEN);
    }
    assert_eq!(&fs::read(&f).unwrap()[..4], b"new!");
    assert_eq!(&fs::read(m.path("snap/mmap/shm")).unwrap()[..4], b"WXYZ");
}

// ---- permissions ----------------------------------------------------------------------

/// What an unprivileged user can do with root's files: setup as root, each check
/// in a child process as nobody. Returns a transcript of errnos and attributes.
fn permission_scenario(d: &Path, log: &mut Log) {
    let p = |s: &str| d.join(s);
    let set = |s: &str, mo: u32| fs::set_permissions(p(s), fs::Permissions::from_mode(mo)).unwrap();
    fs::write(p("secret"), b"s").unwrap();
    set("secret", 0o600);
    fs::write(p("ro"), b"r").unwrap();
    set("ro", 0o644);
    fs::create_dir(p("closed")).unwrap();
    set("closed", 0o755);
    fs::create_dir(p("sticky")).unwrap();
    set("sticky", 0o1777);
    fs::write(p("sticky/rootfile"), b"r").unwrap();
    set("sticky/rootfile", 0o666);
    fs::create_dir(p("sgid")).unwrap();
    std::os::unix::fs::chown(p("sgid"), Some(0), Some(4242)).unwrap();
    set("sgid", 0o2777);
    fs::write(p("suid"), b"x").unwrap();
    set("suid", 0o4777);
    fs::create_dir(p("wx")).unwrap();
    set("wx", 0o733);
    fs::create_dir(p("mine")).unwrap();
    std::os::unix::fs::chown(p("mine"), Some(NOBODY), Some(NOBODY)).unwrap();

    let c = |s: &str| cstr(&p(s));
    let (secret, ro, closed_x, closed_d) = (c("secret"), c("ro"), c("closed/x"), c("closed/d"));
    let (rootfile, stolen, own) = (c("sticky/rootfile"), c("sticky/stolen"), c("sticky/own"));
    let (sgid_f, sgid_d, suid, wx, wx_f) =
        (c("sgid/f"), c("sgid/sub"), c("suid"), c("wx"), c("wx/f"));
    let (mine_f, xname, xval) = (c("mine/f"), CString::new("user.x").unwrap(), b"v");
    let me = |f: &dyn Fn() -> i32| as_user(NOBODY, NOBODY, f);
    let now2 = [ts(0, libc::UTIME_NOW), ts(0, libc::UTIME_NOW)];
    let fixed = [ts(5, 0), ts(5, 0)];

    // SAFETY (every closure below): system calls on prepared, valid strings and
    // buffers, in a forked child.
    unsafe {
        log.val(
            "read 0600 root file",
            me(&|| try_open(&secret, libc::O_RDONLY)),
        );
        log.val(
            "access R_OK 0600",
            me(&|| rc(libc::access(secret.as_ptr(), libc::R_OK))),
        );
        log.val("read 0644 root file", me(&|| try_open(&ro, libc::O_RDONLY)));
        log.val(
            "write 0644 root file",
            me(&|| try_open(&ro, libc::O_WRONLY)),
        );
        log.val(
            "truncate 0644 root file",
            me(&|| rc(libc::truncate(ro.as_ptr(), 0))),
        );
        log.val(
            "chmod root file",
            me(&|| rc(libc::chmod(ro.as_ptr(), 0o777))),
        );
        log.val(
            "chown root file",
            me(&|| rc(libc::chown(ro.as_ptr(), NOBODY, NOBODY))),
        );
        log.val(
            "setxattr on 0644 root file",
            me(&|| {
                rc(libc::setxattr(
                    ro.as_ptr(),
                    xname.as_ptr(),
                    xval.as_ptr().cast(),
                    1,
                    0,
                ))
            }),
        );
        log.val(
            "create in 0755 root dir",
            me(&|| try_open(&closed_x, libc::O_CREAT | libc::O_WRONLY)),
        );
        log.val(
            "mkdir in 0755 root dir",
            me(&|| rc(libc::mkdir(closed_d.as_ptr(), 0o755))),
        );
        // The sticky bit.
        log.val(
            "write root's 0666 file in 1777",
            me(&|| try_open(&rootfile, libc::O_WRONLY)),
        );
        log.val(
            "unlink root's file in 1777",
            me(&|| rc(libc::unlink(rootfile.as_ptr()))),
        );
        log.val(
            "rename root's file in 1777",
            me(&|| rc(libc::rename(rootfile.as_ptr(), stolen.as_ptr()))),
        );
        log.val(
            "create own file in 1777",
            me(&|| try_open(&own, libc::O_CREAT | libc::O_WRONLY)),
        );
        log.val(
            "rename own file in 1777",
            me(&|| rc(libc::rename(own.as_ptr(), stolen.as_ptr()))),
        );
        log.val(
            "unlink own file in 1777",
            me(&|| rc(libc::unlink(stolen.as_ptr()))),
        );
        // utimensat: UTIME_NOW needs write permission, explicit times ownership.
        log.val(
            "UTIME_NOW on writable root file",
            me(&|| {
                rc(libc::utimensat(
                    libc::AT_FDCWD,
                    rootfile.as_ptr(),
                    now2.as_ptr(),
                    0,
                ))
            }),
        );
        log.val(
            "explicit times on root file",
            me(&|| {
                rc(libc::utimensat(
                    libc::AT_FDCWD,
                    rootfile.as_ptr(),
                    fixed.as_ptr(),
                    0,
                ))
            }),
        );
        // setgid directory: new entries take its group, subdirectories the bit.
        log.val(
            "create in g+s dir",
            me(&|| try_open(&sgid_f, libc::O_CREAT | libc::O_WRONLY)),
        );
        log.val(
            "mkdir in g+s dir",
            me(&|| rc(libc::mkdir(sgid_d.as_ptr(), 0o755))),
        );
        // Writing a set-user-id file drops the bit.
        log.val(
            "write 04777 root file",
            me(&|| {
                let fd = libc::open(suid.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return rc(fd);
                }
                let r = rc(libc::write(fd, b"y".as_ptr().cast(), 1) as i32);
                libc::close(fd);
                r
            }),
        );
        // A write-and-search-only directory: create yes, list no.
        log.val(
            "create in 0733 dir",
            me(&|| try_open(&wx_f, libc::O_CREAT | libc::O_WRONLY)),
        );
        log.val(
            "list 0733 dir",
            me(&|| try_open(&wx, libc::O_RDONLY | libc::O_DIRECTORY)),
        );
        // Own files: chmod g+s of a file of a group one is not in drops the bit;
        // chgrp to a group one is not in is refused.
        log.val(
            "chmod own file of group 4242 to 02755",
            me(&|| rc(libc::chmod(sgid_f.as_ptr(), 0o2755))),
        );
        log.val(
            "create own file",
            me(&|| try_open(&mine_f, libc::O_CREAT | libc::O_WRONLY)),
        );
        log.val(
            "chmod own file of own group to 02755",
            me(&|| rc(libc::chmod(mine_f.as_ptr(), 0o2755))),
        );
        log.val(
            "chgrp own file to a foreign group",
            me(&|| rc(libc::chown(mine_f.as_ptr(), u32::MAX, 4242))),
        );
    }
    let md = |s: &str| fs::metadata(p(s)).unwrap();
    log.val("sgid/f owner", (md("sgid/f").uid(), md("sgid/f").gid()));
    log.val("sgid/f mode", md("sgid/f").mode() & 0o7777);
    log.val(
        "sgid/sub owner and mode",
        (
            md("sgid/sub").uid(),
            md("sgid/sub").gid(),
            md("sgid/sub").mode() & 0o7777,
        ),
    );
    log.val("suid mode after write", md("suid").mode() & 0o7777);
    log.val("mine/f mode", md("mine/f").mode() & 0o7777);
    log.val("root file still there", p("sticky/rootfile").exists());
}

#[test]
fn permissions_as_another_user_match_a_local_file_system() {
    let Some(m) = mount_with(&["--allow-other"]) else {
        return;
    };
    // The temporary directory holding the mount point is 0700.
    fs::set_permissions(m.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let log = compare(&m, "c", "perm", permission_scenario);
    let ea = libc::EACCES.to_string();
    let ep = libc::EPERM.to_string();
    for (step, want) in [
        ("read 0600 root file", &ea),
        ("access R_OK 0600", &ea),
        ("read 0644 root file", &"0".to_string()),
        ("write 0644 root file", &ea),
        ("create in 0755 root dir", &ea),
        ("mkdir in 0755 root dir", &ea),
        ("write root's 0666 file in 1777", &"0".to_string()),
        ("unlink root's file in 1777", &ep),
        ("rename root's file in 1777", &ep),
        ("unlink own file in 1777", &"0".to_string()),
        ("explicit times on root file", &ep),
        ("create in g+s dir", &"0".to_string()),
    ] {
        assert_eq!(log.get(step), want.as_str(), "{step}");
    }
    assert_eq!(log.get("sgid/f owner"), "(65534, 4242)");
    assert_eq!(log.get("sgid/sub owner and mode"), "(65534, 4242, 1517)"); // 0o2755
    assert_eq!(log.get("suid mode after write"), "511"); // 0o777
    assert_eq!(log.get("sgid/f mode"), "493"); // 0o755: S_ISGID dropped
    assert_eq!(log.get("mine/f mode"), "1517"); // 0o2755: kept
    assert_eq!(log.get("chgrp own file to a foreign group"), ep.as_str());

    // Clusters: only the mount's owner makes them, only a cluster root's owner
    // clones it.
    let (newc, clone) = (cstr(&m.path("nc")), cstr(&m.path("c/.clone/nc")));
    // SAFETY: mkdir of prepared paths, in a forked child.
    let mk = |p: &CString| {
        as_user(NOBODY, NOBODY, || {
            rc(unsafe { libc::mkdir(p.as_ptr(), 0o755) })
        })
    };
    assert_eq!(mk(&newc), libc::EACCES);
    assert_eq!(mk(&clone), libc::EACCES);
    std::os::unix::fs::chown(m.path("c"), Some(NOBODY), Some(NOBODY)).unwrap();
    assert_eq!(mk(&clone), 0);
    let md = fs::metadata(m.path("nc")).unwrap();
    assert_eq!((md.uid(), md.gid()), (NOBODY, NOBODY));
    assert_eq!(fs::read(m.path("nc/perm/ro")).unwrap(), b"r");
}

/// Who drops setuid and setgid, and when: with FUSE_HANDLE_KILLPRIV_V2 the kernel
/// leaves it to the file system. Setup as root, each change as root or as nobody;
/// the transcript holds the modes after each change.
fn suid_sgid_scenario(d: &Path, log: &mut Log) {
    let p = |s: &str| d.join(s);
    // A root file, a file of nobody's, a root directory; chmod after chown, which
    // would drop the bits.
    let make = |s: &str, owner: u32, mo: u32| {
        if mo & libc::S_IFDIR != 0 {
            fs::create_dir(p(s)).unwrap();
        } else {
            fs::write(p(s), b"0123456789").unwrap();
        }
        std::os::unix::fs::chown(p(s), Some(owner), Some(owner)).unwrap();
        fs::set_permissions(p(s), fs::Permissions::from_mode(mo & 0o7777)).unwrap();
    };
    make("w_nobody", 0, 0o6777);
    make("w_nobody_gnox", 0, 0o6767);
    make("w_member_gnox", 0, 0o6767);
    std::os::unix::fs::chown(p("w_member_gnox"), None, Some(4242)).unwrap();
    fs::set_permissions(p("w_member_gnox"), fs::Permissions::from_mode(0o6767)).unwrap();
    make("w_root", 0, 0o6777);
    make("t_owner", NOBODY, 0o6775);
    make("t_owner_gnox", NOBODY, 0o6765);
    make("t_nobody_gnox", 0, 0o6767);
    make("t_root", 0, 0o6777);
    make("otrunc_nobody", 0, 0o6777);
    make("chown_root", 0, 0o6755);
    make("chown_root_gnox", 0, 0o6745);
    make("chown_root_dir", 0, libc::S_IFDIR | 0o6755);
    // nobody's file in a group nobody is not in.
    make("chgrp_nobody_gnox", NOBODY, 0o6745);
    std::os::unix::fs::chown(p("chgrp_nobody_gnox"), None, Some(4242)).unwrap();
    fs::set_permissions(p("chgrp_nobody_gnox"), fs::Permissions::from_mode(0o2745)).unwrap();
    let c = |s: &str| cstr(&p(s));
    let (w_nobody, w_gnox, w_root) = (c("w_nobody"), c("w_nobody_gnox"), c("w_root"));
    let (t_owner, t_gnox, t_root) = (c("t_owner"), c("t_owner_gnox"), c("t_root"));
    let (w_member, t_nobody, chgrp) = (
        c("w_member_gnox"),
        c("t_nobody_gnox"),
        c("chgrp_nobody_gnox"),
    );
    let otrunc = c("otrunc_nobody");
    // SAFETY (each closure): system calls on prepared strings and buffers, in a
    // forked child or the test's own thread.
    let write1 = |f: &CString| unsafe {
        let fd = libc::open(f.as_ptr(), libc::O_WRONLY);
        if fd < 0 {
            return rc(fd);
        }
        let r = rc(libc::pwrite(fd, b"y".as_ptr().cast(), 1, 3) as i32);
        libc::close(fd);
        r
    };
    let truncate = |f: &CString| unsafe { rc(libc::truncate(f.as_ptr(), 4)) };
    let me = |f: &dyn Fn() -> i32| as_user(NOBODY, NOBODY, f);
    let perm = |s: &str| fs::symlink_metadata(p(s)).unwrap().mode() & 0o7777;

    log.val("write by nobody", me(&|| write1(&w_nobody)));
    log.val("write by nobody, g-x", me(&|| write1(&w_gnox)));
    log.val(
        "write by nobody in group 4242, g-x",
        as_user_in(NOBODY, NOBODY, &[4242], || write1(&w_member)),
    );
    log.val("write by root", write1(&w_root));
    log.val("truncate by owner nobody", me(&|| truncate(&t_owner)));
    log.val("truncate by owner nobody, g-x", me(&|| truncate(&t_gnox)));
    log.val("truncate by nobody, g-x", me(&|| truncate(&t_nobody)));
    log.val("truncate by root", truncate(&t_root));
    log.val(
        "chgrp by owner nobody out of the file's group",
        // SAFETY: as above.
        me(&|| unsafe { rc(libc::chown(chgrp.as_ptr(), u32::MAX, NOBODY)) }),
    );
    log.val(
        "O_TRUNC by nobody",
        me(&|| try_open(&otrunc, libc::O_WRONLY | libc::O_TRUNC)),
    );
    for s in ["chown_root", "chown_root_gnox", "chown_root_dir"] {
        log.io(s, std::os::unix::fs::chown(p(s), Some(1234), Some(5678)));
    }
    for s in [
        "w_nobody",
        "w_nobody_gnox",
        "w_member_gnox",
        "w_root",
        "t_owner",
        "t_owner_gnox",
        "t_nobody_gnox",
        "t_root",
        "otrunc_nobody",
        "chown_root",
        "chown_root_gnox",
        "chown_root_dir",
        "chgrp_nobody_gnox",
    ] {
        log.val(&format!("{s} mode"), format!("{:o}", perm(s)));
    }
    log.val("w_nobody content", fs::read(p("w_nobody")).unwrap());
    log.val("t_owner size", fs::metadata(p("t_owner")).unwrap().len());
}

fn setuid_and_setgid_drop_as_on_a_local_file_system_on(opts: &[&str]) {
    let opts: Vec<&str> = opts.iter().copied().chain(["--allow-other"]).collect();
    let Some(m) = mount_with(&opts) else { return };
    // The temporary directory holding the mount point is 0700.
    fs::set_permissions(m.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let log = compare(&m, "c", "suid", suid_sgid_scenario);
    for (step, want) in [
        ("write by nobody", "0"),
        ("write by root", "0"),
        ("truncate by owner nobody", "0"),
        ("O_TRUNC by nobody", "0"),
        // A write or truncate by a caller without CAP_FSETID drops setuid, and
        // setgid with group execute.
        ("w_nobody mode", "\"777\""),
        ("t_owner mode", "\"775\""),
        ("otrunc_nobody mode", "\"777\""),
        // Setgid without group execute stays when the caller is in the file's
        // group (Linux 6.2 on), its own or a supplementary one.
        ("t_owner_gnox mode", "\"2765\""),
        ("w_member_gnox mode", "\"2767\""),
        ("w_nobody_gnox mode", "\"767\""),
        ("t_nobody_gnox mode", "\"767\""),
        // Root (CAP_FSETID) keeps both.
        ("w_root mode", "\"6777\""),
        ("t_root mode", "\"6777\""),
        // chown drops setuid even as root, setgid only with group execute; a
        // directory keeps both.
        ("chown_root mode", "\"755\""),
        ("chown_root_gnox mode", "\"2745\""),
        ("chown_root_dir mode", "\"6755\""),
        ("chgrp_nobody_gnox mode", "\"745\""),
        ("t_owner size", "4"),
    ] {
        assert_eq!(log.get(step), want, "{step}");
    }
}

#[test]
fn without_allow_other_other_users_are_shut_out() {
    let Some(m) = mount_with(&[]) else { return };
    fs::set_permissions(m.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(m.path("c/f"), b"x").unwrap();
    fs::set_permissions(m.path("c/f"), fs::Permissions::from_mode(0o644)).unwrap();
    let (mnt, f) = (cstr(&m.mnt), cstr(&m.path("c/f")));
    // SAFETY: stat into zeroed buffers of prepared paths, in a forked child.
    let stat_as = |uid: u32, p: &CString| {
        as_user(uid, uid, || unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            rc(libc::stat(p.as_ptr(), &mut st))
        })
    };
    assert_eq!(stat_as(NOBODY, &f), libc::EACCES);
    assert_eq!(
        as_user(NOBODY, NOBODY, || try_open(&f, libc::O_RDONLY)),
        libc::EACCES
    );
    assert_eq!(
        as_user(NOBODY, NOBODY, || try_open(
            &mnt,
            libc::O_RDONLY | libc::O_DIRECTORY
        )),
        libc::EACCES
    );
    // The same checks pass for root (from a child, like the others) and, on a mount
    // with --allow-other, for nobody.
    assert_eq!(stat_as(0, &f), 0);
    let Some(open) = mount_with(&["--allow-other"]) else {
        return;
    };
    fs::set_permissions(open.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(open.path("c/f"), b"x").unwrap();
    let f2 = cstr(&open.path("c/f"));
    assert_eq!(stat_as(NOBODY, &f2), 0);
    assert_eq!(as_user(NOBODY, NOBODY, || try_open(&f2, libc::O_RDONLY)), 0);
}

// ---- clones and the kernel's caches ---------------------------------------------------

fn clones_are_right_through_the_kernel_caches_on(opts: &[&str]) {
    let Some(m) = mount_with(opts) else { return };
    let (prod, clone) = (m.path("c"), m.path("k"));
    fs::create_dir(prod.join("d")).unwrap();
    fs::write(prod.join("f"), b"old").unwrap();
    fs::write(prod.join("d/g"), b"gee").unwrap();
    std::os::unix::fs::symlink("f", prod.join("l")).unwrap();
    fs::write(prod.join("a"), b"linked").unwrap();
    fs::hard_link(prod.join("a"), prod.join("d/b")).unwrap();
    assert_eq!(fs::read(prod.join("d/b")).unwrap(), b"linked");
    // Everything read (and so cached) before the clone.
    assert_eq!(fs::read(prod.join("f")).unwrap(), b"old");
    assert_eq!(fs::metadata(prod.join("d/g")).unwrap().len(), 3);

    fs::create_dir(prod.join(".clone/k")).unwrap();
    let md = fs::metadata(clone.join("f")).unwrap();
    assert_eq!((md.len(), md.nlink()), (3, 1));
    assert_eq!(fs::read(clone.join("f")).unwrap(), b"old");
    assert_eq!(fs::read(clone.join("d/g")).unwrap(), b"gee");
    assert_eq!(fs::read_link(clone.join("l")).unwrap(), Path::new("f"));
    assert_eq!(fs::read(clone.join("l")).unwrap(), b"old");
    // Both read just before the source changes.
    assert_eq!(fs::read(prod.join("f")).unwrap(), b"old");
    assert_eq!(fs::read(clone.join("f")).unwrap(), b"old");
    fs::write(prod.join("f"), b"new and longer").unwrap();
    fs::write(prod.join("d/g"), b"G").unwrap();
    std::os::unix::fs::symlink("d/g", prod.join("l2")).unwrap();
    fs::remove_file(prod.join("l")).unwrap();
    fs::set_permissions(prod.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::read(clone.join("f")).unwrap(), b"old");
    let md = fs::metadata(clone.join("f")).unwrap();
    assert_eq!(md.len(), 3);
    assert_eq!(md.mode() & 0o7777, 0o644);
    assert_eq!(fs::read(clone.join("d/g")).unwrap(), b"gee");
    assert!(fs::symlink_metadata(clone.join("l")).is_ok());
    assert!(fs::symlink_metadata(clone.join("l2")).is_err());
    assert_eq!(fs::read(prod.join("f")).unwrap(), b"new and longer");
    // Hard links: both names of the clone's inode keep the old bytes after a
    // write through one name in the source; the clone's pair stays one inode.
    assert_eq!(fs::read(clone.join("a")).unwrap(), b"linked");
    fs::write(prod.join("d/b"), b"LINKED").unwrap();
    assert_eq!(fs::read(prod.join("a")).unwrap(), b"LINKED");
    assert_eq!(fs::read(clone.join("a")).unwrap(), b"linked");
    assert_eq!(fs::read(clone.join("d/b")).unwrap(), b"linked");
    let (ka, kb) = (
        fs::metadata(clone.join("a")).unwrap(),
        fs::metadata(clone.join("d/b")).unwrap(),
    );
    assert_eq!((ka.ino(), ka.nlink()), (kb.ino(), 2));
    fs::write(clone.join("a"), b"in the clone").unwrap();
    assert_eq!(fs::read(clone.join("d/b")).unwrap(), b"in the clone");
    assert_eq!(fs::read(prod.join("d/b")).unwrap(), b"LINKED");
    // And the other way: the clone's writes stay in the clone.
    fs::write(clone.join("f"), b"clone").unwrap();
    assert_eq!(fs::read(prod.join("f")).unwrap(), b"new and longer");
    assert_eq!(fs::read(clone.join("f")).unwrap(), b"clone");
    // A handle opened on the source before a clone keeps writing to the source.
    let h = OpenOptions::new()
        .write(true)
        .open(prod.join("d/g"))
        .unwrap();
    fs::create_dir(prod.join(".clone/k2")).unwrap();
    h.write_all_at(b"after", 0).unwrap();
    drop(h);
    assert_eq!(fs::read(m.path("k2/d/g")).unwrap(), b"G");
    assert_eq!(fs::read(prod.join("d/g")).unwrap(), b"after");

    // rm -rf of the clone: gone from the root and from .clone, and the name can be
    // cloned again, this time with the source's current contents.
    let out = common::run(&["rm", "-rf", common::s(&clone)]);
    assert!(out.status.success(), "{out:?}");
    assert!(!clone.exists());
    assert!(!list(&m.mnt).contains(&"k".to_string()));
    assert!(!list(&prod.join(".clone")).contains(&"k".to_string()));
    assert_eq!(
        fs::metadata(prod.join(".clone/k")).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    fs::create_dir(prod.join(".clone/k")).unwrap();
    assert_eq!(fs::read(clone.join("f")).unwrap(), b"new and longer");
    assert_eq!(fs::read(clone.join("d/g")).unwrap(), b"after");
    assert!(fs::symlink_metadata(clone.join("l")).is_err());
    assert_eq!(fs::read(clone.join("l2")).unwrap(), b"after");
    assert_eq!(
        fs::metadata(clone.join("f")).unwrap().mode() & 0o7777,
        0o600
    );
    // Remove and re-create as an empty cluster of the same name: empty.
    fs::remove_dir_all(&clone).unwrap();
    fs::create_dir(&clone).unwrap();
    assert!(list(&clone).is_empty());
    assert!(fs::metadata(clone.join("f")).is_err());
}

/// With the writeback cache, writes sit in the kernel's page cache: a clone must
/// still hold every write that returned before it, through write(2) or a shared
/// mapping, with the file still open and never synced. With one worker thread too
/// (the writeback the clone asks for needs a free worker).
#[test]
fn a_clone_with_the_writeback_cache_holds_dirty_pages_of_open_files() {
    for threads in ["1", "4"] {
        let Some(m) = mount_with(&["--writeback-cache", "--threads", threads]) else {
            return;
        };
        // The mount's dirty pages may use the whole dirty limit, as a local file
        // system's do (the kernel's default for FUSE: 1%, strictly).
        let dev = fs::metadata(m.path("")).unwrap().dev();
        let bdi = format!("/sys/class/bdi/{}:{}", libc::major(dev), libc::minor(dev));
        let knob = |k: &str| fs::read_to_string(format!("{bdi}/{k}")).unwrap();
        assert_eq!(
            (knob("max_ratio"), knob("strict_limit")),
            ("100\n".into(), "0\n".into())
        );
        fs::create_dir(m.path("c/wb")).unwrap();
        let mut want: Vec<u8> = (0..3 * 1024 * 1024 + 77).map(|i| (i % 253) as u8).collect();
        let mut f = File::create(m.path("c/wb/data")).unwrap();
        f.write_all(&want).unwrap();
        f.write_all_at(b"overwritten", 5000).unwrap();
        want[5000..5011].copy_from_slice(b"overwritten");
        const LEN: usize = 3 * 4096;
        fs::write(m.path("c/wb/map"), vec![b'.'; LEN]).unwrap();
        let h = OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.path("c/wb/map"))
            .unwrap();
        // SAFETY: a mapping of LEN bytes of a file LEN long, written within bounds
        // and unmapped before the descriptor closes.
        let map = unsafe { map_shared(h.as_raw_fd(), LEN) };
        map[4096 + 10..4096 + 16].copy_from_slice(b"mapped");

        fs::create_dir(m.path("c/.clone/snap")).unwrap();
        assert!(
            fs::read(m.path("snap/wb/data")).unwrap() == want,
            "{threads} threads: the clone lacks writes that returned before it"
        );
        let mapped = fs::read(m.path("snap/wb/map")).unwrap();
        assert_eq!(
            &mapped[4096 + 10..4096 + 16],
            b"mapped",
            "{threads} threads"
        );

        // Later writes on the source stay out of the clone.
        f.write_all_at(b"after", 0).unwrap();
        map[0..5].copy_from_slice(b"AFTER");
        f.sync_all().unwrap();
        // SAFETY: the mapping made above, unmapped once.
        unsafe { libc::munmap(map.as_mut_ptr().cast(), LEN) };
        drop((f, h));
        assert_eq!(fs::read(m.path("c/wb/data")).unwrap()[..5], *b"after");
        assert_eq!(fs::read(m.path("c/wb/map")).unwrap()[..5], *b"AFTER");
        assert!(fs::read(m.path("snap/wb/data")).unwrap() == want);
        assert_eq!(fs::read(m.path("snap/wb/map")).unwrap()[..5], *b".....");
    }
}

/// The tests that the kernel's writeback cache changes most (who owns size and
/// times, O_APPEND, mmap, what a clone catches): each runs on a default mount, on
/// one with `--writeback-cache`, and with cluster `c` mounted alone.
macro_rules! on_both_mounts {
    ($($body:ident: $plain:ident, $cached:ident, $alone:ident;)*) => {$(
        #[test]
        fn $plain() {
            $body(&[]);
        }
        #[test]
        fn $cached() {
            $body(&["--writeback-cache"]);
        }
        #[test]
        fn $alone() {
            $body(&[ALONE]);
        }
    )*};
}

on_both_mounts! {
    setattr_matches_a_local_file_system_on: setattr_matches_a_local_file_system, setattr_with_writeback_cache, setattr_matches_a_local_file_system_on_a_cluster_mount;
    times_move_as_posix_says_on: times_move_as_posix_says, times_move_with_writeback_cache, times_move_as_posix_says_on_a_cluster_mount;
    open_flags_and_io_match_a_local_file_system_on: open_flags_and_io_match_a_local_file_system, open_flags_and_io_with_writeback_cache, open_flags_and_io_match_a_local_file_system_on_a_cluster_mount;
    fallocate_and_sparse_seek_match_a_local_file_system_on: fallocate_and_sparse_seek_match_a_local_file_system, fallocate_and_sparse_seek_with_writeback_cache, fallocate_and_sparse_seek_match_a_local_file_system_on_a_cluster_mount;
    random_file_operations_match_a_local_file_system_on: random_file_operations_match_a_local_file_system, random_file_operations_with_writeback_cache, random_file_operations_match_a_local_file_system_on_a_cluster_mount;
    concurrent_operations_in_one_directory_and_one_file_on: concurrent_operations_in_one_directory_and_one_file, concurrent_operations_in_one_directory_and_one_file_with_writeback_cache, concurrent_operations_in_one_directory_and_one_file_on_a_cluster_mount;
    shared_writable_mmap_reaches_the_file_and_clones_on: shared_writable_mmap_reaches_the_file_and_clones, shared_writable_mmap_reaches_the_file_and_clones_with_writeback_cache, shared_writable_mmap_reaches_the_file_and_clones_on_a_cluster_mount;
    clones_are_right_through_the_kernel_caches_on: clones_are_right_through_the_kernel_caches, clones_are_right_through_the_kernel_caches_with_writeback_cache, clones_are_right_through_the_kernel_caches_on_a_cluster_mount;
    setuid_and_setgid_drop_as_on_a_local_file_system_on: setuid_and_setgid_drop_as_on_a_local_file_system, setuid_and_setgid_drop_with_writeback_cache, setuid_and_setgid_drop_as_on_a_local_file_system_on_a_cluster_mount;
}

/// Comparisons the writeback cache leaves alone: on a store mount and with cluster
/// `c` mounted alone.
macro_rules! on_store_and_cluster_mounts {
    ($($body:ident: $store:ident, $alone:ident;)*) => {$(
        #[test]
        fn $store() {
            $body(&[]);
        }
        #[test]
        fn $alone() {
            $body(&[ALONE]);
        }
    )*};
}

on_store_and_cluster_mounts! {
    directories_and_names_match_a_local_file_system_on: directories_and_names_match_a_local_file_system, directories_and_names_match_a_local_file_system_on_a_cluster_mount;
    names_of_any_bytes_and_odd_opens_match_a_local_file_system_on: names_of_any_bytes_and_odd_opens_match_a_local_file_system, names_of_any_bytes_and_odd_opens_match_a_local_file_system_on_a_cluster_mount;
    xattrs_match_a_local_file_system_on: xattrs_match_a_local_file_system, xattrs_match_a_local_file_system_on_a_cluster_mount;
    readdir_lists_every_entry_once_on: readdir_lists_every_entry_once, readdir_lists_every_entry_once_on_a_cluster_mount;
}
