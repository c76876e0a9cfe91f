//! The API's listeners: a unix socket always, TCP when asked, and the small
//! HTTP/1.1 server behind them.
//!
//! The server is its own (std listeners and httparse) because every connection
//! must be bounded in time: a client that sends its request slowly, or never reads
//! its reply, must not hold a thread for ever, and an event stream must leave the
//! workers for a thread of its own. Each listener has an accept thread; accepted
//! connections go through a bounded queue to [`WORKERS`] workers. A worker reads
//! one request (head and body within [`REQUEST_TIME`], the body at most
//! [`MAX_BODY`]), checks the token if the listener is TCP, answers, and closes the
//! connection: no keep-alive, so no idle client holds a worker.
//!
//! Who may do what: the unix socket is mode 0600, so whoever reaches it may read
//! the store anyway, and it takes no token. On TCP every `/api/` request needs
//! `Authorization: Bearer TOKEN`, compared in constant time; the console's page and
//! assets hold no data and load without it. No CORS header is ever sent (a page of
//! another origin cannot read a reply) and no cookie is ever set (so there is no
//! cross-site request to forge).
//!
//! The FUSE service never waits on a client: the volume is called only once a
//! request is read whole, and an event stream holds a channel receiver, never a
//! lock (the volume's sends on it never block).

use super::{console, error, handle_with, EventDoc, MountCtx, Reply, MAX_BODY};
use crate::volume::Volume;
use crossbeam::channel::{Receiver, RecvTimeoutError};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Threads answering requests (event streams have their own).
pub const WORKERS: usize = 2;
/// A request's head and body must arrive within this.
pub const REQUEST_TIME: Duration = Duration::from_secs(10);
/// A reply must be taken by the client within this.
const WRITE_TIME: Duration = Duration::from_secs(10);
/// The largest request head (request line and headers).
const MAX_HEAD: usize = 16 * 1024;
/// Accepted connections waiting for a worker; more are turned away with 503.
const QUEUE: usize = 64;
/// Event streams open at once.
pub const MAX_STREAMS: usize = 16;
/// An idle event stream gets a comment this often, so a client that went away is
/// noticed (its write fails) and its thread ends.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// A TCP listener's bearer token: 32 random bytes from the OS's CSPRNG, in hex.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub fn random() -> io::Result<Token> {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).map_err(|e| io::Error::other(format!("no random bytes: {e}")))?;
        Ok(Token(b.iter().map(|x| format!("{x:02x}")).collect()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Does an `Authorization` header carry this token? Constant time in the
    /// token's bytes: every byte is compared whatever the first difference (the
    /// length, 64, is no secret).
    pub fn admits(&self, authorization: Option<&str>) -> bool {
        let Some(given) = authorization.and_then(|h| h.strip_prefix("Bearer ")) else {
            return false;
        };
        let (a, b) = (given.trim().as_bytes(), self.0.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
        std::hint::black_box(diff) == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

enum Bound {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener, Token),
}

enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    fn set_read_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_read_timeout(Some(t)),
            Conn::Tcp(s) => s.set_read_timeout(Some(t)),
        }
    }

    fn set_write_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_write_timeout(Some(t)),
            Conn::Tcp(s) => s.set_write_timeout(Some(t)),
        }
    }
}

/// Closes a connection whose request was refused before it was read whole: the
/// reply first, then what the client still sends is read and dropped for a moment,
/// so the close does not reset the connection before the client reads the reply.
fn linger(mut conn: Conn) {
    let _ = match &conn {
        Conn::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        Conn::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut sink = [0u8; 8192];
    let mut left = 4 * MAX_BODY as usize;
    while left > 0 && Instant::now() < deadline {
        let _ = conn.set_read_timeout(Duration::from_millis(200));
        match conn.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.flush(),
            Conn::Tcp(s) => s.flush(),
        }
    }
}

impl Bound {
    fn accept(&self) -> io::Result<Conn> {
        match self {
            Bound::Unix(l, _) => l.accept().map(|(s, _)| Conn::Unix(s)),
            Bound::Tcp(l, _) => l.accept().map(|(s, _)| Conn::Tcp(s)),
        }
    }

    /// Wakes the accept thread (after `stop` is set) by connecting once.
    fn wake(&self) {
        match self {
            Bound::Unix(_, p) => drop(UnixStream::connect(p)),
            Bound::Tcp(l, _) => {
                if let Ok(mut a) = l.local_addr() {
                    if a.ip().is_unspecified() {
                        a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                    }
                    drop(TcpStream::connect_timeout(&a, Duration::from_secs(1)));
                }
            }
        }
    }

