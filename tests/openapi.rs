//! docs/openapi.yaml, the router and the types describe the same API: every route is
//! documented and every documented route exists, and the schemas are the ones the request,
//! response and event types generate.

use std::collections::BTreeSet;

use nodelink::api::ROUTES;
use serde_json::Value;

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

// ---------------------------------------------------------------------------------------
// The schemas: generated from the Rust types (`nodelink::api::schema`), kept in the document
// between two marker lines.

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml");
const BEGIN: &str = "    # --- begin generated schemas ---";
const END: &str = "    # --- end generated schemas ---";
/// Set to rewrite the generated part of the document from the types.
const BLESS: &str = "NODELINK_BLESS_OPENAPI";

#[test]
fn the_documented_schemas_are_the_ones_the_types_generate() {
    let doc = std::fs::read_to_string(DOC).expect("docs/openapi.yaml");
    let (Some(begin), Some(end)) = (doc.find(BEGIN), doc.find(END)) else {
        panic!("docs/openapi.yaml lacks the marker lines {BEGIN:?} and {END:?}");
    };
    let begin = begin + BEGIN.len() + 1;
    let generated = generated_yaml();
    if doc[begin..end] == generated {
        return;
    }
    if std::env::var_os(BLESS).is_some() {
        let fresh = format!("{}{generated}{}", &doc[..begin], &doc[end..]);
        std::fs::write(DOC, fresh).expect("rewrite docs/openapi.yaml");
        eprintln!("rewrote the generated schemas of docs/openapi.yaml");
        return;
    }
    let first_difference = doc[begin..end]
        .lines()
        .zip(generated.lines())
        .find(|(a, b)| a != b)
        .map(|(a, b)| format!("\n  document: {a}\n  types:    {b}"))
        .unwrap_or_default();
    panic!(
        "docs/openapi.yaml's schemas differ from what the types generate{first_difference}\n\
         after changing a request or response type, rewrite them with:\n  \
         {BLESS}=1 cargo test --test openapi"
    );
}

#[test]
fn every_schema_the_document_references_is_generated() {
    let doc = std::fs::read_to_string(DOC).expect("docs/openapi.yaml");
    let components = nodelink::api::schema::components();
    let prefix = "#/components/schemas/";
    for (i, _) in doc.match_indices(prefix) {
        let name: String = doc[i + prefix.len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        assert!(
            components.contains_key(&name),
            "docs/openapi.yaml references {name}, which no type generates"
        );
    }
}

/// The components as YAML, indented to sit under `components: schemas:`.
fn generated_yaml() -> String {
    let mut out = String::new();
    write_map(&nodelink::api::schema::components(), 4, &mut out);
    out
}

/// Widest line written in flow style (`{ type: string }`); wider values are written as blocks.
const WIDTH: usize = 100;

fn write_map(map: &serde_json::Map<String, Value>, indent: usize, out: &mut String) {
    for (key, value) in map {
        let head = format!("{:indent$}{}:", "", scalar_str(key));
        match flow(value).filter(|f| head.len() + 1 + f.len() <= WIDTH) {
            Some(f) => out.push_str(&format!("{head} {f}\n")),
            None => {
                out.push_str(&head);
                out.push('\n');
                write_block(value, indent + 2, out);
            }
        }
    }
}

fn write_block(value: &Value, indent: usize, out: &mut String) {
    match value {
        Value::Object(map) => write_map(map, indent, out),
        Value::Array(items) => {
            for item in items {
                let dash = format!("{:indent$}- ", "");
                match flow(item).filter(|f| dash.len() + f.len() <= WIDTH) {
                    Some(f) => out.push_str(&format!("{dash}{f}\n")),
                    None => {
                        // The item's block, with its first line's indent turned into the dash.
                        let mut block = String::new();
                        write_block(item, indent + 2, &mut block);
                        out.push_str(&dash);
                        out.push_str(&block[indent + 2..]);
                    }
                }
            }
        }
        scalar => out.push_str(&format!(
            "{:indent$}{}\n",
            "",
            flow(scalar).unwrap_or_default()
        )),
    }
}

/// A value in YAML flow style, if it has one that reads well (scalars and small collections).
fn flow(value: &Value) -> Option<String> {
    Some(match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => scalar_str(s),
        Value::Array(items) => {
            let items: Option<Vec<String>> = items.iter().map(flow).collect();
            format!("[{}]", items?.join(", "))
        }
        Value::Object(map) if map.is_empty() => "{}".into(),
        Value::Object(map) => {
            let members: Option<Vec<String>> = map
                .iter()
                .map(|(k, v)| flow(v).map(|v| format!("{}: {v}", scalar_str(k))))
                .collect();
            format!("{{ {} }}", members?.join(", "))
        }
    })
}

/// A string as a YAML scalar: plain when YAML reads it back as the same string, else
/// double-quoted with JSON's escapes (which YAML's double-quoted style shares).
fn scalar_str(s: &str) -> String {
    const WORDS: [&str; 10] = [
        "y", "n", "yes", "no", "on", "off", "true", "false", "null", "~",
    ];
    let plain = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '$'))
        && !WORDS.contains(&s.to_ascii_lowercase().as_str());
    if plain {
        s.to_string()
    } else {
        Value::String(s.to_string()).to_string()
    }
}
