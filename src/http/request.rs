//! Helpers that turn a `tiny_http::Request` into trusted values or an `ApiError`:
//! size-capped body reading, JSON parsing, typed field extraction with precise
//! messages, query-string and percent decoding, constant-time bearer-token checks and
//! `Last-Event-ID`. They run on the worker thread that owns the request; nothing here
//! keeps state. Everything a client sends is treated as hostile: no `unwrap`, bounded
//! reads (the declared `Content-Length` is checked before a byte is read, and the
//! actual read is capped at `limit + 1` bytes for bodies that declare no length), and
//! socket read timeouts surface as 408.

use std::io::{self, Read};

use serde_json::{json, Map, Value};
use tiny_http::Request;

use super::error::ApiError;
use crate::secrets::constant_time_eq;

/// First value of header `name` (case-insensitive), if present.
pub fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// Splits a request target into `(path, query)`, dropping any `#fragment`.
pub fn split_url(url: &str) -> (&str, Option<&str>) {
    let url = url.split_once('#').map_or(url, |(before, _)| before);
    match url.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (url, None),
    }
}

/// Decodes `%XX` escapes (invalid escapes are kept literally, invalid UTF-8 becomes
/// U+FFFD); `+` is left alone, as path segments require.
pub fn percent_decode(s: &str) -> String {
    decode(s, false)
}

/// Like `percent_decode`, but also turns `+` into a space, as query strings require.
pub fn percent_decode_query(s: &str) -> String {
    decode(s, true)
}

fn decode(s: &str, plus_is_space: bool) -> String {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex);
            let lo = bytes.get(i + 2).copied().and_then(hex);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(if plus_is_space && b == b'+' { b' ' } else { b });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decoded query-string parameters, in order, duplicates kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses a raw query string (`a=1&b=x%20y`); keys without `=` get an empty value.
    pub fn parse(query: &str) -> Query {
        let pairs = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode_query(k), percent_decode_query(v))
            })
            .collect();
        Query { pairs }
    }

    /// Parses the query part of a full request target (`/tasks?limit=5`).
    pub fn from_url(url: &str) -> Query {
        split_url(url).1.map(Query::parse).unwrap_or_default()
    }

    /// First value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, for repeated parameters (`?state=a&state=b`).
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// All decoded pairs in request order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// `key` as a non-negative integer; a present but unparsable value is a 400.
    pub fn u64(&self, key: &str) -> Result<Option<u64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!(
                    "query parameter `{key}` must be a non-negative integer"
                ))
                .with_details(json!({ "parameter": key, "value": v }))
            }),
        }
    }

    /// `key` as a boolean (`true`/`false`/`1`/`0`); anything else is a 400.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some("true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(v) => Err(ApiError::bad_request(format!(
                "query parameter `{key}` must be true or false"
            ))
            .with_details(json!({ "parameter": key, "value": v }))),
        }
    }
}

/// Reads the whole body, at most `limit` bytes: a declared `Content-Length` above the
/// limit is a 413 before anything is read (and before `100 Continue` is sent).
pub fn read_body(req: &mut Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    let declared = req.body_length();
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::payload_too_large(limit));
    }
    read_limited(req.as_reader(), declared, limit)
}

/// The socket-free core of `read_body`: caps the read at `limit + 1` bytes (413 when
/// exceeded), maps read timeouts to 408 and a body shorter than declared to 400.
pub fn read_limited(
    reader: &mut dyn Read,
    declared: Option<usize>,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::payload_too_large(limit));
    }
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let mut body = Vec::with_capacity(declared.unwrap_or(0).min(64 * 1024));
    if let Err(e) = reader.take(cap).read_to_end(&mut body) {
        return Err(match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                ApiError::request_timeout("timed out waiting for the request body")
                    .with_details(json!({ "received_bytes": body.len() }))
            }
            _ => ApiError::bad_request("could not read the request body")
                .with_details(json!({ "io_error": e.to_string() })),
        });
    }
    if body.len() > limit {
        return Err(ApiError::payload_too_large(limit));
    }
    if let Some(n) = declared {
        if body.len() < n {
            return Err(
                ApiError::bad_request("request body is shorter than its Content-Length")
                    .with_details(json!({ "declared_bytes": n, "received_bytes": body.len() })),
            );
        }
    }
    Ok(body)
}

/// Parses any JSON value; malformed or truncated input is a 400 whose details carry
/// the parser's message and position.
pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "request body is empty; expected JSON",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let what = if e.is_eof() {
            "request body is truncated JSON"
        } else {
            "request body is not valid JSON"
        };
        ApiError::bad_request(what).with_details(json!({
            "parse_error": e.to_string(),
            "line": e.line(),
            "column": e.column(),
        }))
    })
}

