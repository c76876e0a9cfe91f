//! The OpenAPI 3 description of the API, served at `/api/v1/openapi.json`.
//!
//! Written by hand, next to [`super::ROUTES`]; a test checks that the two name the
//! same routes and that the router serves each, so neither drifts from the other.

use serde_json::{json, Value};

fn error_replies(codes: &[u16]) -> Value {
    let mut m = serde_json::Map::new();
    for c in codes {
        m.insert(
            c.to_string(),
            json!({"description": "an error: `error.code` says which, `error.message` what to do",
                   "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    Value::Object(m)
}

fn with(ok: Value, errors: &[u16]) -> Value {
    let mut r = error_replies(errors);
    r.as_object_mut()
        .unwrap()
        .extend(ok.as_object().unwrap().clone());
    r
}

fn json_reply(code: u16, what: &str, schema: &str) -> Value {
    json!({code.to_string(): {"description": what,
        "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}}})
}

fn body(schema: &str, required: bool) -> Value {
    json!({"required": required,
           "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

/// The document, as served.
pub fn document() -> String {
    let name = json!([{"name": "name", "in": "path", "required": true,
        "description": "a cluster: 1-63 letters, digits or hyphens, starting with a letter, \
                        no trailing hyphen, no two hyphens in a row",
        "schema": {"type": "string", "pattern": "^[A-Za-z]([A-Za-z0-9]|-(?!-))*[A-Za-z0-9]$|^[A-Za-z]$",
                   "maxLength": 63}}]);
    let doc = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "clonefs API",
            "version": "1",
            "description": "Manage the clusters of a mounted clonefs store. Served on the unix socket \
                STORE.sock (mode 0600, no token) and, with `clonefs mount --listen`, on TCP, where every \
                /api/ request needs `Authorization: Bearer TOKEN` (the token is in STORE.token). \
                Nothing here reads or writes file contents."
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/clusters": {
                "get": {"operationId": "listClusters", "summary": "the store's capacity, used and free, and every cluster",
                        "responses": with(json_reply(200, "the store and its clusters", "Status"), &[401, 500])},
                "post": {"operationId": "createCluster", "summary": "a new, empty cluster",
                         "requestBody": body("CreateCluster", true),
                         "responses": with(json_reply(201, "made", "Created"), &[400, 401, 409, 413, 507])}
            },
            "/api/v1/clusters/{name}": {
                "parameters": name,
                "get": {"operationId": "getCluster", "summary": "one cluster",
                        "responses": with(json_reply(200, "the cluster", "Cluster"), &[401, 404])},
                "patch": {"operationId": "modifyCluster", "summary": "protect or unprotect, set or clear the expiry, set the retention",
                          "requestBody": body("PatchCluster", true),
                          "responses": with(json_reply(200, "the cluster as it now is", "Cluster"), &[400, 401, 404, 413])},
                "delete": {"operationId": "deleteCluster", "summary": "delete it (frees its unique and restore-only bytes)",
                           "responses": with(json!({"204": {"description": "deleted"}}), &[401, 403, 404, 409])}
            },
            "/api/v1/clusters/{name}/clones": {
                "parameters": name,
                "post": {"operationId": "cloneCluster", "summary": "clone it, now or as it was at a time; ready when the reply comes",
                         "requestBody": body("CreateClone", true),
                         "responses": with(json_reply(201, "the clone", "Created"), &[400, 401, 404, 409, 413, 507])}
            },
            "/api/v1/clusters/{name}/reset": {
                "parameters": name,
                "post": {"operationId": "resetCluster", "summary": "replace its contents with its parent's latest, or an image at a time",
                         "requestBody": body("ResetCluster", false),
                         "responses": with(json_reply(200, "the cluster as it now is", "Cluster"), &[400, 401, 403, 404, 409, 413])}
            },
            "/api/v1/clusters/{name}/restorable": {
                "parameters": name,
                "get": {"operationId": "restorableWindow", "summary": "its restore window",
                        "responses": with(json_reply(200, "the window", "Restorable"), &[401, 404])}
            },
            "/api/v1/mounts": {
                "get": {"operationId": "listMounts", "summary": "the daemon's mounts of the store, and what they share",
                        "responses": with(json_reply(200, "the daemon and its mounts", "Mounts"), &[401])},
                "post": {"operationId": "addMount",
                         "summary": "mount the store again (the whole store or one cluster) from this daemon; \
                                     live when the reply comes. Unix socket only: 403 on TCP",
                         "requestBody": body("NewMount", true),
                         "responses": with(json_reply(201, "mounted", "Mount"), &[400, 401, 403, 404, 409, 413, 500, 503])}
            },
            "/api/v1/events": {
                "get": {"operationId": "events",
                        "summary": "server-sent events: one `data: {\"type\", \"cluster\"}` line per cluster created, deleted, reset or expired",
                        "responses": with(json!({"200": {"description": "an endless stream; `:` lines are heartbeats",
                            "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/Event"}}}}}), &[401, 503])}
            },
            "/api/v1/openapi.json": {
                "get": {"operationId": "openapi", "summary": "this document",
                        "responses": with(json!({"200": {"description": "OpenAPI 3", "content": {"application/json": {}}}}), &[401])}
            }
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "TCP only; the token is in STORE.token, new on every mount"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object",
                    "required": ["code", "message"], "properties": {
                        "code": {"type": "string", "enum": ["InvalidName", "AlreadyExists", "NotFound", "InvalidTime",
                            "InvalidRequest", "InvalidArgument", "Protected", "Busy", "NoSpace", "BodyTooLarge",
                            "HeadTooLarge", "LengthRequired", "Timeout", "Unauthorized", "MethodNotAllowed",
                            "NoSuchRoute", "TooManyStreams", "Internal", "Incompatible", "NotMounting", "Closing",
                            "MountFailed", "Forbidden"]},
                        "message": {"type": "string"}}}}},
                "Cluster": {"type": "object", "required": ["name", "id", "created", "logical", "shared", "unique"], "properties": {
                    "name": {"type": "string"}, "id": {"type": "integer"},
                    "parent": {"type": "string", "nullable": true, "description": "cloned from (even if since deleted)"},
                    "created": {"type": "integer", "description": "seconds since the Unix epoch"},
                    "logical": {"type": "integer", "description": "bytes its tree reaches"},
                    "shared": {"type": "integer", "description": "of those, bytes other clusters reach too"},
                    "unique": {"type": "integer", "description": "bytes only it reaches"},
                    "restore_only": {"type": "integer", "description": "bytes only its restore points reach"},
                    "protected": {"type": "boolean"},
                    "expires_at": {"type": "string", "nullable": true, "format": "date-time"},
                    "retention_secs": {"type": "integer"},
                    "restore_points": {"type": "integer"},
                    "earliest_restorable": {"type": "string", "nullable": true, "format": "date-time"}}},
                "Status": {"type": "object", "required": ["store", "capacity", "used", "free", "clusters"], "properties": {
                    "store": {"type": "string"}, "pid": {"type": "integer"}, "page_size": {"type": "integer"},
                    "capacity": {"type": "integer"}, "used": {"type": "integer"}, "free": {"type": "integer"},
                    "clusters": {"type": "array", "items": {"$ref": "#/components/schemas/Cluster"}},
                    "mounts": {"type": "array", "items": {"type": "object", "properties": {
                        "mountpoint": {"type": "string"}, "cluster": {"type": "string", "nullable": true}}}}}},
                "Created": {"type": "object", "required": ["cluster", "image_time"], "properties": {
                    "cluster": {"$ref": "#/components/schemas/Cluster"},
                    "image_time": {"type": "string", "format": "date-time", "description": "the time of the image it holds"}}},
                "CreateCluster": {"type": "object", "required": ["name"], "additionalProperties": false,
                    "properties": {"name": {"type": "string"}}},
                "CreateClone": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {
                    "name": {"type": "string"},
                    "restore_to_time": {"type": "string", "description": "RFC 3339, or relative like -10m; absent: now"},
                    "expires_in": {"type": "string", "description": "a duration like 2h or 7d"},
                    "expires_at": {"type": "string", "description": "RFC 3339, or relative like +2h"}}},
                "ResetCluster": {"type": "object", "additionalProperties": false, "properties": {
                    "restore_to_time": {"type": "string"}, "force": {"type": "boolean"}}},
                "PatchCluster": {"type": "object", "additionalProperties": false, "properties": {
                    "protected": {"type": "boolean"},
                    "expires_at": {"type": "string", "description": "RFC 3339 or relative; \"\" clears it"},
                    "retention": {"type": "string", "description": "like 7d; 0 turns restore points off"}}},
                "Restorable": {"type": "object", "properties": {
                    "cluster": {"type": "string"}, "earliest": {"type": "string", "nullable": true},
                    "latest": {"type": "string"}, "points": {"type": "integer"}, "restore_only": {"type": "integer"}}},
                "NewMount": {"type": "object", "required": ["mountpoint"], "additionalProperties": false, "properties": {
                    "mountpoint": {"type": "string", "description": "absolute path of an existing, empty directory"},
                    "cluster": {"type": "string", "description": "show this cluster alone at the mount point; absent: the whole store"},
                    "threads": {"type": "integer", "minimum": 1, "maximum": 256, "description": "threads serving this mount (default 4)"},
                    "allow_other": {"type": "boolean"},
                    "writeback_cache": {"type": "boolean", "description": "must be the daemon's: its mounts share it"},
                    "listen": {"type": "string", "description": "ADDR:PORT; must be the daemon's listener if given"}}},
                "Mount": {"type": "object", "required": ["mountpoint", "threads", "allow_other"], "properties": {
                    "mountpoint": {"type": "string"}, "cluster": {"type": "string", "nullable": true},
                    "threads": {"type": "integer"}, "allow_other": {"type": "boolean"}}},
                "Mounts": {"type": "object", "required": ["store", "pid", "writeback_cache", "mounts"], "properties": {
                    "store": {"type": "string"}, "pid": {"type": "integer"}, "writeback_cache": {"type": "boolean"},
                    "listen": {"type": "string", "nullable": true},
                    "mounts": {"type": "array", "items": {"$ref": "#/components/schemas/Mount"}}}},
                "Event": {"type": "object", "required": ["type", "cluster"], "properties": {
                    "type": {"type": "string", "enum": ["created", "deleted", "reset", "expired", "modified"]},
                    "cluster": {"type": "string"}}}
            }
        }
    });
    serde_json::to_string_pretty(&doc).expect("a JSON value serializes") + "\n"
}
