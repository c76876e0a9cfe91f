//! The listeners, over real sockets: TCP with and without the token for every
//! route, the unix socket without one, the console's page, the event stream, and
//! requests out of bounds in size and time.

use super::client::{call_tcp, exchange, Answer};
use super::*;
use crate::volume::NewInode;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Served {
    vol: Arc<Volume>,
    addr: SocketAddr,
    token: String,
    sock: PathBuf,
    store: PathBuf,
    api: Option<Api>,
    _dir: tempfile::TempDir,
}

fn served() -> Served {
    use std::os::unix::fs::PermissionsExt;
    let (vol, _dev) = Volume::in_memory(4096, 2048).unwrap();
    let who = NewInode::dir_of_this_process();
    vol.create_cluster("prod", who).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s.clonefs");
    let api = Api::serve_store(vol.clone(), &store, Some("127.0.0.1:0".parse().unwrap())).unwrap();
    let addr = api.tcp_addr().unwrap();
    assert_ne!(addr.port(), 0);
    let token_file = token_path(&store);
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(token.len(), 64);
    let url = std::fs::read_to_string(console_path(&store)).unwrap();
    assert_eq!(url.trim(), format!("http://{addr}/"));
    Served {
        vol,
        addr,
        token,
        sock: socket_path(&store),
        store,
        api: Some(api),
        _dir: dir,
    }
}

fn error_code(a: &Answer) -> String {
    serde_json::from_slice::<ErrorBody>(&a.body)
        .map(|e| e.error.code)
        .unwrap_or_else(|_| panic!("not an error body: {}", String::from_utf8_lossy(&a.body)))
}

/// The body each route takes, for cluster `name` (numbered `i` so names differ).
fn body_for(method: &str, path: &str, i: usize) -> Option<serde_json::Value> {
    match (method, path) {
        ("POST", "/api/v1/clusters") => Some(serde_json::json!({"name": format!("new-{i}")})),
        ("POST", "/api/v1/clusters/{name}/clones") => {
            Some(serde_json::json!({"name": format!("clone-{i}")}))
        }
        ("POST", "/api/v1/clusters/{name}/reset") => Some(serde_json::json!({})),
        ("PATCH", _) => Some(serde_json::json!({"protected": false})),
        _ => None,
    }
}

