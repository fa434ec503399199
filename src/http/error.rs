//! `ApiError`: the one place where a failure becomes an HTTP status. Every helper in
//! `http::*` and every REST handler returns `Result<_, ApiError>`; the constructors
//! below pick the status code and any headers that status requires (`Allow` for 405,
//! `WWW-Authenticate` for 401, `Retry-After` for 429/503), and `respond::error` turns
//! the value into a `{"error": "...", "details": ...}` JSON body. Values are plain data
//! (Send + Sync, no I/O), built and consumed on whichever worker thread handles the
//! request, so they can be unit-tested without a socket.

use std::fmt;
use std::time::Duration;

use serde_json::{json, Value};

use crate::limits::Limit;

/// A client-visible failure: status code, message, optional structured details and
/// the extra headers the status calls for; rendered as JSON by `respond::error`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    status: u16,
    error: String,
    details: Option<Value>,
    headers: Vec<(String, String)>,
    limit: Option<Limit>,
}

impl ApiError {
    /// Builds an error with an arbitrary status; prefer the named constructors so the
    /// status choice stays in this file.
    pub fn new(status: u16, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            details: None,
            headers: Vec::new(),
            limit: None,
        }
    }

    /// 400: the request is malformed (bad JSON, wrong field type, bad query value).
    pub fn bad_request(error: impl Into<String>) -> ApiError {
        ApiError::new(400, error)
    }

    /// 401 with `WWW-Authenticate: Bearer` (RFC 6750): credentials missing or wrong.
    pub fn unauthorized(error: impl Into<String>) -> ApiError {
        ApiError::new(401, error).with_header("WWW-Authenticate", "Bearer")
    }

    /// 404: no such route or no such resource.
    pub fn not_found(error: impl Into<String>) -> ApiError {
        ApiError::new(404, error)
    }

    /// 405 with an `Allow` header listing the methods the path does accept.
    pub fn method_not_allowed(allowed: &[&str]) -> ApiError {
        let allow = allowed.join(", ");
        ApiError::new(405, "method not allowed")
            .with_details(json!({ "allowed": allowed }))
            .with_header("Allow", &allow)
    }

    /// 408: the client stopped sending its request body (socket read timed out).
    pub fn request_timeout(error: impl Into<String>) -> ApiError {
        ApiError::new(408, error)
    }

    /// 409: the request conflicts with the resource's current state.
    pub fn conflict(error: impl Into<String>) -> ApiError {
        ApiError::new(409, error)
    }

    /// 413: the body is (or declares itself) larger than `limit` bytes.
    pub fn payload_too_large(limit: usize) -> ApiError {
        ApiError::new(
            413,
            format!("request body exceeds the limit of {limit} bytes"),
        )
        .with_details(json!({ "limit_bytes": limit }))
        .with_limit(Limit::BodyBytes)
    }

    /// 429 with an optional `Retry-After` (whole seconds, rounded up).
    pub fn too_many_requests(error: impl Into<String>, retry_after: Option<Duration>) -> ApiError {
        with_retry_after(ApiError::new(429, error), retry_after)
    }

    /// 503 with an optional `Retry-After`: the service cannot take the request now.
    pub fn service_unavailable(
        error: impl Into<String>,
        retry_after: Option<Duration>,
    ) -> ApiError {
        with_retry_after(ApiError::new(503, error), retry_after)
    }

    /// 500: a bug or unexpected internal failure; keep the message free of secrets.
    pub fn internal(error: impl Into<String>) -> ApiError {
        ApiError::new(500, error)
    }

    /// Attaches structured details (rendered as the `details` member).
    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }

    /// Adds a response header; used by the constructors for status-mandated headers.
    pub fn with_header(mut self, name: &str, value: &str) -> ApiError {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Marks the error as a hit of a configured limit, so the edge counts it.
    pub fn with_limit(mut self, limit: Limit) -> ApiError {
        self.limit = Some(limit);
        self
    }

    /// The configured limit this error reports hitting, if any.
    pub fn limit(&self) -> Option<Limit> {
        self.limit
    }

    /// The HTTP status code this error is sent with.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The human-readable message (the `error` member).
    pub fn message(&self) -> &str {
        &self.error
    }

    /// The structured details, if any (the `details` member).
    pub fn details(&self) -> Option<&Value> {
        self.details.as_ref()
    }

    /// Extra headers to send with the error response.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The JSON body: `{"error": message, "details": details-or-null}` (stable shape).
    pub fn to_json(&self) -> Value {
        json!({
            "error": self.error,
            "details": self.details.clone().unwrap_or(Value::Null),
        })
    }
}

fn with_retry_after(err: ApiError, retry_after: Option<Duration>) -> ApiError {
    match retry_after {
        Some(d) => {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            err.with_header("Retry-After", &secs.to_string())
        }
        None => err,
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.error)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(e: &'a ApiError, name: &str) -> Option<&'a str> {
        e.headers()
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn constructors_pick_statuses() {
        let cases = [
            (ApiError::bad_request("x"), 400),
            (ApiError::unauthorized("x"), 401),
            (ApiError::not_found("x"), 404),
            (ApiError::method_not_allowed(&["GET"]), 405),
            (ApiError::request_timeout("x"), 408),
            (ApiError::conflict("x"), 409),
            (ApiError::payload_too_large(10), 413),
            (ApiError::too_many_requests("x", None), 429),
            (ApiError::internal("x"), 500),
            (ApiError::service_unavailable("x", None), 503),
        ];
        for (err, status) in cases {
            assert_eq!(err.status(), status, "{err}");
        }
    }

    #[test]
    fn json_shape_is_stable() {
        let e = ApiError::bad_request("missing field `a`");
        assert_eq!(
            e.to_json(),
            json!({"error": "missing field `a`", "details": null})
        );
        let e = e.with_details(json!({"field": "a"}));
        assert_eq!(e.to_json()["details"], json!({"field": "a"}));
    }

    #[test]
    fn status_mandated_headers() {
        let e = ApiError::method_not_allowed(&["GET", "DELETE"]);
        assert_eq!(header(&e, "allow"), Some("GET, DELETE"));
        assert_eq!(e.to_json()["details"]["allowed"], json!(["GET", "DELETE"]));
        assert_eq!(
            header(&ApiError::unauthorized("x"), "WWW-Authenticate"),
            Some("Bearer")
        );
        let e = ApiError::too_many_requests("slow down", Some(Duration::from_millis(1500)));
        assert_eq!(header(&e, "Retry-After"), Some("2"));
        let e = ApiError::service_unavailable("draining", Some(Duration::from_secs(3)));
        assert_eq!(header(&e, "Retry-After"), Some("3"));
        assert_eq!(header(&ApiError::internal("x"), "Retry-After"), None);
    }
}
