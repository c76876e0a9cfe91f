//! The console in a real headless Chromium, driven over WebDriver (chromedriver)
//! with the API's own HTTP client: load the page, create a clone through the form,
//! see it in the tree and its files on the mount, see the errors a bad name and a
//! bad time get, see a clone made elsewhere appear without a reload, delete
//! through the confirmation, and see a deleted parent in the lineage. Screenshots
//! go to target/console-*.png.
//!
//! The test starts chromedriver itself and ends it by its pid; the browser goes
//! with the WebDriver session. Without chromium (scripts/test.sh installs it) the
//! test is skipped, except under CI, where that is a failure.

mod common;

use clonefs::api::client::{call_tcp, Answer};
use common::{run_ok, Mounted, BIN};
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver, ended by its pid on drop.
struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Driver {
    fn start() -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let d = Driver {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        wait_for("chromedriver to be ready", 20, || {
            call_tcp::<()>(d.addr, None, "GET", "/status", None)
                .ok()
                .filter(|a| value(a)["ready"] == true)
        });
        d
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebDriver session (one headless Chromium), deleted on drop.
struct Browser<'d> {
    driver: &'d Driver,
    id: String,
}

fn value(a: &Answer) -> Value {
    let v: Value = serde_json::from_slice(&a.body).unwrap_or_else(|_| {
        panic!(
            "WebDriver reply is not JSON: {}",
            String::from_utf8_lossy(&a.body)
        )
    });
    v["value"].clone()
}

impl<'d> Browser<'d> {
    fn open(driver: &'d Driver) -> Browser<'d> {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium().unwrap(),
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900", "--no-first-run"]
            }
        }}});
        let a = call_tcp(driver.addr, None, "POST", "/session", Some(&caps)).unwrap();
        assert_eq!(
            a.status,
            200,
            "no browser session: {}",
            String::from_utf8_lossy(&a.body)
        );
        let id = value(&a)["sessionId"].as_str().unwrap().to_string();
        Browser { driver, id }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let url = format!("/session/{}{path}", self.id);
        let a = call_tcp(self.driver.addr, None, method, &url, body.as_ref()).unwrap();
        if a.status == 200 {
            Ok(value(&a))
        } else {
            Err(value(&a))
        }
    }

    fn must(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn go(&self, url: &str) {
        self.must("POST", "/url", Some(json!({ "url": url })));
    }

    fn find(&self, css: &str) -> Option<String> {
        self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        )
        .ok()
        .map(|v| v[ELEMENT].as_str().unwrap().to_string())
    }

    /// The element at `css`, once it is there and shown.
    fn wait(&self, css: &str) -> String {
        wait_for(&format!("{css} to show"), 20, || {
            let e = self.find(css)?;
            let shown = self.call("GET", &format!("/element/{e}/displayed"), None);
            (shown == Ok(Value::Bool(true))).then_some(e)
        })
    }

    fn wait_gone(&self, css: &str) {
        wait_for(&format!("{css} to go"), 20, || {
            self.find(css).is_none().then_some(())
        });
    }

    fn click(&self, css: &str) {
        let e = self.wait(css);
        self.must("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.wait(css);
        self.must("POST", &format!("/element/{e}/clear"), Some(json!({})));
        self.must(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        );
    }

    fn text(&self, css: &str) -> String {
        let e = self.wait(css);
        self.must("GET", &format!("/element/{e}/text"), None)
            .as_str()
            .unwrap()
            .to_string()
    }

    fn enabled(&self, css: &str) -> bool {
        let e = self.wait(css);
        self.must("GET", &format!("/element/{e}/enabled"), None) == true
    }

    fn script(&self, js: &str) -> Value {
        self.must(
            "POST",
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )
    }

    fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.must("GET", "/screenshot", None);
        let png = base64(b64.as_str().unwrap());
        assert_eq!(&png[1..4], b"PNG");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("console-{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        let _ = self.call("DELETE", "", None);
    }
}

fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(x) = f() {
            return x;
        }
        assert!(
            Instant::now() < deadline,
            "waited {secs} s for {what} in vain"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= (val(c) as u32) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

fn chromium() -> Option<String> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .map(String::from)
}

fn browser_missing() -> bool {
    let driver = Command::new("chromedriver").arg("--version").output();
    if chromium().is_some() && driver.is_ok_and(|o| o.status.success()) {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "chromium and chromedriver are missing under CI: scripts/test.sh installs them"
    );
    eprintln!(
        "SKIPPED: the console test needs chromium and chromedriver (scripts/test.sh installs them)"
    );
    true
}

