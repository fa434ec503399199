//! What a run tells its reader: a progress line on stderr once a second while it runs, a
//! table on stdout at the end (or one JSON document with `--json`), and `summary`, which
//! reads several JSON reports and prints one table of every figure against the targets of
//! docs/PERFORMANCE.md. Scenarios fill a [`Report`]; only this module formats.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Map, Value};

use crate::procfs::Tracker;
use crate::stats::{Errors, Histogram};

/// One measured number.
#[derive(Clone, Debug)]
pub struct Figure {
    /// Stable machine name (JSON key).
    pub key: &'static str,
    /// What a person reads.
    pub label: &'static str,
    /// The number.
    pub value: f64,
    /// Its unit (`tasks/s`, `ms`, `MB`, ...).
    pub unit: &'static str,
}

/// The result of one scenario run.
#[derive(Clone, Debug)]
pub struct Report {
    /// `dispatch`, `ingest`, `fanout` or `agents`.
    pub scenario: &'static str,
    /// A name chosen by the caller (`--label`), e.g. `dispatch-closed`.
    pub label: String,
    /// The settings the run used.
    pub params: Vec<(&'static str, Value)>,
    /// The measured figures, in display order.
    pub figures: Vec<Figure>,
    /// Failures by kind.
    pub errors: Errors,
    /// Remarks the reader needs (e.g. why a figure is missing).
    pub notes: Vec<String>,
}

impl Report {
    /// An empty report.
    pub fn new(scenario: &'static str, label: &str) -> Self {
        Report {
            scenario,
            label: if label.is_empty() {
                scenario.to_string()
            } else {
                label.to_string()
            },
            params: Vec::new(),
            figures: Vec::new(),
            errors: Errors::default(),
            notes: Vec::new(),
        }
    }

    /// Records the simulated agents' failed streams (refused credentials, server gone), if
    /// any, as the `agent_stream` error and the last reason as a note.
    pub fn agent_stream_errors(&mut self, count: u64, last_error: Option<String>) {
        if count == 0 {
            return;
        }
        self.errors.by_kind.insert("agent_stream".into(), count);
        if let Some(why) = last_error {
            self.notes.push(format!("last agent stream error: {why}"));
        }
    }

    /// Records a setting.
    pub fn param(&mut self, key: &'static str, value: impl Into<Value>) {
        self.params.push((key, value.into()));
    }

    /// Records a figure.
    pub fn figure(
        &mut self,
        key: &'static str,
        label: &'static str,
        value: f64,
        unit: &'static str,
    ) {
        self.figures.push(Figure {
            key,
            label,
            value,
            unit,
        });
    }

    /// Records p50/p90/p99/max (and the sample count) of `h` under `prefix`.
    pub fn latency(&mut self, keys: [&'static str; 5], labels: [&'static str; 5], h: &Histogram) {
        let values = [
            h.quantile_ms(0.50),
            h.quantile_ms(0.90),
            h.quantile_ms(0.99),
            h.max_ms(),
        ];
        for i in 0..4 {
            self.figure(keys[i], labels[i], values[i], "ms");
        }
        self.figure(keys[4], labels[4], h.count() as f64, "samples");
    }

    /// Records what `/proc` says about the server, if it could be read.
    pub fn server(&mut self, t: &Tracker, elapsed: Duration) {
        let Some(last) = t.last else {
            self.notes
                .push("server figures absent: pass --server-pid (same machine only)".into());
            return;
        };
        let mb = |kib: u64| kib as f64 * 1024.0 / 1e6;
        if let Some(start) = t.start {
            self.figure(
                "server_rss_start_mb",
                "server RSS at start",
                mb(start.rss_kib),
                "MB",
            );
        }
        self.figure(
            "server_rss_max_mb",
            "server RSS, most seen",
            mb(t.max_rss_kib),
            "MB",
        );
        self.figure(
            "server_hwm_mb",
            "server peak RSS (VmHWM)",
            mb(last.hwm_kib),
            "MB",
        );
        self.figure(
            "server_threads_max",
            "server threads, most seen",
            t.max_threads as f64,
            "",
        );
        if let Some(cpu) = t.cpu_used() {
            self.figure("server_cpu_s", "server CPU time", cpu, "s");
            let secs = elapsed.as_secs_f64().max(1e-9);
            self.figure(
                "server_cpu_pct",
                "server CPU (100 % = 1 core)",
                100.0 * cpu / secs,
                "%",
            );
        }
    }

