//! The response pipeline: a bounded crossbeam channel from the agent link to one dedicated
//! thread that applies responses in arrival order.
//!
//! Unlike the spec's drop-on-overflow, nothing is ever dropped: a producer that finds the
//! channel full waits (`send` blocks), which stops it reading its gRPC stream and so pushes
//! back on the agent through HTTP/2 flow control. How often and how long producers waited is
//! counted in [`Stats`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{select, Receiver, Sender, TrySendError};

use super::error::TaskError;
use super::model::AgentReport;
use super::stats::Stats;

/// The producer side of the response channel, handed to the agent link.
#[derive(Clone)]
pub struct ReportSink {
    tx: Sender<AgentReport>,
    stats: Arc<Stats>,
}

impl ReportSink {
    pub(super) fn new(tx: Sender<AgentReport>, stats: Arc<Stats>) -> Self {
        ReportSink { tx, stats }
    }

    /// Queues a response, waiting while the channel is full; fails only when stopping.
    pub fn send(&self, report: AgentReport) -> Result<(), TaskError> {
        match self.tx.try_send(report) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(_)) => Err(TaskError::ShuttingDown),
            Err(TrySendError::Full(report)) => {
                let started = Instant::now();
                let sent = self.tx.send(report);
                let waited = started.elapsed().as_nanos().min(u64::MAX as u128) as u64;
                self.stats
                    .backpressure_waits
                    .fetch_add(1, Ordering::Relaxed);
                self.stats
                    .backpressure_wait_ns
                    .fetch_add(waited, Ordering::Relaxed);
                sent.map_err(|_| TaskError::ShuttingDown)
            }
        }
    }

    /// Responses waiting in the channel now.
    pub fn depth(&self) -> usize {
        self.tx.len()
    }

    /// The channel's capacity.
    pub fn capacity(&self) -> usize {
        self.tx.capacity().unwrap_or(usize::MAX)
    }
}

/// Responses applied after a wake-up before the stop signal is looked at again.
const DRAIN_BATCH: usize = 256;

/// Starts the response thread: applies each report with `apply` until `stop` fires, then
/// drains what is queued and returns.
pub(super) fn spawn(
    rx: Receiver<AgentReport>,
    stop: Receiver<()>,
    mut apply: impl FnMut(AgentReport) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("nl-responses".into())
        .spawn(move || loop {
            select! {
                recv(rx) -> report => match report {
                    Ok(report) => {
                        apply(report);
                        // Apply what queued meanwhile before sleeping again: under load the
                        // thread stays awake and producers need not wake it per response.
                        for report in rx.try_iter().take(DRAIN_BATCH) {
                            apply(report);
                        }
                    }
                    Err(_) => return,
                },
                recv(stop) -> _ => {
                    while let Ok(report) = rx.try_recv() {
                        apply(report);
                    }
                    return;
                }
            }
        })
}
