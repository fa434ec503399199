//! `GET /metrics`: Prometheus text exposition through the `prometheus-client` crate.
//!
//! Most figures already live in the parts that own them (`tasks::Stats`, the agent
//! directory, the SSE hub, `limits::LimitHits`, tiny_http's `ServerCounters`); a collector
//! reads them at scrape time, so nothing is counted twice and the hot paths stay plain
//! atomics. Only HTTP request counts and latencies are recorded here, by the API's workers.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::limits::{Limit, LimitHits};
use crate::link::AgentDirectory;
use crate::sse::SseHub;
use crate::store::Store;
use crate::tasks::{TaskManager, TaskStatus};

type RouteCode = [(&'static str, String); 2];
type RouteOnly = [(&'static str, String); 1];

/// HTTP latency buckets (seconds): sub-millisecond API calls up to slow clients.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// The server's metrics registry.
pub struct Metrics {
    registry: Registry,
    http_requests: Family<RouteCode, Counter>,
    http_latency: Family<RouteOnly, Histogram, fn() -> Histogram>,
}

impl Metrics {
    /// A registry exposing the state of `manager`, `directory` and `hub`, and the limit hits
    /// counted in `hits` and by tiny_http in `edge`.
    pub fn new(
        manager: TaskManager,
        directory: Arc<AgentDirectory>,
        hub: Arc<SseHub>,
        hits: Arc<LimitHits>,
        edge: Arc<tiny_http::ServerCounters>,
        store: Option<Arc<Store>>,
    ) -> Arc<Self> {
        let mut registry = Registry::default();
        let http_requests = Family::<RouteCode, Counter>::default();
        let http_latency: Family<RouteOnly, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS));
        registry.register(
            "nodelink_http_requests",
            "HTTP requests by route and status code",
            http_requests.clone(),
        );
        registry.register(
            "nodelink_http_request_duration_seconds",
            "HTTP request latency by route (streams: until the stream starts)",
            http_latency.clone(),
        );
        registry.register_collector(Box::new(StateCollector {
            manager,
            directory,
            hub,
            hits,
            edge,
            store,
        }));
        Arc::new(Metrics {
            registry,
            http_requests,
            http_latency,
        })
    }

    /// Records one answered request; `route` is the route pattern (low cardinality).
    pub fn observe_request(&self, route: &'static str, code: u16, elapsed: Duration) {
        self.http_requests
            .get_or_create(&[("route", route.to_string()), ("code", code.to_string())])
            .inc();
        self.http_latency
            .get_or_create(&[("route", route.to_string())])
            .observe(elapsed.as_secs_f64());
    }

    /// The exposition in Prometheus/OpenMetrics text format.
    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Reads the owners' counters at scrape time.
struct StateCollector {
    manager: TaskManager,
    directory: Arc<AgentDirectory>,
    hub: Arc<SseHub>,
    hits: Arc<LimitHits>,
    edge: Arc<tiny_http::ServerCounters>,
    store: Option<Arc<Store>>,
}

impl StateCollector {
    /// The durable store's figures, when there is one.
    fn encode_store(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let st = store.stats();
        counter(
            enc,
            "nodelink_store_commits",
            "Groups of changes committed to the store",
            st.commits,
        )?;
        counter(
            enc,
            "nodelink_store_changes",
            "Changes (tasks, events, audit records) committed to the store",
            st.changes,
        )?;
        counter(
            enc,
            "nodelink_store_failures",
            "Commits that failed (disk full, read-only, I/O); retried until they succeed",
            st.failures,
        )?;
        counter(
            enc,
            "nodelink_store_retention_deleted_tasks",
            "Tasks deleted from the store by retention",
            st.deleted,
        )?;
        gauge(
            enc,
            "nodelink_store_backlog_bytes",
            "Bytes of changes waiting to be committed",
            as_i64(st.backlog_bytes as usize),
        )?;
        gauge(
            enc,
            "nodelink_store_available",
            "1 while the store accepts writes, 0 while it fails",
            i64::from(store.failure().is_none()),
        )
    }

    /// Hits of `limit`, wherever they are counted.
    fn limit_hits(&self, limit: Limit) -> u64 {
        match limit {
            Limit::HeaderBytes => self.edge.headers_too_large(),
            Limit::RequestLineBytes => self.edge.request_lines_too_long(),
            Limit::Connections => self.edge.connections_refused(),
            Limit::OutputBytes => load(&self.manager.stats().output_truncated),
            Limit::OutputTotalBytes => load(&self.manager.stats().output_budget_shed),
            Limit::BodyBytes | Limit::SseClients | Limit::Agents | Limit::Tasks => {
                self.hits.get(limit)
            }
        }
    }
}

impl fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StateCollector")
    }
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    ConstCounter::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> fmt::Result {
    ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn load(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(std::sync::atomic::Ordering::Relaxed)
}

fn as_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = self.manager.stats();
        {
            let mut m = enc.encode_descriptor(
                "nodelink_tasks_created",
                "Tasks created, by type",
                None,
                MetricType::Counter,
            )?;
            for (kind, v) in [
                ("shell", load(&s.created_shell)),
                ("docker", load(&s.created_docker)),
            ] {
                ConstCounter::new(v).encode(m.encode_family(&[("type", kind)])?)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "nodelink_tasks_finished",
                "Tasks that reached a final status, by status",
                None,
                MetricType::Counter,
            )?;
            for st in [
                TaskStatus::Completed,
                TaskStatus::Failed,
                TaskStatus::Timeout,
                TaskStatus::Cancelled,
            ] {
                ConstCounter::new(s.finished_with(st))
                    .encode(m.encode_family(&[("status", st.as_str())])?)?;
            }
        }
        {
            let (sum, count, buckets) = s.duration.snapshot();
            let mut m = enc.encode_descriptor(
                "nodelink_task_duration_seconds",
                "Time from creation to a final status",
                None,
                MetricType::Histogram,
            )?;
            m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                sum, count, &buckets, None,
            )?;
        }
        let sink = self.manager.report_sink();
        gauge(
            &mut enc,
            "nodelink_response_channel_depth",
            "Agent responses waiting for the response thread",
            as_i64(sink.depth()),
        )?;
        gauge(
            &mut enc,
            "nodelink_response_channel_capacity",
            "Capacity of the response channel",
            as_i64(sink.capacity()),
        )?;
        counter(
            &mut enc,
            "nodelink_response_backpressure_waits",
            "Times an agent stream waited on a full response channel",
            load(&s.backpressure_waits),
        )?;
        {
            let secs = load(&s.backpressure_wait_ns) as f64 / 1e9;
            let m = enc.encode_descriptor(
                "nodelink_response_backpressure_wait_seconds",
                "Time agent streams spent waiting on a full response channel",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(secs).encode(m)?;
        }
        counter(
            &mut enc,
            "nodelink_agent_responses",
            "Agent responses received",
            load(&s.responses),
        )?;
        {
            let mut m = enc.encode_descriptor(
                "nodelink_agent_responses_ignored",
                "Agent responses ignored: late (task already final), unknown task, malformed (another agent's task: nodelink_foreign_reports)",
                None,
                MetricType::Counter,
            )?;
            for (reason, v) in [
                ("late", load(&s.late_responses)),
                ("unknown", load(&s.unknown_responses)),
                ("malformed", load(&s.malformed_responses)),
                ("duplicate", load(&s.duplicate_responses)),
            ] {
                ConstCounter::new(v).encode(m.encode_family(&[("reason", reason)])?)?;
            }
        }
        counter(
            &mut enc,
            "nodelink_foreign_reports",
            "Agent responses about another agent's task, ignored: a misbehaving or compromised agent",
            load(&s.foreign_responses),
        )?;
        gauge(
            &mut enc,
            "nodelink_response_streams_waiting",
            "Agent streams paused until the response channel has room",
            as_i64(sink.waiting()),
        )?;
        counter(
            &mut enc,
            "nodelink_cleanup_runs",
            "Periodic clean-up sweeps run",
            load(&s.cleanup_runs),
        )?;
        counter(
            &mut enc,
            "nodelink_cleanup_removed_tasks",
            "Finished tasks removed by sweeps and eviction",
            load(&s.cleanup_removed),
        )?;
        gauge(
            &mut enc,
            "nodelink_tasks",
            "Tasks held in the registry",
            as_i64(self.manager.task_count()),
        )?;
        gauge(
            &mut enc,
            "nodelink_agents_connected",
            "Agents with an open stream",
            as_i64(self.directory.len()),
        )?;
        gauge(
            &mut enc,
            "nodelink_sse_clients",
            "Open Server-Sent Events streams",
            as_i64(self.hub.clients()),
        )?;
        counter(
            &mut enc,
            "nodelink_sse_clients_dropped",
            "Event streams closed because the client fell behind",
            self.hub.lagged_clients(),
        )?;
        gauge(
            &mut enc,
            "nodelink_http_connections",
            "Open HTTP connections (bounded by --max-connections)",
            as_i64(self.edge.open_connections()),
        )?;
        {
            let mut m = enc.encode_descriptor(
                "nodelink_limit_hits",
                "Times a configured limit refused or truncated something a peer sent, by limit",
                None,
                MetricType::Counter,
            )?;
            for limit in Limit::ALL {
                ConstCounter::new(self.limit_hits(limit))
                    .encode(m.encode_family(&[("limit", limit.as_str())])?)?;
            }
        }
        counter(
            &mut enc,
            "nodelink_listener_events_dropped",
            "Events dropped for internal listeners that fell behind",
            self.manager.listener_drops(),
        )?;
        self.encode_store(&mut enc)?;
        Ok(())
    }
}