    fn token(&self) -> Option<&Token> {
        match self {
            Bound::Unix(..) => None,
            Bound::Tcp(_, t) => Some(t),
        }
    }
}

/// The API's listeners and threads; dropping it stops them and removes the files
/// it made (the socket, and for TCP the token and console files).
pub struct Api {
    stop: Arc<AtomicBool>,
    /// The daemon's mounts, once it hands them over (`/api/v1/mounts`).
    mounts: Arc<OnceLock<MountCtx>>,
    listeners: Vec<Arc<Bound>>,
    threads: Vec<JoinHandle<()>>,
    files: Vec<PathBuf>,
    tcp: Option<SocketAddr>,
}

/// The file beside a store that holds its TCP listener's token (mode 0600).
pub fn token_path(store: &Path) -> PathBuf {
    beside(store, ".token")
}

/// The file beside a store that holds its console's URL, while it has one.
pub fn console_path(store: &Path) -> PathBuf {
    beside(store, ".console")
}

pub(super) fn beside(store: &Path, suffix: &str) -> PathBuf {
    let mut s = store.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn remove_stale(p: &Path) -> io::Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes `text` to a new file at `p` that only its owner may read.
fn write_private(p: &Path, text: &str) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    remove_stale(p)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

impl Api {
    /// Serves `vol` on a unix socket at `socket` (mode 0600) only.
    pub fn serve_unix(vol: Arc<Volume>, socket: &Path) -> io::Result<Api> {
        Api::serve(vol, socket, None)
    }

    /// Serves the API of the store at `store`: on `STORE.sock`, and if `listen` is
    /// given on TCP too, with a new token in `STORE.token` and the console's URL in
    /// `STORE.console` (both mode 0600). Files left by an earlier daemon go (the
    /// store's lock says no other daemon serves this store).
    pub fn serve_store(
        vol: Arc<Volume>,
        store: &Path,
        listen: Option<SocketAddr>,
    ) -> io::Result<Api> {
        let (token_file, console_file) = (token_path(store), console_path(store));
        remove_stale(&token_file)?;
        remove_stale(&console_file)?;
        let tcp = listen
            .map(|a| Token::random().map(|t| (a, t)))
            .transpose()?;
        let token = tcp.as_ref().map(|(_, t)| t.clone());
        let mut api = Api::serve(vol, &super::socket_path(store), tcp)?;
        if let (Some(token), Some(addr)) = (token, api.tcp) {
            api.files.push(token_file.clone());
            write_private(&token_file, &format!("{}\n", token.as_str()))?;
            api.files.push(console_file.clone());
            write_private(&console_file, &format!("{}\n", console_url(addr)))?;
        }
        Ok(api)
    }

    /// Answers `/api/v1/mounts` from now on with the daemon's `sessions`.
    pub fn serve_mounts(&self, sessions: Arc<crate::fs::Sessions>) {
        let _ = self.mounts.set(MountCtx {
            sessions,
            listen: self.tcp,
        });
    }

    /// Serves `vol` on the unix socket `socket`, replacing a stale one, and on TCP
    /// at `tcp`'s address (port 0: any free port) with its token.
    pub fn serve(
        vol: Arc<Volume>,
        socket: &Path,
        tcp: Option<(SocketAddr, Token)>,
    ) -> io::Result<Api> {
        use std::os::unix::fs::PermissionsExt;
        remove_stale(socket)?;
        let unix = UnixListener::bind(socket)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", socket.display())))?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
        let mut api = Api {
            stop: Arc::new(AtomicBool::new(false)),
            mounts: Arc::default(),
            listeners: vec![Arc::new(Bound::Unix(unix, socket.to_owned()))],
            threads: Vec::new(),
            files: vec![socket.to_owned()],
            tcp: None,
        };
        if let Some((addr, token)) = tcp {
            let l = TcpListener::bind(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            api.tcp = Some(l.local_addr()?);
            api.listeners.push(Arc::new(Bound::Tcp(l, token)));
        }
        let (tx, rx) = crossbeam::channel::bounded::<(Conn, Arc<Bound>)>(QUEUE);
        let streams = Arc::new(AtomicUsize::new(0));
        for i in 0..WORKERS {
            let (rx, vol, stop, streams, mounts) = (
                rx.clone(),
                vol.clone(),
                api.stop.clone(),
                streams.clone(),
                api.mounts.clone(),
            );
            api.threads.push(
                std::thread::Builder::new()
                    .name(format!("clonefs-api-{i}"))
                    .spawn(move || {
                        for (conn, bound) in rx {
                            let mounts = mounts.get();
                            serve_conn(&vol, mounts, conn, bound.token(), &stop, &streams);
                        }
                    })?,
            );
        }
        for bound in api.listeners.clone() {
            let (tx, stop) = (tx.clone(), api.stop.clone());
            api.threads.push(
                std::thread::Builder::new()
                    .name("clonefs-api-accept".into())
                    .spawn(move || accept(&bound, &tx, &stop))?,
            );
        }
        Ok(api)
    }

    /// The TCP listener's address, if there is one (with the port it got).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }
}

/// The console's URL for a listener at `addr` (one that listens on every address
/// is reached on loopback from here).
pub fn console_url(mut addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    format!("http://{addr}/")
}

fn accept(
    bound: &Arc<Bound>,
    tx: &crossbeam::channel::Sender<(Conn, Arc<Bound>)>,
    stop: &AtomicBool,
) {
    loop {
        let conn = bound.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match conn {
            Ok(conn) => {
                if let Err(e) = tx.try_send((conn, bound.clone())) {
                    let (mut conn, _) = e.into_inner();
                    let _ = conn.set_write_timeout(Duration::from_secs(1));
                    let r = error(
                        503,
                        "Busy",
                        "the API has too many requests waiting: try again",
                    );
                    let _ = write_reply(&mut conn, &r, "application/json", &[]);
                }
            }
            Err(e) => {
                log::warn!("api: accept failed: {e}");
                // EMFILE and the like: give the workers time to close connections.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for l in &self.listeners {
            l.wake();
        }
        // The accept threads end, dropping the queue's senders, so the workers end
        // once the requests in hand are answered (each bounded in time).
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// One request as read from a connection.
struct Request {
    method: String,
    url: String,
    authorization: Option<String>,
    body: Vec<u8>,
}

/// Reads more of the request into `buf` before `deadline`; Err(None): the client
/// went away; Err(Some(reply)): answer that and close.
fn read_more(conn: &mut Conn, buf: &mut Vec<u8>, deadline: Instant) -> Result<(), Option<Reply>> {
    let left = deadline.saturating_duration_since(Instant::now());
    let timeout = || {
        Some(error(
            408,
            "Timeout",
            format!(
                "the request did not arrive within {} s",
                REQUEST_TIME.as_secs()
            ),
        ))
    };
    if left.is_zero() {
        return Err(timeout());
    }
    conn.set_read_timeout(left).map_err(|_| None)?;
    let mut chunk = [0u8; 8192];
    match conn.read(&mut chunk) {
        Ok(0) => Err(None),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(timeout())
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
        Err(_) => Err(None),
    }
}

fn read_request(conn: &mut Conn) -> Result<Request, Option<Reply>> {
    let deadline = Instant::now() + REQUEST_TIME;
    let mut buf = Vec::with_capacity(2048);
    let (head_len, method, url, authorization, length, chunked) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
                return Err(Some(error(
                    431,
                    "HeadTooLarge",
                    format!("the request's head is over {MAX_HEAD} bytes"),
                )))
            }
            Ok(httparse::Status::Complete(n)) => {
                let header = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).into_owned())
                };
                let length = match header("Content-Length").map(|v| v.trim().parse::<u64>()) {
                    None => 0,
                    Some(Ok(l)) => l,
                    Some(Err(_)) => {
                        return Err(Some(error(
                            400,
                            "InvalidRequest",
                            "Content-Length is not a number",
                        )))
                    }
                };
                break (
                    n,
                    req.method.unwrap_or("").to_owned(),
                    req.path.unwrap_or("").to_owned(),
                    header("Authorization"),
                    length,
                    header("Transfer-Encoding").is_some(),
                );
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(Some(error(
                    431,
                    "HeadTooLarge",
                    format!("the request's head is over {MAX_HEAD} bytes"),
                )))
            }
            Ok(httparse::Status::Partial) => read_more(conn, &mut buf, deadline)?,
            Err(e) => {
                return Err(Some(error(
                    400,
                    "InvalidRequest",
                    format!("not an HTTP/1.1 request: {e}"),
                )))
            }
        }
    };
    if chunked {
        return Err(Some(error(
            411,
            "LengthRequired",
            "send the body with a Content-Length, not chunked",
        )));
    }
    if length > MAX_BODY {
        return Err(Some(error(
            413,
            "BodyTooLarge",
            format!("request bodies are at most {MAX_BODY} bytes"),
        )));
    }
    let end = head_len + length as usize;
    while buf.len() < end {
        read_more(conn, &mut buf, deadline)?;
    }
    buf.truncate(end);
    Ok(Request {
        method,
        url,
        authorization,
        body: buf.split_off(head_len),
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "Error",
    }
}

