//! The route table: a plain list of `RouteSpec { method, pattern, name }` that the
//! caller declares as a `const` (so tests and doc checks can enumerate it), and a
//! `Router` that resolves a method + URL into the caller's route name plus decoded
//! path parameters, or into a 404 / 405-with-`Allow` `ApiError`. It is generic over
//! the name type `N` (typically a caller-defined `enum`), so it knows nothing about
//! what the routes do. A `Router` is built once at startup and shared read-only
//! (`&Router` or `Arc<Router>`) by all worker threads; it holds no locks.
//!
//! Resolution rule: among the patterns that match the path, the most specific wins
//! (comparing segment by segment from the left, a literal beats a `{param}`), so
//! `/tasks/stats` beats `/tasks/{id}` regardless of table order. The method is then
//! looked up among the routes with that winning pattern; `HEAD` falls back to `GET`.

use super::error::ApiError;
use super::request::{percent_decode, split_url};
use serde_json::json;

/// One row of the route table: HTTP method, path pattern (`/tasks/{id}`) and the
/// caller's name for it; `const`-constructible so tables can be plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteSpec<N> {
    /// Upper-case HTTP method, e.g. `"GET"`.
    pub method: &'static str,
    /// Path pattern: `/`-separated literal segments and `{name}` parameters.
    pub pattern: &'static str,
    /// What the caller dispatches on when this route matches.
    pub name: N,
}

impl<N> RouteSpec<N> {
    /// Const constructor so route tables can be `pub const ROUTES: &[RouteSpec<_>]`.
    pub const fn new(method: &'static str, pattern: &'static str, name: N) -> RouteSpec<N> {
        RouteSpec {
            method,
            pattern,
            name,
        }
    }
}

/// Decoded path parameters of a matched route, in pattern order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    pairs: Vec<(&'static str, String)>,
}

impl Params {
    /// The percent-decoded value of parameter `name`, if the pattern has it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// All `(name, value)` pairs, for logging or generic handlers.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.pairs.iter().map(|(n, v)| (*n, v.as_str()))
    }
}