#[test]
fn the_console_creates_shows_and_deletes_clones_in_a_real_browser() {
    if browser_missing() {
        return;
    }
    let Some(m) = Mounted::with_options("1G", &["--listen", "127.0.0.1:0"]) else {
        return;
    };
    std::fs::create_dir(m.path("prod")).unwrap();
    std::fs::write(m.path("prod/f"), "hello\n").unwrap();
    let url = run_ok(&[BIN, "console", m.mnt_str()]).trim().to_string();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.contains("/#token="),
        "{url}"
    );

    let driver = Driver::start();
    let b = Browser::open(&driver);
    b.go(&url);
    b.wait(r#"[data-cluster="prod"]"#);
    assert!(b.text("#capacity-text").contains("free"));
    // The token left the address bar for sessionStorage.
    assert_eq!(b.script("return location.hash"), "");
    assert_eq!(
        b.script("return sessionStorage.getItem('clonefs-token').length"),
        64
    );
    b.wait("#live.on");
    let shot = b.screenshot("1-loaded");

    // Create clone: pick the cluster, Create clone, type the identifier.
    b.click(r#"[data-cluster="prod"] .actions button"#);
    b.wait("#clone-dialog[open]");
    assert_eq!(
        b.script("return document.getElementById('clone-source').value"),
        "prod"
    );
    b.type_into("#clone-name", "bad name!");
    assert!(b
        .text("#clone-name-check")
        .contains("only letters, digits and hyphens"));
    assert!(!b.enabled("#clone-submit"));
    b.type_into("#clone-name", "prod");
    assert!(b.text("#clone-name-check").contains("already exists"));
    b.type_into("#clone-name", "web-1-");
    assert!(b.text("#clone-name-check").contains("hyphen"));
    b.screenshot("2-bad-name");
    // A name the page takes but a time the API refuses: the API's error is shown.
    b.type_into("#clone-name", "fromweb");
    assert!(b.enabled("#clone-submit"));
    b.type_into("#clone-time", "yesterday");
    b.click("#clone-submit");
    assert!(b.text("#clone-error").contains("InvalidTime"));
    assert!(b.text("#error").contains("RFC 3339"));
    assert!(!m.path("fromweb").exists());
    b.type_into("#clone-time", "");
    b.type_into("#clone-expiry", "2h");
    b.click("#clone-submit");
    b.wait(r#"[data-cluster="fromweb"]"#);
    assert!(b.text(r#"[data-cluster="fromweb"]"#).contains("from prod"));
    assert!(b
        .text(r#"[data-cluster="fromweb"] .badge.expires"#)
        .contains("expires"));
    assert_eq!(
        std::fs::read_to_string(m.path("fromweb/f")).unwrap(),
        "hello\n"
    );
    b.screenshot("3-created");

    // A clone made on the mount shows up without a reload (the event stream).
    b.script("window.noReload = 1");
    std::fs::create_dir(m.path("prod/.clone/bymkdir")).unwrap();
    b.wait(r#"[data-cluster="bymkdir"]"#);
    assert_eq!(b.script("return window.noReload"), 1);

    // Delete, through a confirmation that says what it frees.
    b.click(r#"[data-cluster="fromweb"] button.danger"#);
    assert!(b.text("#confirm-text").contains("This frees"));
    b.screenshot("4-confirm-delete");
    b.click("#confirm-ok");
    b.wait_gone(r#"[data-cluster="fromweb"]"#);
    assert!(!m.path("fromweb").exists());

    // Protect, and the API's refusal to delete a protected cluster is shown.
    b.click(r#"[data-cluster="bymkdir"] .actions button:nth-child(3)"#);
    b.wait(r#"[data-cluster="bymkdir"] .badge.protected"#);
    b.click(r#"[data-cluster="bymkdir"] button.danger"#);
    b.click("#confirm-ok");
    assert!(b.text("#error").contains("Protected"));
    assert!(m.path("bymkdir").exists());

    // A deleted parent stays in the lineage, as deleted.
    std::fs::remove_file(m.path("prod/f")).unwrap();
    run_ok(&["rmdir", m.path("prod").to_str().unwrap()]);
    b.wait(r#"[data-deleted="prod"]"#);
    assert!(b
        .text(r#"[data-deleted="prod"]"#)
        .contains("prod (deleted)"));
    b.screenshot("5-lineage");

    // Without the token, the page says how to get one.
    b.script("sessionStorage.clear()");
    b.go(url.split('#').next().unwrap());
    assert!(b.text("#error").contains("Unauthorized"));
    assert!(b.text("#error").contains("clonefs console"));
    eprintln!("screenshots: {} and beside it", shot.display());
}

#[test]
fn the_console_command_says_how_to_get_one_and_the_token_goes_at_unmount() {
    use clonefs::api::{console_path, token_path};
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::fs::PermissionsExt;
    let Some(plain) = Mounted::new() else {
        return;
    };
    let out = common::run(&[BIN, "console", plain.mnt_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--listen"), "{err}");
    assert!(!token_path(&plain.store).exists() && !console_path(&plain.store).exists());
    drop(plain);

    let mut m = Mounted::with_options("1G", &["--listen", "0"]).unwrap();
    for p in [token_path(&m.store), console_path(&m.store)] {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
    let token = std::fs::read_to_string(token_path(&m.store)).unwrap();
    let url = std::fs::read_to_string(console_path(&m.store)).unwrap();
    let addr: SocketAddr = url
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    assert!(
        addr.ip().is_loopback(),
        "--listen PORT is on loopback: {addr}"
    );
    // A clone made on the mount is an event on the real daemon's stream.
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        c,
        "GET /api/v1/events HTTP/1.1\r\nAuthorization: Bearer {}\r\n\r\n",
        token.trim()
    )
    .unwrap();
    let mut r = BufReader::new(c);
    let mut line = String::new();
    while line != ": clonefs events\n" {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0);
    }
    std::fs::create_dir(m.path("prod")).unwrap();
    while !line.starts_with("data: ") {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0);
    }
    assert_eq!(line.trim(), r#"data: {"type":"created","cluster":"prod"}"#);
    drop(r);
    m.umount();
    assert!(!token_path(&m.store).exists() && !console_path(&m.store).exists());
    assert!(std::net::TcpStream::connect(addr).is_err());
}
