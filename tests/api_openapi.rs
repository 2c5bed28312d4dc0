//! `GET /api/openapi.json` against the live router: every documented operation is routed (no
//! fallback 404, no 405), and on every documented path the undocumented verbs answer 405.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::Daemon;

#[test]
fn the_document_matches_the_router() {
    let d = Daemon::start();
    let doc = d.send("GET", "/api/openapi.json", None, None).expect(200);
    assert_eq!(doc["openapi"], "3.1.0");
    let ws = d.workspace("doc");
    let c = d.computer(&ws, "doc");
    let cid = c["id"].as_str().unwrap();
    let inst = c["instance_id"].as_str().unwrap();

    let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented
                .entry(path.clone())
                .or_default()
                .insert(method.to_uppercase());
        }
    }
    assert!(documented.len() > 30, "too few paths: {}", documented.len());

    let concrete = |path: &str| {
        let id = if path.starts_with("/api/computers/") {
            cid
        } else {
            ws.as_str()
        };
        // Template paths name a user template that does not exist (404), never a curated one.
        path.replace("{id}", id)
            .replace("{ns}", "default")
            .replace("{name}", "absent")
            .replace("{version}", "1.0.0")
            .replace("{instance_id}", inst)
            .replace("{endpoint}", "health")
    };
    for (path, methods) in &documented {
        let url = concrete(path);
        for method in ["GET", "POST", "PATCH", "DELETE", "PUT"] {
            // DELETE of the fixtures last, so other checks still find them.
            if method == "DELETE" && methods.contains("DELETE") {
                continue;
            }
            let r = d.send(method, &url, Some(&d.key), Some("{}"));
            // Every answer is JSON but the ones in other formats on purpose (metrics).
            let json = r.header("content-type").is_some_and(|c| c.contains("json"));
            let v = if json {
                r.json()
            } else {
                serde_json::Value::Null
            };
            if methods.contains(method) {
                assert_ne!(
                    r.status, 405,
                    "{method} {path} is documented but not routed: {v}"
                );
                assert_ne!(
                    v["code"], "route_not_found",
                    "{method} {path} is documented but not routed"
                );
            } else {
                assert_eq!(
                    r.status, 405,
                    "{method} {path} is routed but not documented: {v}"
                );
                assert_eq!(v["code"], "method_not_allowed");
            }
        }
    }
    for (path, methods) in &documented {
        if methods.contains("DELETE") {
            let r = d.send("DELETE", &concrete(path), Some(&d.key), None);
            // Routes that name what they delete in the query (`?id=`) are 400 without it.
            assert!(
                r.status == 200 || r.status == 404 || (r.status == 400 && !path.contains('{')),
                "DELETE {path}: {}",
                r.status
            );
        }
    }
}