/// The result of a successful resolution: which route, and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch<N> {
    /// The caller's route name from the matching `RouteSpec`.
    pub name: N,
    /// The matching pattern, useful as a low-cardinality metrics/log label.
    pub pattern: &'static str,
    /// Decoded path parameters.
    pub params: Params,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment {
    Literal(&'static str),
    Param(&'static str),
}

/// A validated, pre-split route table that resolves requests; build once, share.
#[derive(Debug, Clone)]
pub struct Router<N> {
    routes: Vec<RouteSpec<N>>,
    compiled: Vec<Vec<Segment>>,
}

impl<N: Clone> Router<N> {
    /// Validates and compiles `routes`; the error names the offending row so a
    /// startup `expect` or a unit test points straight at the typo.
    pub fn new(routes: &[RouteSpec<N>]) -> Result<Router<N>, String> {
        let mut compiled: Vec<Vec<Segment>> = Vec::with_capacity(routes.len());
        for (i, r) in routes.iter().enumerate() {
            let where_ = format!("route #{i} `{} {}`", r.method, r.pattern);
            if r.method.is_empty() || !r.method.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(format!("{where_}: method must be upper-case letters"));
            }
            let segs = compile(r.pattern).map_err(|e| format!("{where_}: {e}"))?;
            for (j, other) in compiled.iter().enumerate() {
                if routes[j].method == r.method && same_shape(other, &segs) {
                    return Err(format!(
                        "{where_}: same method and path shape as `{} {}`",
                        routes[j].method, routes[j].pattern
                    ));
                }
            }
            compiled.push(segs);
        }
        Ok(Router {
            routes: routes.to_vec(),
            compiled,
        })
    }

    /// The table this router was built from (for docs/OpenAPI consistency tests).
    pub fn routes(&self) -> &[RouteSpec<N>] {
        &self.routes
    }

    /// Resolves `method` + request `url` (query string ignored) into a route, or a
    /// 404 (no pattern matches) / 405 with `Allow` (pattern matches, method doesn't).
    pub fn resolve(&self, method: &str, url: &str) -> Result<RouteMatch<N>, ApiError> {
        let (path, _) = split_url(url);
        let not_found = || {
            ApiError::not_found("no route matches this path").with_details(json!({ "path": path }))
        };
        let Some(rest) = path.strip_prefix('/') else {
            return Err(not_found());
        };
        let segments: Vec<String> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').map(percent_decode).collect()
        };

        // The most specific matching shape: literal-vs-param mask, literal is greater.
        let mut best: Option<Vec<bool>> = None;
        for segs in &self.compiled {
            if matches(segs, &segments) {
                let mask: Vec<bool> = segs
                    .iter()
                    .map(|s| matches!(s, Segment::Literal(_)))
                    .collect();
                if best.as_ref().is_none_or(|b| mask > *b) {
                    best = Some(mask);
                }
            }
        }
        let Some(best) = best else {
            return Err(not_found());
        };
        let candidates: Vec<usize> = (0..self.routes.len())
            .filter(|&i| {
                matches(&self.compiled[i], &segments)
                    && self.compiled[i]
                        .iter()
                        .map(|s| matches!(s, Segment::Literal(_)))
                        .eq(best.iter().copied())
            })
            .collect();

        let pick = candidates
            .iter()
            .copied()
            .find(|&i| self.routes[i].method == method)
            .or_else(|| {
                if method == "HEAD" {
                    candidates
                        .iter()
                        .copied()
                        .find(|&i| self.routes[i].method == "GET")
                } else {
                    None
                }
            });
        let Some(i) = pick else {
            let mut allowed: Vec<&str> = Vec::new();
            for &i in &candidates {
                let m = self.routes[i].method;
                if !allowed.contains(&m) {
                    allowed.push(m);
                }
            }
            if allowed.contains(&"GET") && !allowed.contains(&"HEAD") {
                allowed.push("HEAD");
            }
            return Err(ApiError::method_not_allowed(&allowed));
        };

        let pairs = self.compiled[i]
            .iter()
            .zip(segments)
            .filter_map(|(seg, value)| match seg {
                Segment::Param(name) => Some((*name, value)),
                Segment::Literal(_) => None,
            })
            .collect();
        Ok(RouteMatch {
            name: self.routes[i].name.clone(),
            pattern: self.routes[i].pattern,
            params: Params { pairs },
        })
    }
}

fn compile(pattern: &'static str) -> Result<Vec<Segment>, String> {
    let Some(rest) = pattern.strip_prefix('/') else {
        return Err("pattern must start with `/`".into());
    };
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let mut segs = Vec::new();
    for raw in rest.split('/') {
        if raw.is_empty() {
            return Err("empty segment (double or trailing `/`)".into());
        }
        if let Some(name) = raw.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("bad parameter name in `{raw}`"));
            }
            if segs.contains(&Segment::Param(name)) {
                return Err(format!("parameter `{name}` appears twice"));
            }
            segs.push(Segment::Param(name));
        } else if raw.contains(['{', '}', '?', '#', '%']) {
            return Err(format!(
                "literal segment `{raw}` contains a reserved character"
            ));
        } else {
            segs.push(Segment::Literal(raw));
        }
    }
    Ok(segs)
}

fn same_shape(a: &[Segment], b: &[Segment]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|pair| match pair {
            (Segment::Literal(x), Segment::Literal(y)) => x == y,
            (Segment::Param(_), Segment::Param(_)) => true,
            _ => false,
        })
}