#[test]
fn every_route_needs_the_token_on_tcp_and_none_on_the_unix_socket() {
    let s = served();
    let wrong = {
        let mut w = s.token.clone().into_bytes();
        w[63] = if w[63] == b'0' { b'1' } else { b'0' };
        String::from_utf8(w).unwrap()
    };
    for (i, (method, path)) in ROUTES.iter().enumerate() {
        let name = format!("tcp-{i}");
        s.vol
            .clone_with("prod", &name, &Default::default())
            .unwrap();
        let url = path.replace("{name}", &name);
        let body = body_for(method, path, i);
        for token in [None, Some(wrong.as_str()), Some(&s.token[..32]), Some("")] {
            let a = call_tcp(s.addr, token, method, &url, body.as_ref()).unwrap();
            assert_eq!(
                (a.status, error_code(&a)),
                (401, "Unauthorized".into()),
                "{method} {url} with {token:?}"
            );
            assert_eq!(a.header("WWW-Authenticate"), Some("Bearer"));
        }
        if *path == "/api/v1/events" {
            continue; // a stream that never ends: see the events test
        }
        if (*method, *path) == ("POST", "/api/v1/mounts") {
            // Never on TCP; on the socket it mounts for real (tests/mount_points.rs).
            let a = call_tcp(
                s.addr,
                Some(&s.token),
                method,
                &url,
                Some(&serde_json::json!({})),
            )
            .unwrap();
            assert_eq!(a.status, 403, "{}", String::from_utf8_lossy(&a.body));
            continue;
        }
        let a = call_tcp(s.addr, Some(&s.token), method, &url, body.as_ref()).unwrap();
        assert!(
            (200..300).contains(&a.status),
            "{method} {url} with the token: {} {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
        assert!(a.status == 204 || serde_json::from_slice::<serde_json::Value>(&a.body).is_ok());

        // The unix socket: no token asked.
        let name = format!("unix-{i}");
        s.vol
            .clone_with("prod", &name, &Default::default())
            .unwrap();
        let url = path.replace("{name}", &name);
        let body = body_for(method, path, i + 100);
        let (status, reply) = client::call(&s.sock, method, &url, body.as_ref()).unwrap();
        assert!(
            (200..300).contains(&status),
            "{method} {url} on the socket: {status} {}",
            String::from_utf8_lossy(&reply)
        );
    }
    // Other schemes and a token elsewhere than the header are refused too.
    let mut raw = TcpStream::connect(s.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let basic = format!("Basic {}", s.token);
    let a = exchange(
        &mut raw,
        "tcp",
        "GET",
        &format!("/api/v1/clusters?token={}", s.token),
        &[("Authorization", &basic)],
        b"",
    )
    .unwrap();
    assert_eq!(a.status, 401);
}

#[test]
fn every_error_comes_over_tcp_with_its_status_and_code() {
    let s = served();
    let t = Some(s.token.as_str());
    let cases: &[(&str, &str, serde_json::Value, u16, &str)] = &[
        (
            "POST",
            "/api/v1/clusters/prod/clones",
            serde_json::json!({"name": "bad name!"}),
            400,
            "InvalidName",
        ),
        (
            "POST",
            "/api/v1/clusters",
            serde_json::json!({"name": "prod"}),
            409,
            "AlreadyExists",
        ),
        (
            "GET",
            "/api/v1/clusters/nope",
            serde_json::Value::Null,
            404,
            "NotFound",
        ),
        (
            "POST",
            "/api/v1/clusters/prod/clones",
            serde_json::json!({"name": "x", "restore_to_time": "soon"}),
            400,
            "InvalidTime",
        ),
        (
            "POST",
            "/api/v1/clusters/prod/clones",
            serde_json::json!({"nom": "x"}),
            400,
            "InvalidRequest",
        ),
        (
            "PUT",
            "/api/v1/clusters/prod",
            serde_json::Value::Null,
            405,
            "MethodNotAllowed",
        ),
        (
            "GET",
            "/api/v2/clusters",
            serde_json::Value::Null,
            404,
            "NoSuchRoute",
        ),
    ];
    for (method, path, body, status, want) in cases {
        let body = (!body.is_null()).then_some(body);
        let a = call_tcp(s.addr, t, method, path, body).unwrap();
        assert_eq!(
            (a.status, error_code(&a)),
            (*status, want.to_string()),
            "{method} {path}"
        );
        assert_eq!(a.header("Content-Type"), Some("application/json"));
    }
    s.vol.set_protected("prod", true).unwrap();
    let a = call_tcp::<()>(s.addr, t, "DELETE", "/api/v1/clusters/prod", None).unwrap();
    assert_eq!((a.status, error_code(&a)), (403, "Protected".into()));
    // Bodies too large, chunked, heads too large, and not HTTP at all.
    let big = serde_json::json!({"name": "x".repeat(MAX_BODY as usize)});
    let a = call_tcp(s.addr, t, "POST", "/api/v1/clusters", Some(&big)).unwrap();
    assert_eq!((a.status, error_code(&a)), (413, "BodyTooLarge".into()));
    let raw = |text: &[u8]| {
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(text).unwrap();
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut c, &mut out);
        out
    };
    let r = raw(b"POST /api/v1/clusters HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 413 "), "{r}");
    let r = raw(b"POST /api/v1/clusters HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    assert!(
        r.starts_with("HTTP/1.1 411 ") && r.contains("LengthRequired"),
        "{r}"
    );
    let r = raw(format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000)).as_bytes());
    assert!(
        r.starts_with("HTTP/1.1 431 ") && r.contains("HeadTooLarge"),
        "{r}"
    );
    let r = raw(b"\x16\x03\x01 hello\r\n\r\n");
    assert!(
        r.starts_with("HTTP/1.1 400 ") && r.contains("InvalidRequest"),
        "{r}"
    );
}

