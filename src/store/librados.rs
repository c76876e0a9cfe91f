//! A small safe binding to librados (Ceph's object client), for the RADOS page
//! device: a cluster handle, a pool's I/O context, asynchronous write completions,
//! object locks (cls_lock) and monitor commands. Nothing more is declared.
//!
//! The declarations follow `/usr/include/rados/librados.h` of Ceph 16 (pacific).
//! The library (`librados.so.2`, Debian: librados2) is not linked: it is opened
//! with dlopen when the first cluster handle is made, so that every other command
//! and every file-store daemon starts without loading Ceph's client (linking it
//! cost each `clonefs` run ~15 ms and each daemon ~4 MiB). Every `unsafe` block of
//! the RADOS store is in this file. Invariants that make it sound:
//! - no librados function is called before [`load`] has resolved them all: the
//!   only way to a handle is [`Rados::connect`], which loads first;
//! - a [`Rados`] handle is connected before any [`IoCtx`] is made from it, and an
//!   `IoCtx` holds an `Arc` of its `Rados`, so the cluster handle outlives every
//!   context and is shut down once, when the last of them goes;
//! - librados handles are thread-safe (the library locks inside), so they are
//!   `Send + Sync`; a [`Completion`] is released exactly once, in `Drop`;
//! - every string passed in is a `CString` that lives across the call, and every
//!   buffer's length is the one passed beside it;
//! - `rados_aio_write` copies the caller's bytes into its own buffer before it
//!   returns, so the caller's slice need not outlive the completion.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::io;
use std::path::Path;
use std::ptr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The shared object opened at run time (the soname of Ceph 12 to 19).
const LIBRARY: &str = "librados.so.2";

/// Declares librados functions as fields of `Api`, resolved by name when the
/// library is opened, and a same-named `unsafe fn` for each that calls through.
macro_rules! librados {
    ($(fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?;)*) => {
        struct Api {
            $($name: unsafe extern "C" fn($($ty),*) $(-> $ret)?,)*
            _lib: libloading::Library,
        }

        impl Api {
            /// SAFETY: opening librados runs its initialisers, which are sound to run
            /// once in any process; the signatures above match librados.h.
            unsafe fn open() -> Result<Api, libloading::Error> {
                let lib = libloading::Library::new(LIBRARY)?;
                Ok(Api {
                    $($name: *lib.get::<unsafe extern "C" fn($($ty),*) $(-> $ret)?>(
                        concat!(stringify!($name), "\0").as_bytes(),
                    )?,)*
                    _lib: lib,
                })
            }
        }

        $(
            #[allow(clippy::too_many_arguments)]
            unsafe fn $name($($arg: $ty),*) $(-> $ret)? {
                (api().$name)($($arg),*)
            }
        )*
    };
}

static API: OnceLock<Result<Api, String>> = OnceLock::new();

/// Opens librados once per process; an error says what is missing and what to install.
pub fn load() -> io::Result<()> {
    let open = || {
        // SAFETY: see `Api::open`; OnceLock runs this at most once.
        unsafe { Api::open() }.map_err(|e| match std::error::Error::source(&e) {
            Some(why) => why.to_string(), // dlerror's text: the file and what was wrong
            None => e.to_string(),
        })
    };
    match API.get_or_init(open) {
        Ok(_) => Ok(()),
        Err(e) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "cannot load librados, which stores on Ceph need ({e}); \
                 install it (Debian: apt-get install librados2)"
            ),
        )),
    }
}

fn api() -> &'static Api {
    match API.get() {
        Some(Ok(api)) => api,
        _ => unreachable!("librados is loaded before any handle is made"),
    }
}

#[allow(non_camel_case_types)]
type rados_t = *mut c_void;
#[allow(non_camel_case_types)]
type rados_ioctx_t = *mut c_void;
#[allow(non_camel_case_types)]
type rados_completion_t = *mut c_void;
#[allow(non_camel_case_types)]
type rados_write_op_t = *mut c_void;

