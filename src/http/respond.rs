//! Sending finished responses: JSON bodies with a status and extra headers, and
//! `ApiError`s in their JSON shape. Called on the worker thread that owns the
//! request. A client that has gone away is normal for an orchestrator (CLI killed,
//! dashboard closed), so a failed write is logged at debug and otherwise ignored:
//! nothing here panics or returns an error the handler would have to thread through.
//! Header names/values are validated here (tiny_http accepts CR/LF in values, which
//! would allow response splitting), and `sse` reuses that check.

use std::io::{Cursor, Read};

use serde_json::Value;
use tiny_http::{Header, Request, Response};

use super::error::ApiError;

/// True if `name` is an HTTP token and `value` has no control characters (no CR/LF),
/// i.e. the pair cannot break the response framing.
pub fn valid_header(name: &str, value: &str) -> bool {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    !name.is_empty()
        && name.bytes().all(token)
        && value
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// Builds a tiny_http header, or `None` (logged) if the pair is not a safe header.
pub fn make_header(name: &str, value: &str) -> Option<Header> {
    if !valid_header(name, value) {
        log::warn!("dropping invalid response header {name:?}");
        return None;
    }
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

/// Serializes `body` into a complete response with `Content-Type: application/json`
/// and an exact `Content-Length` (never chunked, whatever the size).
pub fn json_response(
    status: u16,
    body: &Value,
    headers: &[(&str, &str)],
) -> Response<Cursor<Vec<u8>>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|e| {
        log::error!("cannot serialize JSON response: {e}");
        br#"{"error":"internal server error","details":null}"#.to_vec()
    });
    let mut response = Response::from_data(bytes)
        .with_status_code(status)
        .with_chunked_threshold(usize::MAX);
    let content_type = make_header("Content-Type", "application/json");
    for h in content_type
        .into_iter()
        .chain(headers.iter().filter_map(|(n, v)| make_header(n, v)))
    {
        response.add_header(h);
    }
    response
}

/// Sends any response; returns false (after a debug log) if the client is gone.
pub fn send<R: Read>(req: Request, response: Response<R>) -> bool {
    let method = req.method().clone();
    let url = req.url().to_owned();
    match req.respond(response) {
        Ok(()) => true,
        Err(e) => {
            log::debug!("could not send response to {method} {url}: {e}");
            false
        }
    }
}

/// Sends `body` as JSON with `status`.
pub fn json(req: Request, status: u16, body: &Value) -> bool {
    send(req, json_response(status, body, &[]))
}

/// Sends `body` as JSON with `status` plus extra headers (e.g. `Location`).
pub fn json_with_headers(
    req: Request,
    status: u16,
    body: &Value,
    headers: &[(&str, &str)],
) -> bool {
    send(req, json_response(status, body, headers))
}

/// Renders an `ApiError` as its status, headers and `{"error", "details"}` body.
pub fn error_response(err: &ApiError) -> Response<Cursor<Vec<u8>>> {
    let headers: Vec<(&str, &str)> = err
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    json_response(err.status(), &err.to_json(), &headers)
}

/// Sends an `ApiError` to the client.
pub fn error(req: Request, err: &ApiError) -> bool {
    send(req, error_response(err))
}

/// Sends a body-less response such as `204 No Content`.
pub fn empty(req: Request, status: u16) -> bool {
    send(req, Response::empty(status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn header_value<R: Read>(r: &Response<R>, name: &str) -> Option<String> {
        r.headers()
            .iter()
            .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str().to_owned())
    }

    #[test]
    fn header_validation() {
        assert!(valid_header("X-Request-Id", "abc 123\t!"));
        assert!(!valid_header("X-Bad", "a\r\nSet-Cookie: x"));
        assert!(!valid_header("Bad Name", "v"));
        assert!(!valid_header("", "v"));
        assert!(!valid_header("X", "caf\u{e9}"));
        assert!(make_header("X-Ok", "1").is_some());
        assert!(make_header("X-Bad", "1\n2").is_none());
    }

    #[test]
    fn json_response_has_type_length_and_headers() {
        let r = json_response(
            201,
            &json!({"id": "t1"}),
            &[("Location", "/tasks/t1"), ("X", "\r")],
        );
        assert_eq!(r.status_code().0, 201);
        assert_eq!(
            header_value(&r, "Content-Type").as_deref(),
            Some("application/json")
        );
        assert_eq!(header_value(&r, "Location").as_deref(), Some("/tasks/t1"));
        assert_eq!(header_value(&r, "X"), None);
        assert_eq!(r.data_length(), Some(br#"{"id":"t1"}"#.len()));
    }

    #[test]
    fn error_response_carries_status_headers_body() {
        let r = error_response(&ApiError::method_not_allowed(&["GET"]));
        assert_eq!(r.status_code().0, 405);
        assert_eq!(header_value(&r, "Allow").as_deref(), Some("GET"));
        let mut body = Vec::new();
        r.into_reader()
            .read_to_end(&mut body)
            .expect("in-memory read");
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["error"], "method not allowed");
    }
}
