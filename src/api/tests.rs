//! The API's routes, called as the listener calls them, and once over a real socket.

use super::*;
use crate::status::StatusDoc;
use crate::volume::NewInode;
use crate::volume::{parse_duration, parse_time};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

fn vol() -> Arc<Volume> {
    let (v, _dev) = Volume::in_memory(4096, 2048).unwrap();
    let who = NewInode::dir_of_this_process();
    v.create_cluster("prod", who).unwrap();
    v
}

fn code(r: &Reply) -> String {
    serde_json::from_str::<ErrorBody>(&r.body)
        .map(|e| e.error.code)
        .unwrap_or_else(|_| panic!("not an error body: {}", r.body))
}

#[test]
fn clusters_are_listed_made_cloned_patched_reset_and_deleted() {
    let v = vol();
    let r = handle(&v, "GET", "/api/v1/clusters", b"");
    assert_eq!(r.status, 200, "{}", r.body);
    let doc: StatusDoc = serde_json::from_str(&r.body).unwrap();
    assert_eq!(doc.clusters.len(), 1);

    let r = handle(&v, "POST", "/api/v1/clusters", br#"{"name":"empty"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    let r = handle(
        &v,
        "POST",
        "/api/v1/clusters/prod/clones",
        br#"{"name":"ci-1","expires_in":"2h"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let made: Created = serde_json::from_str(&r.body).unwrap();
    assert_eq!(made.cluster.parent.as_deref(), Some("prod"));
    assert!(made.cluster.expires_at.is_some());
    // A change's reply does not walk the store for the space figures; a GET does.
    assert_eq!(made.cluster.logical, 0);
    let r = handle(&v, "GET", "/api/v1/clusters/ci-1", b"");
    let got: ClusterStatus = serde_json::from_str(&r.body).unwrap();
    assert!(got.logical > 0, "{}", r.body);

    let r = handle(
        &v,
        "PATCH",
        "/api/v1/clusters/ci-1",
        br#"{"protected":true,"expires_at":""}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let c: ClusterStatus = serde_json::from_str(&r.body).unwrap();
    assert!(c.protected && c.expires_at.is_none());
    let r = handle(&v, "DELETE", "/api/v1/clusters/ci-1", b"");
    assert_eq!((r.status, code(&r)), (403, "Protected".into()));
    let r = handle(&v, "POST", "/api/v1/clusters/ci-1/reset", b"");
    assert_eq!((r.status, code(&r)), (403, "Protected".into()));
    handle(
        &v,
        "PATCH",
        "/api/v1/clusters/ci-1",
        br#"{"protected":false}"#,
    );
    let r = handle(
        &v,
        "POST",
        "/api/v1/clusters/ci-1/reset",
        br#"{"force":true}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = handle(&v, "GET", "/api/v1/clusters/ci-1/restorable", b"");
    assert_eq!(r.status, 200, "{}", r.body);
    let r = handle(&v, "DELETE", "/api/v1/clusters/ci-1", b"");
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(handle(&v, "GET", "/api/v1/clusters/ci-1", b"").status, 404);
}

#[test]
fn bad_requests_get_a_status_a_code_and_a_message_and_change_nothing() {
    let v = vol();
    let cases: &[(&str, &str, &[u8], u16, &str)] = &[
        (
            "POST",
            "/api/v1/clusters/prod/clones",
            br#"{"name":"bad name!"}"#,
            400,
            "InvalidName",
        ),
        (
            "POST",
            "/api/v1/clusters/prod/clones",
            br#"{"name":"prod"}"#,
            409,
            "AlreadyExists",
        ),
        (
            "POST",
            "/api/v1/clusters/nope/clones",
            br#"{"name":"x"}"#,
            404,
            "NotFound",
        ),
        (
            "POST",
            "/api/v1/clusters/prod/clones",
            b"not json",
            400,
            "InvalidRequest",
        ),
        (
            "POST",
            "/api/v1/clusters/prod/clones",
            br#"{"name":"x","bogus":1}"#,
            400,
            "InvalidRequest",
        ),
        (
            "POST",
            "/api/v1/clusters/prod/clones",
            br#"{"name":"x","restore_to_time":"yesterday"}"#,
            400,
            "InvalidTime",
        ),
        (
            "POST",
            "/api/v1/clusters/prod/clones",
            br#"{"name":"x","restore_to_time":"2001-01-01T00:00:00Z"}"#,
            400,
            "InvalidTime",
        ),
        (
            "POST",
            "/api/v1/clusters/prod/clones",
            br#"{"name":"x","expires_at":"2001-01-01T00:00:00Z"}"#,
            400,
            "InvalidTime",
        ),
        (
            "POST",
            "/api/v1/clusters/prod/reset",
            b"",
            400,
            "InvalidArgument",
        ),
        (
            "PATCH",
            "/api/v1/clusters/prod",
            br#"{"retention":"forever"}"#,
            400,
            "InvalidTime",
        ),
        ("PUT", "/api/v1/clusters/prod", b"", 405, "MethodNotAllowed"),
        ("GET", "/api/v2/clusters", b"", 404, "NoSuchRoute"),
    ];
    for (method, path, body, status, want) in cases {
        let r = handle(&v, method, path, body);
        assert_eq!(
            (r.status, code(&r)),
            (*status, want.to_string()),
            "{method} {path}: {}",
            r.body
        );
        let e: ErrorBody = serde_json::from_str(&r.body).unwrap();
        assert!(e.error.message.len() > 10, "{}", e.error.message);
    }
    let names: Vec<String> = v.clusters().into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["prod"]);
}

#[test]
fn times_and_durations_parse_as_documented() {
    let t = parse_time("-10m").unwrap();
    let now = SystemTime::now();
    let d = now.duration_since(t).unwrap();
    assert!(
        d >= Duration::from_secs(600) && d < Duration::from_secs(610),
        "{d:?}"
    );
    assert!(parse_time("+1h").unwrap() > now);
    assert_eq!(
        parse_time("2026-11-30T09:50:00Z").unwrap(),
        humantime::parse_rfc3339("2026-11-30T09:50:00Z").unwrap()
    );
    assert!(parse_time("10 minutes ago")
        .unwrap_err()
        .contains("RFC 3339"));
    assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    assert_eq!(
        parse_duration("7d").unwrap(),
        Duration::from_secs(7 * 86400)
    );
    assert!(parse_duration("soon").is_err());
}

#[test]
fn the_socket_serves_the_api_with_mode_0600_and_goes_away_with_it() {
    use std::os::unix::fs::PermissionsExt;
    let v = vol();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.clonefs.sock");
    std::fs::write(&sock, b"stale").unwrap();
    let api = Api::serve_unix(v.clone(), &sock).unwrap();
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let made: Created = client::request(
        &sock,
        "POST",
        "/api/v1/clusters/prod/clones",
        Some(&CreateClone {
            name: "viasock".into(),
            ..Default::default()
        }),
    )
    .unwrap();
    assert_eq!(made.cluster.name, "viasock");
    assert!(v.cluster_by_name("viasock").is_ok());
    let e =
        client::request::<(), StatusDoc>(&sock, "GET", "/api/v1/clusters/nope", None).unwrap_err();
    assert!(e.contains("no cluster nope"), "{e}");
    let big = CreateCluster {
        name: "x".repeat(MAX_BODY as usize + 1),
    };
    let (status, _) = client::call(&sock, "POST", "/api/v1/clusters", Some(&big)).unwrap();
    assert_eq!(status, 413);
    drop(api);
    assert!(!sock.exists());
}

#[test]
fn the_openapi_document_names_exactly_the_routes_served() {
    let v = vol();
    let r = handle(&v, "GET", "/api/v1/openapi.json", b"");
    assert_eq!(r.status, 200);
    let doc: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];
    let mut in_doc = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in item.as_object().unwrap().keys() {
            let upper = m.to_uppercase();
            if METHODS.contains(&upper.as_str()) {
                in_doc.insert((upper, path.clone()));
            }
        }
    }
    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(in_doc, routes, "the document and ROUTES differ");

    let served = |r: &Reply| {
        r.status < 400 || !["NoSuchRoute", "MethodNotAllowed"].contains(&code(r).as_str())
    };
    for (method, path) in ROUTES {
        if *path == "/api/v1/events" {
            continue; // a stream, served by the listeners: tests_server checks it
        }
        let url = path.replace("{name}", "prod");
        let r = handle(&v, method, &url, if *method == "GET" { b"" } else { b"{}" });
        assert!(
            served(&r),
            "{method} {path} is in the document but not served: {}",
            r.body
        );
    }
    // Nothing else is: every other method on each path, and paths beside them.
    let paths: BTreeSet<&str> = ROUTES.iter().map(|(_, p)| *p).collect();
    for path in paths {
        let url = path.replace("{name}", "prod");
        for m in METHODS {
            if !routes.contains(&(m.to_string(), path.to_string())) {
                let r = handle(&v, m, &url, b"{}");
                assert_eq!(
                    (r.status, code(&r)),
                    (405, "MethodNotAllowed".into()),
                    "{m} {path}"
                );
            }
        }
        let r = handle(&v, "GET", &format!("{url}/more/yet"), b"");
        assert_eq!(
            (r.status, code(&r)),
            (404, "NoSuchRoute".into()),
            "{path}/more/yet"
        );
    }
    // Every schema referred to is defined.
    fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(|r| r.as_str()) {
                    out.push(r.to_string());
                }
                m.values().for_each(|x| refs(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 10);
    for r in all {
        let name = r.strip_prefix("#/components/schemas/").expect(&r);
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{r} is not defined"
        );
    }
}

#[path = "tests_server.rs"]
mod server;