/// `LIBRADOS_LOCK_FLAG_MUST_RENEW`: renew a lock this client holds, fail if it does not.
pub const LOCK_MUST_RENEW: u8 = 2;
const CREATE_EXCLUSIVE: c_int = 1;

// The library is opened with dlopen the first time a `rados://` store is, so a
// build needs no Ceph headers and file stores pay nothing for it at start-up.
librados! {

    fn rados_create(cluster: *mut rados_t, id: *const c_char) -> c_int;
    fn rados_conf_read_file(cluster: rados_t, path: *const c_char) -> c_int;
    fn rados_conf_set(cluster: rados_t, option: *const c_char, value: *const c_char) -> c_int;
    fn rados_conf_get(
        cluster: rados_t,
        option: *const c_char,
        buf: *mut c_char,
        len: usize,
    ) -> c_int;
    fn rados_connect(cluster: rados_t) -> c_int;
    fn rados_shutdown(cluster: rados_t);
    fn rados_wait_for_latest_osdmap(cluster: rados_t) -> c_int;
    fn rados_buffer_free(buf: *mut c_char);
    fn rados_mon_command(
        cluster: rados_t,
        cmd: *mut *const c_char,
        cmdlen: usize,
        inbuf: *const c_char,
        inbuflen: usize,
        outbuf: *mut *mut c_char,
        outbuflen: *mut usize,
        outs: *mut *mut c_char,
        outslen: *mut usize,
    ) -> c_int;
    fn rados_ioctx_create(cluster: rados_t, pool: *const c_char, io: *mut rados_ioctx_t) -> c_int;
    fn rados_ioctx_destroy(io: rados_ioctx_t);
    fn rados_read(
        io: rados_ioctx_t,
        oid: *const c_char,
        buf: *mut c_char,
        len: usize,
        off: u64,
    ) -> c_int;
    fn rados_write(
        io: rados_ioctx_t,
        oid: *const c_char,
        buf: *const c_char,
        len: usize,
        off: u64,
    ) -> c_int;
    fn rados_stat(io: rados_ioctx_t, oid: *const c_char, size: *mut u64, mtime: *mut i64) -> c_int;
    fn rados_getxattr(
        io: rados_ioctx_t,
        oid: *const c_char,
        name: *const c_char,
        buf: *mut c_char,
        len: usize,
    ) -> c_int;
    fn rados_setxattr(
        io: rados_ioctx_t,
        oid: *const c_char,
        name: *const c_char,
        buf: *const c_char,
        len: usize,
    ) -> c_int;
    fn rados_rmxattr(io: rados_ioctx_t, oid: *const c_char, name: *const c_char) -> c_int;
    fn rados_aio_create_completion(
        arg: *mut c_void,
        complete: *mut c_void,
        safe: *mut c_void,
        pc: *mut rados_completion_t,
    ) -> c_int;
    fn rados_aio_write(
        io: rados_ioctx_t,
        oid: *const c_char,
        c: rados_completion_t,
        buf: *const c_char,
        len: usize,
        off: u64,
    ) -> c_int;
    fn rados_remove(io: rados_ioctx_t, oid: *const c_char) -> c_int;
    fn rados_aio_remove(io: rados_ioctx_t, oid: *const c_char, c: rados_completion_t) -> c_int;
    fn rados_aio_wait_for_complete(c: rados_completion_t) -> c_int;
    fn rados_aio_is_complete(c: rados_completion_t) -> c_int;
    fn rados_aio_get_return_value(c: rados_completion_t) -> c_int;
    fn rados_aio_release(c: rados_completion_t);
    fn rados_aio_flush(io: rados_ioctx_t) -> c_int;
    fn rados_create_write_op() -> rados_write_op_t;
    fn rados_release_write_op(op: rados_write_op_t);
    fn rados_write_op_create(op: rados_write_op_t, exclusive: c_int, category: *const c_char);
    fn rados_write_op_zero(op: rados_write_op_t, offset: u64, len: u64);
    fn rados_aio_write_op_operate(
        op: rados_write_op_t,
        io: rados_ioctx_t,
        c: rados_completion_t,
        oid: *const c_char,
        mtime: *mut i64,
        flags: c_int,
    ) -> c_int;
    fn rados_write_op_setxattr(
        op: rados_write_op_t,
        name: *const c_char,
        value: *const c_char,
        len: usize,
    );
    fn rados_write_op_operate(
        op: rados_write_op_t,
        io: rados_ioctx_t,
        oid: *const c_char,
        mtime: *mut i64,
        flags: c_int,
    ) -> c_int;
    fn rados_lock_exclusive(
        io: rados_ioctx_t,
        oid: *const c_char,
        name: *const c_char,
        cookie: *const c_char,
        desc: *const c_char,
        duration: *mut libc::timeval,
        flags: u8,
    ) -> c_int;
    fn rados_unlock(
        io: rados_ioctx_t,
        oid: *const c_char,
        name: *const c_char,
        cookie: *const c_char,
    ) -> c_int;
    fn rados_list_lockers(
        io: rados_ioctx_t,
        oid: *const c_char,
        name: *const c_char,
        exclusive: *mut c_int,
        tag: *mut c_char,
        tag_len: *mut usize,
        clients: *mut c_char,
        clients_len: *mut usize,
        cookies: *mut c_char,
        cookies_len: *mut usize,
        addrs: *mut c_char,
        addrs_len: *mut usize,
    ) -> isize;
    fn rados_break_lock(
        io: rados_ioctx_t,
        oid: *const c_char,
        name: *const c_char,
        client: *const c_char,
        cookie: *const c_char,
    ) -> c_int;
}

