//! The route table: plain data, so docs/openapi.yaml can be checked against it.

use crate::http::RouteSpec;

/// Every endpoint of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// `POST /tasks/shell`
    CreateShell,
    /// `POST /tasks/docker`
    CreateDocker,
    /// `GET /tasks`
    ListTasks,
    /// `GET /tasks/{id}`
    GetTask,
    /// `DELETE /tasks/{id}`
    CancelTask,
    /// `GET /agents`
    ListAgents,
    /// `GET /agents/{id}/tasks`
    AgentTasks,
    /// `GET /stream`
    Stream,
    /// `GET /healthz`
    Health,
    /// `GET /readyz`
    Ready,
    /// `GET /metrics`
    Metrics,
}

/// Method, path pattern and route of every endpoint.
pub const ROUTES: &[RouteSpec<Route>] = &[
    RouteSpec::new("POST", "/tasks/shell", Route::CreateShell),
    RouteSpec::new("POST", "/tasks/docker", Route::CreateDocker),
    RouteSpec::new("GET", "/tasks", Route::ListTasks),
    RouteSpec::new("GET", "/tasks/{id}", Route::GetTask),
    RouteSpec::new("DELETE", "/tasks/{id}", Route::CancelTask),
    RouteSpec::new("GET", "/agents", Route::ListAgents),
    RouteSpec::new("GET", "/agents/{id}/tasks", Route::AgentTasks),
    RouteSpec::new("GET", "/stream", Route::Stream),
    RouteSpec::new("GET", "/healthz", Route::Health),
    RouteSpec::new("GET", "/readyz", Route::Ready),
    RouteSpec::new("GET", "/metrics", Route::Metrics),
];