    /// Records the CPU the load generator itself used (it shares the machine with the
    /// server), and the server's CPU time per unit of work (`units` of it, e.g. tasks).
    pub fn costs(
        &mut self,
        me: &Tracker,
        server: &Tracker,
        elapsed: Duration,
        units: f64,
        key: &'static str,
        label: &'static str,
    ) {
        let secs = elapsed.as_secs_f64().max(1e-9);
        if let Some(cpu) = me.cpu_used() {
            let pct = 100.0 * cpu / secs;
            self.figure(
                "bench_cpu_pct",
                "load generator CPU (100 % = 1 core)",
                pct,
                "%",
            );
        }
        if let (Some(cpu), true) = (server.cpu_used(), units > 0.0) {
            self.figure(key, label, cpu * 1e6 / units, "µs");
        }
    }

    /// The report as one JSON document.
    pub fn to_json(&self) -> Value {
        let mut params = Map::new();
        for (k, v) in &self.params {
            params.insert((*k).to_string(), v.clone());
        }
        let mut figures = Map::new();
        let mut units = Map::new();
        for f in &self.figures {
            figures.insert(f.key.to_string(), json!(round(f.value)));
            units.insert(f.key.to_string(), json!(f.unit));
        }
        json!({
            "scenario": self.scenario,
            "label": self.label,
            "date": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            "params": params,
            "figures": figures,
            "units": units,
            "errors": self.errors.by_kind,
            "notes": self.notes,
        })
    }