/// A librados return code as an `io::Error` (librados returns `-errno`).
pub fn err(rc: i64) -> io::Error {
    io::Error::from_raw_os_error((-rc) as i32)
}

fn check(rc: c_int) -> io::Result<c_int> {
    if rc < 0 {
        Err(err(rc as i64))
    } else {
        Ok(rc)
    }
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

/// Who connects, and what the configuration said, when a connect fails: enough
/// for the caller to say which of them was wrong.
#[derive(Debug)]
pub struct ConnectError {
    pub err: io::Error,
    /// `mon_host` as configured (empty: the configuration names no monitor).
    pub mon_host: String,
    /// `auth_client_required` as configured (`cephx`, `none`, or both).
    pub auth: String,
    /// `keyring` as configured: where the client looked for its key.
    pub keyring: String,
}

/// Who a client is: `client.USER` (None: `client.admin`), and its keyring file
/// (None: the configuration's `keyring` setting).
#[derive(Clone, Copy, Debug, Default)]
pub struct Credentials<'a> {
    pub user: Option<&'a str>,
    pub keyring: Option<&'a Path>,
}

/// A connected cluster handle.
pub struct Rados {
    h: rados_t,
}

// SAFETY: librados cluster handles may be used from any thread (see the module doc).
unsafe impl Send for Rados {}
// SAFETY: as above; librados serialises inside.
unsafe impl Sync for Rados {}

/// How long the client waits for the monitors and the OSDs before an error.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub mount: Duration,
    pub mon_op: Duration,
    pub osd_op: Duration,
}

impl Rados {
    /// Reads `conf`, bounds every wait by `t`, and connects as `who`.
    pub fn connect(conf: &Path, who: Credentials, t: Timeouts) -> Result<Arc<Rados>, ConnectError> {
        let bare = |err| ConnectError {
            err,
            mon_host: String::new(),
            auth: String::new(),
            keyring: String::new(),
        };
        load().map_err(bare)?;
        let r = Self::configure(conf, who, t).map_err(bare)?;
        // SAFETY: configured handle; connect blocks at most client_mount_timeout.
        match check(unsafe { rados_connect(r.h) }) {
            Ok(_) => Ok(Arc::new(r)),
            Err(err) => Err(ConnectError {
                err,
                mon_host: r.conf("mon_host"),
                auth: r.conf("auth_client_required"),
                keyring: r.conf("keyring"),
            }),
        }
    }