/// Parses a JSON object (the shape of every nodelink request body); other JSON is 400.
pub fn parse_json_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match parse_json(bytes)? {
        Value::Object(map) => Ok(map),
        other => Err(ApiError::bad_request("request body must be a JSON object")
            .with_details(json!({ "found": type_name(&other) }))),
    }
}

/// `read_body` then `parse_json_object`: the usual first line of a POST handler.
pub fn read_json_object(req: &mut Request, limit: usize) -> Result<Map<String, Value>, ApiError> {
    parse_json_object(&read_body(req, limit)?)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn missing(field: &str) -> ApiError {
    ApiError::bad_request(format!("missing field `{field}`"))
        .with_details(json!({ "field": field }))
}

fn extract<'a, T>(
    obj: &'a Map<String, Value>,
    field: &str,
    expected: &str,
    conv: impl Fn(&'a Value) -> Option<T>,
) -> Result<Option<T>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => conv(v).map(Some).ok_or_else(|| {
            ApiError::bad_request(format!("field `{field}` must be {expected}")).with_details(
                json!({ "field": field, "expected": expected, "found": type_name(v) }),
            )
        }),
    }
}

fn require<T>(obj: &Map<String, Value>, field: &str, got: Option<T>) -> Result<T, ApiError> {
    match got {
        Some(v) => Ok(v),
        // Present-but-null reads as "wrong type" rather than "missing", so the message
        // matches what the client actually sent.
        None if obj.get(field).is_some() => Err(ApiError::bad_request(format!(
            "field `{field}` must not be null"
        ))
        .with_details(json!({ "field": field, "found": "null" }))),
        None => Err(missing(field)),
    }
}

/// Required string field: 400 "missing field `x`" / "field `x` must be a string".
pub fn required_str<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a str, ApiError> {
    require(obj, field, optional_str(obj, field)?)
}

/// Optional string field (absent or null → `None`; other types → 400).
pub fn optional_str<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, ApiError> {
    extract(obj, field, "a string", Value::as_str)
}

/// Required non-negative integer field (e.g. a count or milliseconds).
pub fn required_u64(obj: &Map<String, Value>, field: &str) -> Result<u64, ApiError> {
    require(obj, field, optional_u64(obj, field)?)
}

/// Optional non-negative integer field; fractions and negatives are 400.
pub fn optional_u64(obj: &Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
    extract(obj, field, "a non-negative integer", Value::as_u64)
}

/// Required number field (integer or fraction), e.g. a timeout in seconds.
pub fn required_f64(obj: &Map<String, Value>, field: &str) -> Result<f64, ApiError> {
    require(obj, field, optional_f64(obj, field)?)
}

/// Optional number field: 400 "field `x` must be a number" for non-numbers.
pub fn optional_f64(obj: &Map<String, Value>, field: &str) -> Result<Option<f64>, ApiError> {
    extract(obj, field, "a number", Value::as_f64)
}

/// Required boolean field.
pub fn required_bool(obj: &Map<String, Value>, field: &str) -> Result<bool, ApiError> {
    require(obj, field, optional_bool(obj, field)?)
}

/// Optional boolean field.
pub fn optional_bool(obj: &Map<String, Value>, field: &str) -> Result<Option<bool>, ApiError> {
    extract(obj, field, "a boolean", Value::as_bool)
}

/// Required JSON-object field (e.g. an environment map).
pub fn required_object<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
) -> Result<&'a Map<String, Value>, ApiError> {
    require(obj, field, optional_object(obj, field)?)
}

/// Optional JSON-object field.
pub fn optional_object<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a Map<String, Value>>, ApiError> {
    extract(obj, field, "an object", Value::as_object)
}

/// Required array field (e.g. command arguments).
pub fn required_array<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
) -> Result<&'a Vec<Value>, ApiError> {
    require(obj, field, optional_array(obj, field)?)
}

/// Optional array field.
pub fn optional_array<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a Vec<Value>>, ApiError> {
    extract(obj, field, "an array", Value::as_array)
}

/// Rejects members not in `allowed` (400 "unknown field `x`"), catching client typos
/// such as `timout` that would otherwise be silently ignored.
pub fn reject_unknown_fields(obj: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err(ApiError::bad_request(format!("unknown field `{k}`"))
            .with_details(json!({ "field": k, "allowed": allowed }))),
    }
}