#[test]
fn a_request_that_never_arrives_whole_is_dropped_after_its_time() {
    let s = served();
    let mut slow = TcpStream::connect(s.addr).unwrap();
    slow.set_read_timeout(Some(REQUEST_TIME * 3)).unwrap();
    let start = Instant::now();
    slow.write_all(b"GET /api/v1/clusters HTTP/1.1\r\nAuthorization: Bea")
        .unwrap();
    // The other worker still answers meanwhile.
    let a = call_tcp::<()>(s.addr, Some(&s.token), "GET", "/api/v1/clusters", None).unwrap();
    assert_eq!(a.status, 200);
    let mut out = String::new();
    let _ = std::io::Read::read_to_string(&mut slow, &mut out);
    let took = start.elapsed();
    assert!(
        out.starts_with("HTTP/1.1 408 ") && out.contains("Timeout"),
        "{out}"
    );
    assert!(
        took >= REQUEST_TIME - Duration::from_millis(100) && took < REQUEST_TIME * 2,
        "{took:?}"
    );
}

#[test]
fn the_console_loads_without_a_token_and_nothing_is_cross_origin() {
    let s = served();
    let mut answers = Vec::new();
    for (path, ctype, has) in [
        ("/", "text/html", "console.js"),
        ("/console.js", "text/javascript", "Authorization"),
        ("/console.css", "text/css", ".card"),
    ] {
        let a = call_tcp::<()>(s.addr, None, "GET", path, None).unwrap();
        assert_eq!(a.status, 200, "{path}");
        assert!(
            a.header("Content-Type").unwrap().starts_with(ctype),
            "{path}"
        );
        assert!(String::from_utf8_lossy(&a.body).contains(has), "{path}");
        assert!(a
            .header("Content-Security-Policy")
            .unwrap()
            .contains("default-src 'none'"));
        answers.push(a);
    }
    // The page is the same on the socket; nothing else outside /api/ is served.
    let (status, page) = client::call::<()>(&s.sock, "GET", "/", None).unwrap();
    assert_eq!((status, page), (200, answers[0].body.clone()));
    let a = call_tcp::<()>(s.addr, None, "GET", "/etc/passwd", None).unwrap();
    assert_eq!((a.status, error_code(&a)), (404, "NoSuchRoute".into()));
    answers.push(a);
    // A preflight from another origin gets no CORS header, and no reply sets a cookie.
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let pre = exchange(
        &mut c,
        "tcp",
        "OPTIONS",
        "/api/v1/clusters",
        &[
            ("Origin", "http://evil.example"),
            ("Access-Control-Request-Method", "DELETE"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(pre.status, 401);
    answers.push(pre);
    answers.push(call_tcp::<()>(s.addr, Some(&s.token), "GET", "/api/v1/clusters", None).unwrap());
    for a in &answers {
        for (name, _) in &a.headers {
            let n = name.to_ascii_lowercase();
            assert!(
                !n.starts_with("access-control-") && n != "set-cookie",
                "{name}"
            );
        }
    }
}

/// Reads server-sent events from `r` until `n` data lines came.
fn read_events(r: &mut BufReader<TcpStream>, n: usize) -> Vec<EventDoc> {
    let mut out = Vec::new();
    let mut line = String::new();
    while out.len() < n {
        line.clear();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "the stream ended after {out:?}"
        );
        if let Some(data) = line.strip_prefix("data: ") {
            out.push(serde_json::from_str(data).unwrap());
        }
    }
    out
}

fn open_events(s: &Served) -> BufReader<TcpStream> {
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        c,
        "GET /api/v1/events HTTP/1.1\r\nAuthorization: Bearer {}\r\n\r\n",
        s.token
    )
    .unwrap();
    let mut r = BufReader::new(c);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 200 OK\r\n");
    while line != "\r\n" {
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(!line.to_ascii_lowercase().starts_with("access-control-"));
    }
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, ": clonefs events\n");
    r
}

