//! The console: a web page, served on the API's listeners at `/`, that shows the
//! clusters as a lineage tree and makes, resets, protects and deletes them.
//!
//! Its three files are built into the binary (nothing is fetched from anywhere
//! else; plain HTML, CSS and JS, no build step). They hold no data and load without
//! a token; the page takes the token from its URL's fragment (`#token=...`, which
//! a browser never sends to a server), keeps it in sessionStorage and sends it as
//! `Authorization: Bearer` on every API call, so a cookie never carries it.

const INDEX: &str = include_str!("console/index.html");
const CSS: &str = include_str!("console/console.css");
const JS: &str = include_str!("console/console.js");

/// Headers for the page: its own scripts and styles only, no framing, no referrer.
pub const HEADERS: &[(&str, &str)] = &[
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
         img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
];

/// The asset at `path` for a GET: its content type and text.
pub fn asset(method: &str, path: &str) -> Option<(&'static str, &'static str)> {
    if method != "GET" {
        return None;
    }
    match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", INDEX)),
        "/console.css" => Some(("text/css; charset=utf-8", CSS)),
        "/console.js" => Some(("text/javascript; charset=utf-8", JS)),
        _ => None,
    }
}