fn write_reply(
    conn: &mut Conn,
    r: &Reply,
    content_type: &str,
    extra: &[(&str, &str)],
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nConnection: close\r\nCache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\n",
        r.status,
        reason(r.status)
    );
    if r.status != 204 {
        head += &format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            r.body.len()
        );
    }
    for (k, v) in extra {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    conn.write_all(head.as_bytes())?;
    if r.status != 204 {
        conn.write_all(r.body.as_bytes())?;
    }
    conn.flush()
}

fn serve_conn(
    vol: &Arc<Volume>,
    mounts: Option<&MountCtx>,
    mut conn: Conn,
    token: Option<&Token>,
    stop: &Arc<AtomicBool>,
    streams: &Arc<AtomicUsize>,
) {
    let _ = conn.set_write_timeout(WRITE_TIME);
    let req = match read_request(&mut conn) {
        Ok(r) => r,
        Err(None) => return,
        Err(Some(r)) => {
            let _ = write_reply(&mut conn, &r, "application/json", &[]);
            linger(conn);
            return;
        }
    };
    let path = req.url.split('?').next().unwrap_or("");
    if let Some((ctype, page)) = console::asset(&req.method, path) {
        let r = Reply {
            status: 200,
            body: page.into(),
        };
        let _ = write_reply(&mut conn, &r, ctype, console::HEADERS);
        return;
    }
    if let Some(t) = token {
        if path.starts_with("/api/") && !t.admits(req.authorization.as_deref()) {
            let r = error(
                401,
                "Unauthorized",
                "this listener needs Authorization: Bearer TOKEN, with the token in STORE.token \
                 (clonefs console MOUNTPOINT prints the console's URL with it)",
            );
            log::info!("api: {} {} -> 401", req.method, path);
            let _ = write_reply(
                &mut conn,
                &r,
                "application/json",
                &[("WWW-Authenticate", "Bearer")],
            );
            return;
        }
    }
    if req.method == "GET" && path == "/api/v1/events" {
        return open_stream(vol, conn, stop, streams);
    }
    if token.is_some() && req.method == "POST" && path == "/api/v1/mounts" {
        let r = error(
            403,
            "Forbidden",
            "mounts are made over the unix socket beside the store only (clonefs mount \
             STORE MOUNTPOINT does it), never over TCP",
        );
        let _ = write_reply(&mut conn, &r, "application/json", &[]);
        return;
    }
    let r = handle_with(vol, mounts, &req.method, &req.url, &req.body);
    log::debug!("api: {} {} -> {}", req.method, path, r.status);
    let _ = write_reply(&mut conn, &r, "application/json", &[]);
}