    /// The report as a table for people.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={}", plain(v)))
            .collect();
        let _ = writeln!(out, "== {} ({})", self.label, params.join(" "));
        for f in &self.figures {
            let _ = writeln!(out, "  {:<34} {:>14} {}", f.label, number(f.value), f.unit);
        }
        if self.errors.by_kind.is_empty() {
            let _ = writeln!(out, "  {:<34} {:>14}", "errors", "none");
        } else {
            for (k, v) in &self.errors.by_kind {
                let _ = writeln!(out, "  {:<34} {:>14}", format!("errors: {k}"), v);
            }
        }
        for n in &self.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        out
    }
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A number with a sensible number of digits.
pub fn number(v: f64) -> String {
    if (v.fract() == 0.0 && v.abs() < 1e15) || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Prints a line to stderr once a second until stopped: `make_line(elapsed)` composes it.
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts the progress thread; `tick` runs once a second and returns the line.
    pub fn start(mut tick: impl FnMut(Duration) -> String + Send + 'static) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-progress".into())
            .spawn(move || {
                let t0 = Instant::now();
                let mut next = t0 + Duration::from_secs(1);
                // Bounded: at most one line a second for a day.
                for _ in 0..86_400 {
                    while Instant::now() < next {
                        if flag.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    next += Duration::from_secs(1);
                    eprintln!("{}", tick(t0.elapsed()));
                }
            })
            .ok();
        Progress { stop, thread }
    }

    /// Stops the thread (no further lines).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One target of docs/PERFORMANCE.md and how to check it against the reports.
struct Target {
    what: &'static str,
    goal: &'static str,
    /// The figure it reads, from the first report matching `pick`.
    measured: fn(&[Value]) -> Option<(f64, String)>,
    /// Whether the measured value meets the goal.
    met: fn(f64) -> bool,
}

fn fig(r: &Value, key: &str) -> Option<f64> {
    r.get("figures")?.get(key)?.as_f64()
}

fn param(r: &Value, key: &str) -> Option<Value> {
    r.get("params")?.get(key).cloned()
}

fn find<'a>(
    reports: &'a [Value],
    scenario: &str,
    pick: impl Fn(&Value) -> bool,
) -> Option<&'a Value> {
    reports
        .iter()
        .find(|r| r.get("scenario").and_then(Value::as_str) == Some(scenario) && pick(r))
}

fn label(r: &Value) -> String {
    r.get("label")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string()
}

const TARGETS: &[Target] = &[
    Target {
        what: "dispatch, closed loop",
        goal: ">= 20000 tasks/s",
        measured: |rs| {
            let r = find(rs, "dispatch", |r| param(r, "rate") == Some(Value::Null))?;
            Some((fig(r, "completed_per_s")?, label(r)))
        },
        met: |v| v >= 20_000.0,
    },
    Target {
        what: "create-to-completion p99 at 2000 tasks/s",
        goal: "<= 5 ms",
        measured: |rs| {
            let r = find(rs, "dispatch", |r| {
                param(r, "rate").and_then(|v| v.as_f64()) == Some(2000.0)
            })?;
            Some((fig(r, "latency_p99_ms")?, label(r)))
        },
        met: |v| v <= 5.0,
    },
    Target {
        what: "ingest of 64-byte chunks",
        goal: ">= 300000 chunks/s",
        measured: |rs| {
            let r = find(rs, "ingest", |r| {
                param(r, "chunk_bytes").and_then(|v| v.as_f64()) == Some(64.0)
            })?;
            Some((fig(r, "chunks_per_s")?, label(r)))
        },
        met: |v| v >= 300_000.0,
    },
    Target {
        what: "ingest: chunks lost or reordered",
        goal: "0",
        measured: |rs| {
            let r = find(rs, "ingest", |_| true)?;
            Some((fig(r, "lost")? + fig(r, "reordered")?, label(r)))
        },
        met: |v| v == 0.0,
    },
    Target {
        what: "500 SSE clients at 1000 tasks/s: p99 lag",
        goal: "<= 20 ms",
        measured: |rs| {
            let r = find(rs, "fanout", |_| true)?;
            Some((fig(r, "lag_p99_ms")?, label(r)))
        },
        met: |v| v <= 20.0,
    },
    Target {
        what: "500 SSE clients: dropped clients + missed events",
        goal: "0",
        measured: |rs| {
            let r = find(rs, "fanout", |_| true)?;
            Some((
                fig(r, "dropped_clients")? + fig(r, "missed_events")?,
                label(r),
            ))
        },
        met: |v| v == 0.0,
    },
    Target {
        what: "server RSS idle",
        goal: "<= 10 MB",
        measured: |rs| {
            let r = find(rs, "agents", |_| true)?;
            Some((fig(r, "rss_idle_mb")?, label(r)))
        },
        met: |v| v <= 10.0,
    },
    Target {
        what: "server RSS with 2000 agents",
        goal: "<= 150 MB",
        measured: |rs| {
            let r = find(rs, "agents", |r| {
                param(r, "agents").and_then(|v| v.as_f64()) == Some(2000.0)
            })?;
            Some((fig(r, "rss_agents_mb")?, label(r)))
        },
        met: |v| v <= 150.0,
    },
];

/// Every report's key figures, then the targets table; also returns one line per missed
/// target (targets no report measured are not missed).
pub fn summary(reports: &[Value]) -> (String, Vec<String>) {
    let mut out = String::new();
    let _ = writeln!(out, "{:<22} {:<36} {:>14} unit", "run", "figure", "value");
    for r in reports {
        let Some(figs) = r.get("figures").and_then(Value::as_object) else {
            continue;
        };
        let units = r.get("units").and_then(Value::as_object);
        let run = label(r);
        for (k, v) in figs {
            let unit = units
                .and_then(|u| u.get(k))
                .and_then(Value::as_str)
                .unwrap_or("");
            let _ = writeln!(
                out,
                "{:<22} {:<36} {:>14} {unit}",
                run,
                k,
                number(v.as_f64().unwrap_or(f64::NAN))
            );
        }
        if let Some(errs) = r.get("errors").and_then(Value::as_object) {
            let errs: BTreeMap<&String, &Value> = errs.iter().collect();
            for (k, v) in errs {
                let _ = writeln!(out, "{:<22} {:<36} {:>14}", run, format!("errors: {k}"), v);
            }
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<50} {:>18} {:>14} {:<7} run",
        "target", "goal", "measured", "result"
    );
    let mut missed = Vec::new();
    for t in TARGETS {
        let (value, result, run) = match (t.measured)(reports) {
            Some((v, run)) => {
                let ok = (t.met)(v);
                if !ok {
                    missed.push(format!(
                        "{}: goal {}, measured {} (run {run})",
                        t.what,
                        t.goal,
                        number(v)
                    ));
                }
                (number(v), if ok { "met" } else { "MISSED" }, run)
            }
            None => ("-".to_string(), "not run", String::new()),
        };
        let _ = writeln!(
            out,
            "{:<50} {:>18} {:>14} {:<7} {run}",
            t.what, t.goal, value, result
        );
    }
    (out, missed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn summary_names_each_missed_target_and_only_those() {
        let ingest = json!({
            "scenario": "ingest", "label": "ingest-64", "params": {"chunk_bytes": 64},
            "figures": {"chunks_per_s": 400000.0, "lost": 1.0, "reordered": 0.0},
        });
        let (table, missed) = summary(&[ingest]);
        assert_eq!(
            missed,
            vec!["ingest: chunks lost or reordered: goal 0, measured 1 (run ingest-64)"]
        );
        assert!(table.contains("MISSED"), "{table}");
        assert!(table.contains("not run"), "{table}");

        let good = json!({
            "scenario": "ingest", "label": "ingest-64", "params": {"chunk_bytes": 64},
            "figures": {"chunks_per_s": 400000.0, "lost": 0.0, "reordered": 0.0},
        });
        assert!(summary(&[good]).1.is_empty());
    }
}