fn matches(segs: &[Segment], path: &[String]) -> bool {
    segs.len() == path.len()
        && segs.iter().zip(path).all(|(seg, value)| match seg {
            Segment::Literal(lit) => lit == value,
            Segment::Param(_) => !value.is_empty(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum R {
        Root,
        List,
        Create,
        Stats,
        Get,
        Delete,
        Events,
    }

    const ROUTES: &[RouteSpec<R>] = &[
        RouteSpec::new("GET", "/", R::Root),
        RouteSpec::new("GET", "/tasks", R::List),
        RouteSpec::new("POST", "/tasks", R::Create),
        RouteSpec::new("GET", "/tasks/{id}", R::Get),
        RouteSpec::new("DELETE", "/tasks/{id}", R::Delete),
        RouteSpec::new("GET", "/tasks/{id}/events", R::Events),
        RouteSpec::new("POST", "/tasks/stats", R::Stats),
    ];

    fn router() -> Router<R> {
        Router::new(ROUTES).expect("valid table")
    }

    fn allow(err: &ApiError) -> Option<&str> {
        err.headers()
            .iter()
            .find(|(n, _)| n == "Allow")
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn matches_literals_and_params() {
        let r = router();
        assert_eq!(r.resolve("GET", "/").map(|m| m.name), Ok(R::Root));
        assert_eq!(
            r.resolve("GET", "/tasks?limit=5").map(|m| m.name),
            Ok(R::List)
        );
        assert_eq!(r.resolve("POST", "/tasks").map(|m| m.name), Ok(R::Create));
        let m = r.resolve("GET", "/tasks/abc-1/events").expect("match");
        assert_eq!(m.name, R::Events);
        assert_eq!(m.pattern, "/tasks/{id}/events");
        assert_eq!(m.params.get("id"), Some("abc-1"));
        assert_eq!(m.params.get("nope"), None);
        let m = r.resolve("DELETE", "/tasks/42").expect("match");
        assert_eq!((m.name, m.params.get("id")), (R::Delete, Some("42")));
    }

    #[test]
    fn params_are_percent_decoded() {
        let m = router().resolve("GET", "/tasks/a%20b%2Fc").expect("match");
        assert_eq!(m.params.get("id"), Some("a b/c"));
        assert_eq!(m.params.iter().collect::<Vec<_>>(), vec![("id", "a b/c")]);
    }

    #[test]
    fn unknown_paths_are_404() {
        let r = router();
        for url in [
            "/nope",
            "/tasks/1/2",
            "/tasks/",
            "//tasks",
            "*",
            "",
            "/tasks//events",
        ] {
            let err = r.resolve("GET", url).expect_err(url);
            assert_eq!(err.status(), 404, "{url}");
        }
    }

    #[test]
    fn wrong_method_is_405_with_allow() {
        let r = router();
        let err = r.resolve("PUT", "/tasks").expect_err("405");
        assert_eq!(err.status(), 405);
        assert_eq!(allow(&err), Some("GET, POST, HEAD"));
        let err = r.resolve("POST", "/tasks/7").expect_err("405");
        assert_eq!(allow(&err), Some("GET, DELETE, HEAD"));
    }

    #[test]
    fn most_specific_pattern_wins() {
        let r = router();
        // `/tasks/stats` (literal) beats `/tasks/{id}` even though it is listed later,
        // so GET on it is a 405 rather than a lookup of a task called "stats".
        assert_eq!(
            r.resolve("POST", "/tasks/stats").map(|m| m.name),
            Ok(R::Stats)
        );
        let err = r.resolve("GET", "/tasks/stats").expect_err("405");
        assert_eq!(allow(&err), Some("POST"));
    }

    #[test]
    fn head_falls_back_to_get() {
        assert_eq!(
            router().resolve("HEAD", "/tasks").map(|m| m.name),
            Ok(R::List)
        );
    }

    #[test]
    fn table_is_enumerable() {
        let r = router();
        assert_eq!(r.routes().len(), ROUTES.len());
        assert!(r
            .routes()
            .iter()
            .any(|s| s.method == "DELETE" && s.pattern == "/tasks/{id}"));
    }

    #[test]
    fn invalid_tables_are_rejected() {
        let bad: &[&[RouteSpec<u8>]] = &[
            &[RouteSpec::new("get", "/x", 0)],
            &[RouteSpec::new("GET", "x", 0)],
            &[RouteSpec::new("GET", "/x/", 0)],
            &[RouteSpec::new("GET", "/{}", 0)],
            &[RouteSpec::new("GET", "/{a}/{a}", 0)],
            &[RouteSpec::new("GET", "/a%20", 0)],
            &[
                RouteSpec::new("GET", "/t/{id}", 0),
                RouteSpec::new("GET", "/t/{x}", 1),
            ],
        ];
        for table in bad {
            assert!(Router::new(table).is_err(), "{table:?}");
        }
    }
}
