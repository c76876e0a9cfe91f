//! The command line's side of the API: one request over the daemon's unix socket.
//!
//! A request is HTTP/1.1 with `Connection: close`, so the reply's body is
//! everything after its head; `httparse` reads the head.

use super::ErrorBody;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long a call may take before the command gives up on the daemon.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Sends `method path` with `body` (as JSON) to the API at `socket`; returns the
/// status and the body, or an error a user can act on (the API's own message for an
/// error reply).
pub fn call<B: Serialize>(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&B>,
) -> Result<(u16, Vec<u8>), String> {
    let shown = socket.display();
    let mut s = UnixStream::connect(socket).map_err(|e| {
        format!("cannot reach the clonefs daemon's API at {shown}: {e} (is the store mounted?)")
    })?;
    s.set_read_timeout(Some(TIMEOUT)).ok();
    s.set_write_timeout(Some(TIMEOUT)).ok();
    let payload = match body {
        Some(b) => serde_json::to_vec(b).map_err(|e| e.to_string())?,
        None => Vec::new(),
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(&payload))
        .map_err(|e| format!("sending to {shown}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("reading the reply from {shown}: {e}"))?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(format!("the daemon at {shown} sent no valid HTTP reply")),
    };
    Ok((resp.code.unwrap_or(0), raw[n..].to_vec()))
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