/// Hands the connection to a thread of its own that writes the volume's events.
fn open_stream(vol: &Volume, mut conn: Conn, stop: &Arc<AtomicBool>, streams: &Arc<AtomicUsize>) {
    if streams.fetch_add(1, Ordering::SeqCst) >= MAX_STREAMS {
        streams.fetch_sub(1, Ordering::SeqCst);
        let r = error(
            503,
            "TooManyStreams",
            format!("at most {MAX_STREAMS} event streams are served at once: close one"),
        );
        let _ = write_reply(&mut conn, &r, "application/json", &[]);
        return;
    }
    // Watching before the head is sent: a client that has the head misses no event.
    let events = vol.watch();
    let (stop, streams) = (stop.clone(), streams.clone());
    let spawned = std::thread::Builder::new()
        .name("clonefs-api-events".into())
        .spawn(move || {
            stream(conn, &events, &stop);
            streams.fetch_sub(1, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        log::warn!("api: no thread for an event stream: {e}");
    }
}

fn stream(mut conn: Conn, events: &Receiver<crate::volume::Event>, stop: &AtomicBool) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
                Connection: close\r\nX-Content-Type-Options: nosniff\r\n\r\n: clonefs events\n\n";
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut quiet = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let text = match events.recv_timeout(Duration::from_millis(500)) {
            Ok(e) => {
                let doc = serde_json::to_string(&EventDoc::from(&e)).expect("events serialize");
                format!("data: {doc}\n\n")
            }
            Err(RecvTimeoutError::Timeout) if quiet.elapsed() >= HEARTBEAT => ": ping\n\n".into(),
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if conn
            .write_all(text.as_bytes())
            .and_then(|_| conn.flush())
            .is_err()
        {
            return;
        }
        quiet = Instant::now();
    }
}
