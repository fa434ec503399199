//! docs/openapi.yaml and the router describe the same endpoints, in both directions.

use std::collections::BTreeSet;

use nodelink::api::ROUTES;

/// (METHOD, path) pairs declared under `paths:` in the document.
fn documented() -> BTreeSet<(String, String)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml"))
        .expect("doc");
    let mut out = BTreeSet::new();
    let mut in_paths = false;
    let mut path = None;
    for line in doc.lines() {
        if line == "paths:" {
            in_paths = true;
            continue;
        }
        if in_paths && !line.starts_with(' ') && !line.is_empty() {
            break; // next top-level key
        }
        if let Some(p) = line.strip_prefix("  /") {
            path = Some(format!("/{}", p.trim_end_matches(':')));
        } else if let (Some(p), Some(m)) = (&path, line.strip_prefix("    ")) {
            let m = m.trim_end_matches(':');
            if ["get", "post", "put", "delete", "patch"].contains(&m) {
                out.insert((m.to_uppercase(), p.clone()));
            }
        }
    }
    out
}

#[test]
fn every_route_is_documented_and_every_documented_route_exists() {
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.pattern.to_string()))
        .collect();
    let documented = documented();
    assert!(!documented.is_empty(), "the document lists paths");
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from docs/openapi.yaml: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "documented but not routed: {unrouted:?}"
    );
}