/// Extracts the token from an `Authorization` value `Bearer <token>` (scheme matched
/// case-insensitively); `None` for other schemes or an empty token.
pub fn parse_bearer(value: &str) -> Option<&str> {
    let value = value.trim();
    let (scheme, token) = value.split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The bearer token the request presents, if any.
pub fn bearer_token(req: &Request) -> Option<&str> {
    header(req, "Authorization").and_then(parse_bearer)
}

/// 401 unless the request carries `Authorization: Bearer <expected>`; compared in
/// constant time. An empty `expected` rejects everything (fail closed).
pub fn require_bearer(req: &Request, expected: &str) -> Result<(), ApiError> {
    let Some(value) = header(req, "Authorization") else {
        return Err(ApiError::unauthorized("missing bearer token"));
    };
    let Some(token) = parse_bearer(value) else {
        return Err(ApiError::unauthorized(
            "Authorization header must be `Bearer <token>`",
        ));
    };
    let ok = constant_time_eq(token.as_bytes(), expected.as_bytes());
    if ok && !expected.is_empty() {
        Ok(())
    } else {
        Err(ApiError::unauthorized("invalid bearer token"))
    }
}

/// The SSE `Last-Event-ID` a reconnecting client sends, trimmed; `None` if absent or
/// blank, so the caller can resume a stream after that event.
pub fn last_event_id(req: &Request) -> Option<&str> {
    header(req, "Last-Event-ID")
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use tiny_http::{Header, TestRequest};

    fn req_with(headers: &[(&str, &str)]) -> Request {
        let mut t = TestRequest::new();
        for (n, v) in headers {
            let h = Header::from_bytes(n.as_bytes(), v.as_bytes()).expect("header");
            t = t.with_header(h);
        }
        t.into()
    }

    #[test]
    fn split_and_decode() {
        assert_eq!(split_url("/a/b?x=1#frag"), ("/a/b", Some("x=1")));
        assert_eq!(split_url("/a#f?x"), ("/a", None));
        assert_eq!(percent_decode("a%20b%2fc+d"), "a b/c+d");
        assert_eq!(percent_decode_query("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%C3%A9"), "é");
        assert_eq!(percent_decode("%FF"), "\u{FFFD}");
    }

    #[test]
    fn query_parsing() {
        let q = Query::from_url("/tasks?state=a&limit=5&state=b+c&flag&e=%26%3D&=v");
        assert_eq!(q.get("limit"), Some("5"));
        assert_eq!(q.get_all("state").collect::<Vec<_>>(), vec!["a", "b c"]);
        assert_eq!(q.get("flag"), Some(""));
        assert_eq!(q.get("e"), Some("&="));
        assert_eq!(q.get(""), Some("v"));
        assert_eq!(q.get("missing"), None);
        assert_eq!(q.u64("limit"), Ok(Some(5)));
        assert_eq!(q.u64("missing"), Ok(None));
        let err = q.u64("state").expect_err("not a number");
        assert_eq!(err.status(), 400);
        assert_eq!(
            err.message(),
            "query parameter `state` must be a non-negative integer"
        );
        assert_eq!(Query::parse("x=1").bool("x"), Ok(Some(true)));
        assert_eq!(
            Query::parse("x=no").bool("x").map_err(|e| e.status()),
            Err(400)
        );
        assert!(Query::from_url("/plain").pairs().is_empty());
    }

    #[test]
    fn bearer_auth() {
        assert_eq!(parse_bearer("Bearer abc"), Some("abc"));
        assert_eq!(parse_bearer("bearer   abc  "), Some("abc"));
        assert_eq!(parse_bearer("Basic abc"), None);
        assert_eq!(parse_bearer("Bearer "), None);
        assert_eq!(parse_bearer("Bearer"), None);

        let status = |h: &[(&str, &str)], expected: &str| {
            require_bearer(&req_with(h), expected).map_err(|e| (e.status(), e.message().to_owned()))
        };
        assert_eq!(status(&[("Authorization", "Bearer tok")], "tok"), Ok(()));
        assert_eq!(
            status(&[], "tok"),
            Err((401, "missing bearer token".to_owned()))
        );
        assert_eq!(
            status(&[("Authorization", "Bearer nope")], "tok"),
            Err((401, "invalid bearer token".to_owned()))
        );
        assert_eq!(
            status(&[("Authorization", "Basic dG9r")], "tok").map_err(|e| e.0),
            Err(401)
        );
        // An unset expected token never authenticates anybody.
        assert_eq!(
            status(&[("Authorization", "Bearer x")], "").map_err(|e| e.0),
            Err(401)
        );
    }

    #[test]
    fn last_event_id_header() {
        assert_eq!(
            last_event_id(&req_with(&[("Last-Event-ID", " 41 ")])),
            Some("41")
        );
        assert_eq!(last_event_id(&req_with(&[("last-event-id", "")])), None);
        assert_eq!(last_event_id(&req_with(&[])), None);
    }

    #[test]
    fn body_limits() {
        let read = |data: &[u8], declared: Option<usize>, limit: usize| {
            read_limited(&mut Cursor::new(data.to_vec()), declared, limit).map_err(|e| e.status())
        };
        assert_eq!(read(b"abc", Some(3), 3), Ok(b"abc".to_vec()));
        assert_eq!(read(b"abc", Some(4), 3), Err(413)); // declared too large: no read
        assert_eq!(read(b"abcd", None, 3), Err(413)); // undeclared (chunked) over limit
        assert_eq!(read(b"abc", None, 3), Ok(b"abc".to_vec()));
        assert_eq!(read(b"ab", Some(3), 3), Err(400)); // truncated
        assert_eq!(read(b"", None, 0), Ok(Vec::new()));

        struct Stalled;
        impl Read for Stalled {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::ErrorKind::WouldBlock.into())
            }
        }
        let err = read_limited(&mut Stalled, Some(10), 100).expect_err("timeout");
        assert_eq!(err.status(), 408);
    }

    #[test]
    fn body_limit_with_real_request() {
        let mut req: Request = TestRequest::new().with_body("{\"a\":1}").into();
        assert_eq!(read_json_object(&mut req, 100).map(|o| o.len()), Ok(1));
        let mut req: Request = TestRequest::new().with_body("{\"a\":1}").into();
        assert_eq!(read_body(&mut req, 3).map_err(|e| e.status()), Err(413));
    }

    #[test]
    fn json_errors() {
        let err = parse_json_object(br#"{"agent_id": "a"#).expect_err("truncated");
        assert_eq!(err.status(), 400);
        assert_eq!(err.message(), "request body is truncated JSON");
        let details = err.details().expect("details");
        assert!(details["parse_error"]
            .as_str()
            .is_some_and(|m| m.contains("EOF while parsing")));
        assert_eq!(details["line"], 1);

        let err = parse_json_object(b"{\"a\": tru}").expect_err("malformed");
        assert_eq!(err.message(), "request body is not valid JSON");
        let err = parse_json_object(b"[1]").expect_err("array");
        assert_eq!(err.message(), "request body must be a JSON object");
        assert_eq!(err.details(), Some(&json!({"found": "array"})));
        let err = parse_json_object(b"  \n").expect_err("empty");
        assert_eq!(err.status(), 400);
        assert_eq!(parse_json(b"3").ok(), Some(json!(3)));
    }

    #[test]
    fn field_extraction_messages() {
        let obj = parse_json_object(
            br#"{"agent_id":"a1","timeout":"soon","count":-1,"ratio":0.5,"on":true,
                "env":{"K":"V"},"args":["x"],"nothing":null}"#,
        )
        .expect("object");
        let msg = |r: Result<(), ApiError>| r.map_err(|e| (e.status(), e.message().to_owned()));

        assert_eq!(required_str(&obj, "agent_id"), Ok("a1"));
        assert_eq!(
            msg(required_str(&obj, "agent").map(drop)),
            Err((400, "missing field `agent`".to_owned()))
        );
        assert_eq!(
            msg(required_f64(&obj, "timeout").map(drop)),
            Err((400, "field `timeout` must be a number".to_owned()))
        );
        assert_eq!(
            msg(optional_u64(&obj, "count").map(drop)),
            Err((
                400,
                "field `count` must be a non-negative integer".to_owned()
            ))
        );
        assert_eq!(
            msg(required_str(&obj, "nothing").map(drop)),
            Err((400, "field `nothing` must not be null".to_owned()))
        );
        assert_eq!(optional_str(&obj, "nothing"), Ok(None));
        assert_eq!(optional_str(&obj, "absent"), Ok(None));
        assert_eq!(required_f64(&obj, "ratio"), Ok(0.5));
        assert_eq!(
            optional_u64(&obj, "ratio").map_err(|e| e.status()),
            Err(400)
        );
        assert_eq!(required_bool(&obj, "on"), Ok(true));
        assert_eq!(
            optional_bool(&obj, "agent_id").map_err(|e| e.status()),
            Err(400)
        );
        assert_eq!(required_object(&obj, "env").map(|m| m.len()), Ok(1));
        assert_eq!(required_array(&obj, "args").map(|a| a.len()), Ok(1));
        assert_eq!(
            optional_array(&obj, "env").map_err(|e| e.status()),
            Err(400)
        );
        assert_eq!(optional_object(&obj, "absent"), Ok(None));
        let err = required_str(&obj, "count")
            .map(drop)
            .expect_err("wrong type");
        assert_eq!(
            err.details(),
            Some(&json!({"field": "count", "expected": "a string", "found": "number"}))
        );
        assert_eq!(
            msg(reject_unknown_fields(&obj, &["agent_id"])).map_err(|e| e.0),
            Err(400)
        );
        let small = parse_json_object(br#"{"a":1}"#).expect("object");
        assert_eq!(reject_unknown_fields(&small, &["a", "b"]), Ok(()));
    }
}