    fn configure(conf: &Path, who: Credentials, t: Timeouts) -> io::Result<Rados> {
        let id = who.user.map(cstr).transpose()?;
        let mut h: rados_t = ptr::null_mut();
        // SAFETY: `h` is a valid out-pointer; a null id means "admin"; `id` lives
        // across the call.
        check(unsafe { rados_create(&mut h, id.as_ref().map_or(ptr::null(), |i| i.as_ptr())) })?;
        let r = Rados { h };
        let path = cstr(&conf.to_string_lossy())?;
        // SAFETY: `r.h` was created above; `path` lives across the call.
        check(unsafe { rados_conf_read_file(r.h, path.as_ptr()) })?;
        if let Some(k) = who.keyring {
            r.set("keyring", &k.to_string_lossy())?;
        }
        for (k, v) in [
            ("client_mount_timeout", t.mount),
            ("rados_mon_op_timeout", t.mon_op),
            ("rados_osd_op_timeout", t.osd_op),
        ] {
            r.set(k, &v.as_secs().max(1).to_string())?;
        }
        // The client's own log would go where the config says (the cluster's
        // directory in tests): keep clients quiet and out of other people's files.
        r.set("log_file", "")?;
        r.set("log_to_stderr", "false")?;
        r.set("err_to_stderr", "false")?;
        r.set("admin_socket", "")?;
        Ok(r)
    }

    fn set(&self, key: &str, value: &str) -> io::Result<()> {
        let (k, v) = (cstr(key)?, cstr(value)?);
        // SAFETY: valid handle and C strings that live across the call.
        check(unsafe { rados_conf_set(self.h, k.as_ptr(), v.as_ptr()) }).map(|_| ())
    }