#[test]
fn events_stream_each_change_to_every_listener_without_holding_a_worker() {
    let s = served();
    // More streams than workers: the API still answers.
    let mut streams: Vec<_> = (0..WORKERS + 2).map(|_| open_events(&s)).collect();
    let t = Some(s.token.as_str());
    let made = call_tcp(
        s.addr,
        t,
        "POST",
        "/api/v1/clusters/prod/clones",
        Some(&CreateClone {
            name: "ev".into(),
            ..Default::default()
        }),
    )
    .unwrap();
    assert_eq!(made.status, 201);
    let (status, _) = client::call(
        &s.sock,
        "POST",
        "/api/v1/clusters/ev/reset",
        Some(&ResetCluster::default()),
    )
    .unwrap();
    assert_eq!(status, 200);
    s.vol.delete_cluster("ev").unwrap();
    let want = |kind: &str| EventDoc {
        kind: kind.into(),
        cluster: "ev".into(),
    };
    for r in &mut streams {
        assert_eq!(
            read_events(r, 3),
            [want("created"), want("reset"), want("deleted")]
        );
    }
    // Without the token, no stream.
    let a = call_tcp::<()>(s.addr, None, "GET", "/api/v1/events", None).unwrap();
    assert_eq!(a.status, 401);
    // Up to MAX_STREAMS at once, then 503.
    let mut more: Vec<_> = (streams.len()..MAX_STREAMS)
        .map(|_| open_events(&s))
        .collect();
    let a = call_tcp::<()>(s.addr, t, "GET", "/api/v1/events", None).unwrap();
    assert_eq!((a.status, error_code(&a)), (503, "TooManyStreams".into()));
    more.clear();
    streams.clear();
    // The API goes, its files with it, and the streams end.
    let mut last = open_events_after_close_slots(&s);
    let (store, sock) = (s.store.clone(), s.sock.clone());
    let mut s = s;
    drop(s.api.take());
    for p in [token_path(&store), console_path(&store), sock] {
        assert!(!p.exists(), "{} is left", p.display());
    }
    let mut rest = String::new();
    // The stream ends (an error here would be the read timing out).
    std::io::Read::read_to_string(last.get_mut(), &mut rest).unwrap();
    assert!(TcpStream::connect(s.addr).is_err());
}

/// A stream opened once closed ones have let go of their slots (they notice at
/// their next write, so a change is made to wake them).
fn open_events_after_close_slots(s: &Served) -> BufReader<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        s.vol
            .clone_with("prod", "wake", &Default::default())
            .unwrap();
        s.vol.delete_cluster("wake").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            c,
            "GET /api/v1/events HTTP/1.1\r\nAuthorization: Bearer {}\r\n\r\n",
            s.token
        )
        .unwrap();
        let mut r = BufReader::new(c);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "HTTP/1.1 200 OK\r\n" {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "closed streams never let go: {line}"
        );
    }
}

#[test]
fn tokens_are_random_and_admit_only_themselves() {
    let (a, b) = (Token::random().unwrap(), Token::random().unwrap());
    assert_ne!(a.as_str(), b.as_str());
    assert!(a.as_str().len() == 64 && a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
    assert!(a.admits(Some(&format!("Bearer {}", a.as_str()))));
    for bad in [
        None,
        Some(String::new()),
        Some("Bearer ".into()),
        Some(format!("Bearer {}", b.as_str())),
        Some(format!("Bearer {}", &a.as_str()[..63])),
        Some(format!("Bearer {}0", a.as_str())),
        Some(format!("bearer{}", a.as_str())),
        Some(a.as_str().to_string()),
    ] {
        assert!(!a.admits(bad.as_deref()), "{bad:?}");
    }
    assert_eq!(format!("{a:?}"), "Token(..)");
}
