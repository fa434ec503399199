//! Tuning of the task manager, with its defaults in one place.

use std::time::Duration;

/// Every knob of the task manager; `Default` gives the documented defaults.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// Capacity of the response channel between the agent link and the response thread.
    pub response_channel_capacity: usize,
    /// How long a finished task stays queryable.
    pub cleanup_age: Duration,
    /// How often the sweep removes tasks older than `cleanup_age`.
    pub cleanup_interval: Duration,
    /// How long an agent may be gone before its unfinished tasks fail.
    pub disconnect_grace: Duration,
    /// Most tasks held; the oldest finished are evicted first.
    pub max_tasks: usize,
    /// Bytes of stdout and of stderr retained per task.
    pub max_output_bytes: usize,
    /// Output retained by all tasks together (bytes and response index); the oldest output
    /// is shed beyond it (see `registry`).
    pub max_output_total_bytes: usize,
    /// Timer wheel resolution.
    pub timer_tick: Duration,
    /// Timeout of a task created without one.
    pub default_timeout: Duration,
    /// Shortest timeout accepted.
    pub min_timeout: Duration,
    /// Longest timeout accepted.
    pub max_timeout: Duration,
    /// Queue length of each event listener.
    pub listener_queue: usize,
    /// Finished tasks kept in memory (with output) when a journal holds history.
    pub cache_finished: usize,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            response_channel_capacity: 100,
            cleanup_age: Duration::from_secs(30 * 60),
            cleanup_interval: Duration::from_secs(5 * 60),
            disconnect_grace: Duration::from_secs(15),
            max_tasks: 100_000,
            max_output_bytes: 1 << 20,
            max_output_total_bytes: 256 << 20,
            timer_tick: Duration::from_millis(10),
            default_timeout: Duration::from_secs(300),
            min_timeout: Duration::from_secs(1),
            max_timeout: Duration::from_secs(24 * 3600),
            listener_queue: 65_536,
            cache_finished: 1000,
        }
    }
}