    /// A configuration value as the client sees it (e.g. `mon_host`).
    pub fn conf(&self, key: &str) -> String {
        let k = match cstr(key) {
            Ok(k) => k,
            Err(_) => return String::new(),
        };
        let mut buf = vec![0u8; 512];
        // SAFETY: `buf` has the length passed; librados NUL-terminates within it.
        let rc = unsafe { rados_conf_get(self.h, k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if rc < 0 {
            return String::new();
        }
        CStr::from_bytes_until_nul(&buf)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Waits until this client has the newest OSD map (after a blocklist, say).
    pub fn wait_for_latest_osdmap(&self) -> io::Result<()> {
        // SAFETY: connected handle.
        check(unsafe { rados_wait_for_latest_osdmap(self.h) }).map(|_| ())
    }

    /// Sends a JSON command to the monitors; returns its status text, or the error
    /// with that text.
    pub fn mon_command(&self, json: &str) -> Result<String, (io::Error, String)> {
        let cmd = cstr(json).map_err(|e| (e, String::new()))?;
        let mut cmds = [cmd.as_ptr()];
        let (mut out, mut outlen, mut outs, mut outslen) =
            (ptr::null_mut(), 0usize, ptr::null_mut(), 0usize);
        // SAFETY: one command string that lives across the call; the out-pointers are
        // valid and the buffers they receive are freed below.
        let rc = unsafe {
            rados_mon_command(
                self.h,
                cmds.as_mut_ptr(),
                1,
                ptr::null(),
                0,
                &mut out,
                &mut outlen,
                &mut outs,
                &mut outslen,
            )
        };
        let take = |p: *mut c_char, len: usize| -> String {
            if p.is_null() {
                return String::new();
            }
            // SAFETY: librados gave `len` valid bytes at `p`; freed once here.
            let s = unsafe { std::slice::from_raw_parts(p as *const u8, len) };
            let s = String::from_utf8_lossy(s).into_owned();
            // SAFETY: the buffer came from rados_mon_command.
            unsafe { rados_buffer_free(p) };
            s
        };
        let _ = take(out, outlen);
        let status = take(outs, outslen);
        if rc < 0 {
            Err((err(rc as i64), status))
        } else {
            Ok(status)
        }
    }

    /// The I/O context of `pool`; ENOENT when the pool does not exist.
    pub fn pool(self: &Arc<Self>, pool: &str) -> io::Result<IoCtx> {
        let name = cstr(pool)?;
        let mut io: rados_ioctx_t = ptr::null_mut();
        // SAFETY: connected handle, C string and out-pointer valid across the call.
        check(unsafe { rados_ioctx_create(self.h, name.as_ptr(), &mut io) })?;
        Ok(IoCtx {
            h: io,
            cluster: self.clone(),
        })
    }
}

impl Drop for Rados {
    fn drop(&mut self) {
        // SAFETY: every IoCtx holds an Arc of this handle, so none is left.
        unsafe { rados_shutdown(self.h) }
    }
}

/// One pool's I/O context.
pub struct IoCtx {
    h: rados_ioctx_t,
    cluster: Arc<Rados>,
}

// SAFETY: librados I/O contexts are thread-safe (see the module doc).
unsafe impl Send for IoCtx {}
// SAFETY: as above.
unsafe impl Sync for IoCtx {}

/// One locker of an object lock.
#[derive(Clone, Debug)]
pub struct Locker {
    pub client: String,
    pub cookie: String,
    pub addr: String,
}

impl IoCtx {
    pub fn cluster(&self) -> &Arc<Rados> {
        &self.cluster
    }

    /// Reads up to `buf.len()` bytes at `off`; returns how many the object had.
    pub fn read(&self, oid: &CStr, buf: &mut [u8], off: u64) -> io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` bytes of writing.
        let rc = unsafe {
            rados_read(
                self.h,
                oid.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                off,
            )
        };
        check(rc).map(|n| n as usize)
    }

    /// Writes `data` at `off` and waits until every replica has it.
    pub fn write(&self, oid: &CStr, data: &[u8], off: u64) -> io::Result<()> {
        // SAFETY: `data` is valid for `data.len()` bytes of reading.
        let rc =
            unsafe { rados_write(self.h, oid.as_ptr(), data.as_ptr().cast(), data.len(), off) };
        check(rc).map(|_| ())
    }

    /// Starts a write of `data` at `off`; the completion says when and how it ended.
    pub fn aio_write(&self, oid: &CStr, data: &[u8], off: u64) -> io::Result<Completion> {
        let c = Completion::new()?;
        // SAFETY: `data` is copied by librados before the call returns (module doc).
        check(unsafe {
            rados_aio_write(
                self.h,
                oid.as_ptr(),
                c.0,
                data.as_ptr().cast(),
                data.len(),
                off,
            )
        })?;
        Ok(c)
    }

    /// Removes the object `oid`, and waits for it.
    pub fn remove(&self, oid: &CStr) -> io::Result<()> {
        // SAFETY: valid context and name.
        check(unsafe { rados_remove(self.h, oid.as_ptr()) }).map(|_| ())
    }

    /// Starts removing the object `oid`; the completion says when and how it ended
    /// (ENOENT if there was none).
    pub fn aio_remove(&self, oid: &CStr) -> io::Result<Completion> {
        let c = Completion::new()?;
        // SAFETY: valid context, name and completion.
        check(unsafe { rados_aio_remove(self.h, oid.as_ptr(), c.0) })?;
        Ok(c)
    }

    /// Starts zeroing `len` bytes of `oid` at `off` (the OSD frees their space).
    pub fn aio_zero(&self, oid: &CStr, off: u64, len: u64) -> io::Result<Completion> {
        let c = Completion::new()?;
        // SAFETY: a new op, released right after operate, which moves its
        // operations into the request it sends (Objecter::prepare_mutate_op).
        let rc = unsafe {
            let op = rados_create_write_op();
            if op.is_null() {
                return Err(io::Error::from_raw_os_error(libc::ENOMEM));
            }
            rados_write_op_zero(op, off, len);
            let rc = rados_aio_write_op_operate(op, self.h, c.0, oid.as_ptr(), ptr::null_mut(), 0);
            rados_release_write_op(op);
            rc
        };
        check(rc)?;
        Ok(c)
    }

    /// Waits until every asynchronous write started so far is on every replica.
    pub fn flush(&self) -> io::Result<()> {
        // SAFETY: valid context.
        check(unsafe { rados_aio_flush(self.h) }).map(|_| ())
    }

    /// The object's size, or `None` if it does not exist.
    pub fn stat(&self, oid: &CStr) -> io::Result<Option<u64>> {
        let (mut size, mut mtime) = (0u64, 0i64);
        // SAFETY: valid out-pointers.
        match unsafe { rados_stat(self.h, oid.as_ptr(), &mut size, &mut mtime) } {
            rc if rc == -libc::ENOENT => Ok(None),
            rc => check(rc).map(|_| Some(size)),
        }
    }

    /// Creates `oid` with one extended attribute, atomically; EEXIST if it exists.
    pub fn create_exclusive(&self, oid: &CStr, xattr: &str, value: &[u8]) -> io::Result<()> {
        let name = cstr(xattr)?;
        // SAFETY: a new op, released below whatever happens.
        let op = unsafe { rados_create_write_op() };
        if op.is_null() {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        // SAFETY: `op` is valid; names and value live across operate, which copies them.
        let rc = unsafe {
            rados_write_op_create(op, CREATE_EXCLUSIVE, ptr::null());
            rados_write_op_setxattr(op, name.as_ptr(), value.as_ptr().cast(), value.len());
            let rc = rados_write_op_operate(op, self.h, oid.as_ptr(), ptr::null_mut(), 0);
            rados_release_write_op(op);
            rc
        };
        check(rc).map(|_| ())
    }

    pub fn getxattr(&self, oid: &CStr, name: &str) -> io::Result<Option<Vec<u8>>> {
        let n = cstr(name)?;
        let mut buf = vec![0u8; 4096];
        // SAFETY: `buf` is valid for its length.
        let rc = unsafe {
            rados_getxattr(
                self.h,
                oid.as_ptr(),
                n.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if rc == -libc::ENODATA {
            return Ok(None);
        }
        let len = check(rc)? as usize;
        buf.truncate(len);
        Ok(Some(buf))
    }

    pub fn setxattr(&self, oid: &CStr, name: &str, value: &[u8]) -> io::Result<()> {
        let n = cstr(name)?;
        // SAFETY: `value` is valid for its length.
        let rc = unsafe {
            rados_setxattr(
                self.h,
                oid.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
            )
        };
        check(rc).map(|_| ())
    }

    pub fn rmxattr(&self, oid: &CStr, name: &str) -> io::Result<()> {
        let n = cstr(name)?;
        // SAFETY: valid strings.
        match unsafe { rados_rmxattr(self.h, oid.as_ptr(), n.as_ptr()) } {
            rc if rc == -libc::ENODATA => Ok(()),
            rc => check(rc).map(|_| ()),
        }
    }

    /// Takes (or with `flags`, renews) the exclusive lock `name` on `oid` for `duration`.
    pub fn lock_exclusive(
        &self,
        oid: &CStr,
        name: &str,
        cookie: &str,
        desc: &str,
        duration: Duration,
        flags: u8,
    ) -> io::Result<()> {
        let (n, c, d) = (cstr(name)?, cstr(cookie)?, cstr(desc)?);
        let mut tv = libc::timeval {
            tv_sec: duration.as_secs() as libc::time_t,
            tv_usec: duration.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: valid strings and timeval across the call.
        let rc = unsafe {
            rados_lock_exclusive(
                self.h,
                oid.as_ptr(),
                n.as_ptr(),
                c.as_ptr(),
                d.as_ptr(),
                &mut tv,
                flags,
            )
        };
        check(rc).map(|_| ())
    }

    pub fn unlock(&self, oid: &CStr, name: &str, cookie: &str) -> io::Result<()> {
        let (n, c) = (cstr(name)?, cstr(cookie)?);
        // SAFETY: valid strings.
        check(unsafe { rados_unlock(self.h, oid.as_ptr(), n.as_ptr(), c.as_ptr()) }).map(|_| ())
    }

    pub fn break_lock(&self, oid: &CStr, name: &str, l: &Locker) -> io::Result<()> {
        let (n, cl, co) = (cstr(name)?, cstr(&l.client)?, cstr(&l.cookie)?);
        // SAFETY: valid strings.
        let rc =
            unsafe { rados_break_lock(self.h, oid.as_ptr(), n.as_ptr(), cl.as_ptr(), co.as_ptr()) };
        check(rc).map(|_| ())
    }

    /// Who holds the lock `name` on `oid` (empty if nobody, or the object is missing).
    pub fn lockers(&self, oid: &CStr, name: &str) -> io::Result<Vec<Locker>> {
        let n = cstr(name)?;
        let mut cap = 1024usize;
        loop {
            let mut excl: c_int = 0;
            let (mut tag, mut clients, mut cookies, mut addrs) = (
                vec![0u8; cap],
                vec![0u8; cap],
                vec![0u8; cap],
                vec![0u8; cap],
            );
            let (mut tl, mut cl, mut kl, mut al) = (cap, cap, cap, cap);
            // SAFETY: four buffers of `cap` bytes each, with their lengths beside them.
            let rc = unsafe {
                rados_list_lockers(
                    self.h,
                    oid.as_ptr(),
                    n.as_ptr(),
                    &mut excl,
                    tag.as_mut_ptr().cast(),
                    &mut tl,
                    clients.as_mut_ptr().cast(),
                    &mut cl,
                    cookies.as_mut_ptr().cast(),
                    &mut kl,
                    addrs.as_mut_ptr().cast(),
                    &mut al,
                )
            };
            if rc == -(libc::ERANGE as isize) && cap < 1 << 20 {
                cap *= 8;
                continue;
            }
            if rc == -(libc::ENOENT as isize) {
                return Ok(Vec::new());
            }
            if rc < 0 {
                return Err(err(rc as i64));
            }
            let split = |b: &[u8], len: usize| -> Vec<String> {
                b[..len.min(b.len())]
                    .split(|&c| c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            };
            let (c, k, a) = (split(&clients, cl), split(&cookies, kl), split(&addrs, al));
            return Ok(c
                .into_iter()
                .zip(k)
                .zip(a)
                .map(|((client, cookie), addr)| Locker {
                    client,
                    cookie,
                    addr,
                })
                .collect());
        }
    }
}

impl Drop for IoCtx {
    fn drop(&mut self) {
        // SAFETY: made by rados_ioctx_create, destroyed once; its cluster lives on
        // (self.cluster) until after this.
        unsafe { rados_ioctx_destroy(self.h) }
    }
}

/// An asynchronous write in flight, or finished.
pub struct Completion(rados_completion_t);

// SAFETY: completions may be waited on and released from any thread.
unsafe impl Send for Completion {}

impl Completion {
    fn new() -> io::Result<Completion> {
        let mut c: rados_completion_t = ptr::null_mut();
        // SAFETY: no callbacks; `c` is a valid out-pointer.
        check(unsafe {
            rados_aio_create_completion(ptr::null_mut(), ptr::null_mut(), ptr::null_mut(), &mut c)
        })?;
        Ok(Completion(c))
    }

    pub fn is_complete(&self) -> bool {
        // SAFETY: a live completion.
        unsafe { rados_aio_is_complete(self.0) != 0 }
    }

    /// Waits for the write, then says how it ended.
    pub fn wait(&self) -> io::Result<()> {
        // SAFETY: a live completion.
        let rc = unsafe {
            rados_aio_wait_for_complete(self.0);
            rados_aio_get_return_value(self.0)
        };
        check(rc).map(|_| ())
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        // SAFETY: made by rados_aio_create_completion; released once. Releasing a
        // completion still in flight is allowed: librados keeps it until the write ends.
        unsafe { rados_aio_release(self.0) }
    }
}
