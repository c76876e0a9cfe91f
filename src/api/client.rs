//! The client side of the API: one request over the daemon's unix socket (the
//! command line's way), or over TCP (the tests', and any JSON service's).
//!
//! A request is HTTP/1.1 with `Connection: close`, so the reply's body is
//! everything after its head; `httparse` reads the head.

use super::ErrorBody;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long a call may take before the command gives up on the daemon.
const TIMEOUT: Duration = Duration::from_secs(120);

/// A reply as it came: status, headers (names as sent) and body.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request on `s` (HTTP/1.1, `Connection: close`) with `headers` and the
/// `payload` as JSON, and reads the whole reply; `shown` names the peer in errors.
pub fn exchange<S: Read + Write>(
    mut s: S,
    shown: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    payload: &[u8],
) -> Result<Answer, String> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        payload.len()
    );
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(payload))
        .map_err(|e| format!("sending to {shown}: {e}"))?;
    // Read to the end of the head, then to Content-Length if given (a server may
    // keep the connection open despite `Connection: close`), else to EOF.
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let mut parsed = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut parsed);
        let done = match resp.parse(&raw) {
            Ok(httparse::Status::Complete(n)) => {
                let length = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("Content-Length"))
                    .and_then(|h| {
                        std::str::from_utf8(h.value)
                            .ok()?
                            .trim()
                            .parse::<usize>()
                            .ok()
                    });
                if let Some(l) = length.filter(|l| raw.len() >= n + l) {
                    return Ok(answer(&resp, &raw[n..n + l]));
                }
                false
            }
            Ok(httparse::Status::Partial) => false,
            Err(_) => true,
        };
        let got = if done {
            0
        } else {
            s.read(&mut chunk)
                .map_err(|e| format!("reading the reply from {shown}: {e}"))?
        };
        if got == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..got]);
    }
    let mut parsed = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut parsed);
    let n = match resp.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(format!("{shown} sent no valid HTTP reply")),
    };
    Ok(answer(&resp, &raw[n..]))
}

fn answer(resp: &httparse::Response, body: &[u8]) -> Answer {
    Answer {
        status: resp.code.unwrap_or(0),
        headers: resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    }
}

fn payload<B: Serialize>(body: Option<&B>) -> Result<Vec<u8>, String> {
    match body {
        Some(b) => serde_json::to_vec(b).map_err(|e| e.to_string()),
        None => Ok(Vec::new()),
    }
}

/// Sends `method path` with `body` (as JSON) to the API at `socket`; returns the
/// status and the body, or an error a user can act on (the API's own message for an
/// error reply).
pub fn call<B: Serialize>(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&B>,
) -> Result<(u16, Vec<u8>), String> {
    let shown = socket.display().to_string();
    let s = UnixStream::connect(socket).map_err(|e| {
        format!("cannot reach the clonefs daemon's API at {shown}: {e} (is the store mounted?)")
    })?;
    s.set_read_timeout(Some(TIMEOUT)).ok();
    s.set_write_timeout(Some(TIMEOUT)).ok();
    let a = exchange(s, &shown, method, path, &[], &payload(body)?)?;
    Ok((a.status, a.body))
}

/// Sends `method path` with `body` to an HTTP server at `addr` (the API's TCP
/// listener with `token`, or any JSON service without one).
pub fn call_tcp<B: Serialize>(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&B>,
) -> Result<Answer, String> {
    let shown = addr.to_string();
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("cannot reach {shown}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT)).ok();
    s.set_write_timeout(Some(TIMEOUT)).ok();
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("Authorization", b.as_str()))
        .collect();
    exchange(s, &shown, method, path, &headers, &payload(body)?)
}

/// Like [`call`], for a reply of type `R` on success; an error reply becomes its
/// message.
pub fn request<B: Serialize, R: DeserializeOwned>(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&B>,
) -> Result<R, String> {
    let (status, bytes) = call(socket, method, path, body)?;
    if status >= 400 {
        return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => e.error.message,
            Err(_) => format!("the daemon answered {status}"),
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("the daemon's reply is not understood: {e}"))
}
