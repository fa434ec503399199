//! The SSE fan-out: routes task events to the Server-Sent Events clients that want them.
//!
//! The hub is a coalescing task-manager listener, so it runs on its own listener thread and
//! never on the response thread, and receives events in batches (at most one batch per
//! interval under load). Each batch is formatted once per kind of stream ([`Frame`]): once
//! for all global-stream clients, once per task room, and each client is handed the shared
//! frame. Each client has a bounded queue of frames; delivery is a `try_send`, so one
//! slow client never delays another. A client whose queue is full is dropped from the hub:
//! its writer sees the queue close, ends the HTTP stream, and the client can resume with
//! `Last-Event-ID`. Per-task clients are grouped in rooms by task id; dashboard clients of the
//! global stream receive everything, and a bounded window of recent events lets them resume.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use parking_lot::Mutex;

use super::frame::{EncodeEvent, Frame, IdKind};
use crate::tasks::{Delivery, TaskEvent, TaskId};

/// Why a client could not subscribe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HubError {
    /// `max_clients` streams are open already.
    TooManyClients(usize),
    /// The server is stopping.
    ShuttingDown,
}

impl std::fmt::Display for HubError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HubError::TooManyClients(n) => write!(f, "too many event-stream clients (limit {n})"),
            HubError::ShuttingDown => write!(f, "the server is shutting down"),
        }
    }
}

impl std::error::Error for HubError {}

struct Client {
    id: u64,
    tx: Sender<Arc<Frame>>,
}

#[derive(Default)]
struct State {
    rooms: HashMap<TaskId, Vec<Client>>,
    global: Vec<Client>,
    window: VecDeque<Arc<TaskEvent>>,
    window_bytes: usize,
    /// Global sequence number of the newest event delivered (0 before the first).
    newest: u64,
    clients: usize,
    shutting_down: bool,
}

/// Text kept in the global window at most, whatever its event count.
const WINDOW_MAX_BYTES: usize = 8 << 20;

/// Approximate memory an event holds: its text plus fixed overhead.
fn event_bytes(e: &TaskEvent) -> usize {
    let reason = match &e.kind {
        crate::tasks::EventKind::Status { reason, .. } => reason.as_ref().map_or(0, |r| r.len()),
        crate::tasks::EventKind::Output { .. } => 0,
    };
    e.text_len() + reason + 128
}

/// Routes events to SSE clients.
pub struct SseHub {
    state: Mutex<State>,
    encode: EncodeEvent,
    max_clients: usize,
    client_queue: usize,
    window: usize,
    window_max_bytes: usize,
    next_id: AtomicU64,
    lagged_clients: AtomicU64,
}

/// A client's place in the hub; dropping it unsubscribes.
pub struct Subscription {
    /// Live events for this client, in order, in frames.
    pub events: Receiver<Arc<Frame>>,
    hub: Arc<SseHub>,
    id: u64,
    room: Option<TaskId>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.id, self.room);
    }
}

impl SseHub {
    /// A hub for at most `max_clients` streams, each buffering `client_queue` frames; the
    /// global stream keeps the last `window` events for resumption; `encode` gives an event's
    /// SSE name and data.
    pub fn new(
        max_clients: usize,
        client_queue: usize,
        window: usize,
        encode: EncodeEvent,
    ) -> Arc<Self> {
        Arc::new(SseHub {
            state: Mutex::new(State::default()),
            encode,
            max_clients,
            client_queue: client_queue.max(1),
            window,
            window_max_bytes: WINDOW_MAX_BYTES,
            next_id: AtomicU64::new(1),
            lagged_clients: AtomicU64::new(0),
        })
    }

    /// Open streams now.
    pub fn clients(&self) -> usize {
        self.state.lock().clients
    }

    /// Clients dropped since start because they fell behind.
    pub fn lagged_clients(&self) -> u64 {
        self.lagged_clients.load(Ordering::Relaxed)
    }

    /// Subscribes to one task's live events.
    pub fn subscribe_task(self: &Arc<Self>, task: TaskId) -> Result<Subscription, HubError> {
        let (client, rx) = self.new_client();
        let id = client.id;
        let mut st = self.state.lock();
        self.admit(&mut st)?;
        st.rooms.entry(task).or_default().push(client);
        Ok(Subscription {
            events: rx,
            hub: self.clone(),
            id,
            room: Some(task),
        })
    }

    /// Subscribes to every task's live events. A resuming client (`last_event_id`, a global
    /// sequence number) also gets the retained events after it. Returns the subscription, that
    /// backlog, and the id after which live events are new to this client.
    ///
    /// An id above any this hub has delivered was sent by an earlier server process (an
    /// EventSource reconnecting after a restart): numbering started again at 1 here, so the
    /// client has seen none of this process's events. It resumes from the window's start
    /// instead of having every event up to its old id skipped as already seen.
    pub fn subscribe_all(
        self: &Arc<Self>,
        last_event_id: Option<u64>,
    ) -> Result<(Subscription, Vec<Arc<TaskEvent>>, u64), HubError> {
        let (client, rx) = self.new_client();
        let id = client.id;
        let mut st = self.state.lock();
        self.admit(&mut st)?;
        let (backlog, after) = match last_event_id {
            Some(last) => {
                let after = if last > st.newest { 0 } else { last };
                let backlog = st
                    .window
                    .iter()
                    .filter(|e| e.global_seq > after)
                    .cloned()
                    .collect();
                (backlog, after)
            }
            None => (Vec::new(), st.newest),
        };
        st.global.push(client);
        Ok((
            Subscription {
                events: rx,
                hub: self.clone(),
                id,
                room: None,
            },
            backlog,
            after,
        ))
    }

    fn new_client(&self) -> (Client, Receiver<Arc<Frame>>) {
        let (tx, rx) = bounded(self.client_queue);
        (
            Client {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                tx,
            },
            rx,
        )
    }

    /// Ends every stream (server shutdown): writers see their queue close and say goodbye.
    pub fn shutdown(&self) {
        let mut st = self.state.lock();
        st.shutting_down = true;
        st.global.clear();
        st.rooms.clear();
    }

    /// Whether [`SseHub::shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.state.lock().shutting_down
    }

    fn admit(&self, st: &mut State) -> Result<(), HubError> {
        if st.shutting_down {
            return Err(HubError::ShuttingDown);
        }
        if st.clients >= self.max_clients {
            return Err(HubError::TooManyClients(self.max_clients));
        }
        st.clients += 1;
        Ok(())
    }

    fn unsubscribe(&self, id: u64, room: Option<TaskId>) {
        let mut st = self.state.lock();
        st.clients = st.clients.saturating_sub(1);
        match room {
            Some(task) => {
                if let Some(clients) = st.rooms.get_mut(&task) {
                    clients.retain(|c| c.id != id);
                    if clients.is_empty() {
                        st.rooms.remove(&task);
                    }
                }
            }
            None => st.global.retain(|c| c.id != id),
        }
    }

    /// Handles one listener delivery; the hub's listener callback.
    pub fn deliver(&self, delivery: Delivery) {
        match delivery {
            Delivery::Events(batch) => self.deliver_batch(&batch),
            Delivery::Lagged(n) => {
                // The hub itself fell behind: every client may have missed events. Closing
                // them all makes each resume from its own Last-Event-ID.
                log::warn!("event hub missed {n} event(s); closing all streams so clients resume");
                let mut st = self.state.lock();
                let dropped = st.global.len() + st.rooms.values().map(Vec::len).sum::<usize>();
                self.lagged_clients
                    .fetch_add(dropped as u64, Ordering::Relaxed);
                st.global.clear();
                st.rooms.clear();
            }
        }
    }

    fn deliver_batch(&self, batch: &[Arc<TaskEvent>]) {
        let wanted = {
            let mut st = self.state.lock();
            for event in batch {
                st.newest = st.newest.max(event.global_seq);
                if self.window > 0 {
                    st.window_bytes += event_bytes(event);
                    st.window.push_back(event.clone());
                    while st.window.len() > self.window || st.window_bytes > self.window_max_bytes {
                        let Some(old) = st.window.pop_front() else {
                            break;
                        };
                        st.window_bytes -= event_bytes(&old);
                    }
                }
            }
            !st.global.is_empty() || batch.iter().any(|e| st.rooms.contains_key(&e.task_id))
        };
        if !wanted {
            return;
        }
        // Each event is encoded once, whoever shows it, and outside the lock. A client that
        // subscribes meanwhile has these events from history or counts them as past (its
        // writer skips them by id); one that had subscribed gets them below.
        let encode = self.encode;
        let encoded: Vec<(&'static str, String)> = batch.iter().map(|e| encode(e)).collect();
        let mut st = self.state.lock();
        if !st.rooms.is_empty() {
            // The batch's events per task with a room, in order.
            let mut per_room: HashMap<TaskId, Vec<usize>> = HashMap::new();
            for (i, e) in batch.iter().enumerate() {
                if st.rooms.contains_key(&e.task_id) {
                    per_room.entry(e.task_id).or_default().push(i);
                }
            }
            for (task, indices) in per_room {
                let frame = Frame::build(
                    indices.iter().map(|&i| (&*batch[i], &encoded[i])),
                    IdKind::Task,
                );
                if let Some(room) = st.rooms.get_mut(&task) {
                    self.send_all(room, &frame);
                }
                if frame.ends_task() {
                    // Nothing more will come for this task: closing the queues lets writers
                    // finish after draining them.
                    st.rooms.remove(&task);
                }
            }
        }
        if !st.global.is_empty() {
            let frame = Frame::build(batch.iter().map(|e| &**e).zip(&encoded), IdKind::Global);
            let mut global = std::mem::take(&mut st.global);
            self.send_all(&mut global, &frame);
            st.global = global;
        }
    }

    fn send_all(&self, clients: &mut Vec<Client>, frame: &Arc<Frame>) {
        clients.retain(|c| match c.tx.try_send(frame.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.lagged_clients.fetch_add(1, Ordering::Relaxed);
                log::info!("event-stream client {} fell behind; disconnecting it", c.id);
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::{EventKind, TaskStatus};
    use std::time::SystemTime;

    fn enc(e: &TaskEvent) -> (&'static str, String) {
        ("status", e.task_seq.to_string())
    }

    fn one(e: Arc<TaskEvent>) -> Delivery {
        Delivery::Events(vec![e])
    }

    /// The newest id in a frame (each test frame holds one event).
    fn id(frame: &Frame) -> u64 {
        frame.after(0).map_or(0, |(_, id)| id)
    }

    fn event(task: TaskId, global_seq: u64, task_seq: u64, status: TaskStatus) -> Arc<TaskEvent> {
        Arc::new(TaskEvent {
            global_seq,
            task_seq,
            task_id: task,
            agent_id: Arc::from("a"),
            at: SystemTime::now(),
            kind: EventKind::Status {
                status,
                reason: None,
            },
        })
    }

    #[test]
    fn a_slow_client_is_dropped_without_delaying_a_fast_one() {
        let hub = SseHub::new(10, 2, 0, enc);
        let task = TaskId::new_v4();
        let slow = hub.subscribe_task(task).expect("slow");
        let fast = hub.subscribe_task(task).expect("fast");
        for i in 1..=5 {
            hub.deliver(one(event(task, i, i, TaskStatus::InProgress)));
            assert_eq!(
                id(&fast.events.try_recv().expect("fast gets each event")),
                i
            );
        }
        let got: Vec<u64> = slow.events.try_iter().map(|f| id(&f)).collect();
        assert_eq!(
            got,
            vec![1, 2],
            "the slow client kept what fit, then was dropped"
        );
        assert!(
            slow.events.recv().is_err(),
            "its queue is closed so its writer ends the stream"
        );
        assert_eq!(hub.lagged_clients(), 1);
    }

    #[test]
    fn a_final_status_closes_the_room_after_delivering_it() {
        let hub = SseHub::new(10, 16, 0, enc);
        let task = TaskId::new_v4();
        let sub = hub.subscribe_task(task).expect("sub");
        hub.deliver(one(event(task, 1, 1, TaskStatus::Completed)));
        assert!(sub.events.recv().expect("final event").ends_task());
        assert!(
            hub.clients() == 1,
            "the writer still holds its subscription"
        );
        assert!(sub.events.recv().is_err(), "nothing after the final event");
        drop(sub);
        assert_eq!(hub.clients(), 0);
    }

    #[test]
    fn the_global_stream_resumes_within_its_window() {
        let hub = SseHub::new(10, 16, 3, enc);
        let task = TaskId::new_v4();
        for i in 1..=5 {
            hub.deliver(one(event(task, i, i, TaskStatus::InProgress)));
        }
        let (_sub, backlog, after) = hub.subscribe_all(Some(3)).expect("sub");
        assert_eq!(
            backlog.iter().map(|e| e.global_seq).collect::<Vec<_>>(),
            vec![4, 5]
        );
        assert_eq!(after, 3);
        let (_sub, backlog, _) = hub.subscribe_all(Some(0)).expect("sub");
        assert_eq!(backlog.len(), 3, "only the window is kept");
        let (_sub, backlog, after) = hub.subscribe_all(None).expect("sub");
        assert_eq!(
            (backlog.len(), after),
            (0, 5),
            "a new client gets live events only"
        );
    }

    #[test]
    fn an_id_from_an_earlier_server_process_resumes_from_the_window_start() {
        let hub = SseHub::new(10, 16, 10, enc);
        let task = TaskId::new_v4();
        let (_early, _, after) = hub.subscribe_all(Some(500)).expect("sub");
        assert_eq!(
            after, 0,
            "nothing delivered yet: every event to come is new to it"
        );
        for i in 1..=3 {
            hub.deliver(one(event(task, i, i, TaskStatus::InProgress)));
        }
        let (_late, backlog, after) = hub.subscribe_all(Some(500)).expect("sub");
        assert_eq!(
            backlog.iter().map(|e| e.global_seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(after, 0);
    }

    #[test]
    fn a_batch_reaches_each_stream_as_one_frame_with_its_own_ids() {
        let hub = SseHub::new(10, 4, 0, enc);
        let (a, b) = (TaskId::new_v4(), TaskId::new_v4());
        let room_a = hub.subscribe_task(a).expect("room a");
        let (global, _, _) = hub.subscribe_all(None).expect("global");
        hub.deliver(Delivery::Events(vec![
            event(a, 1, 1, TaskStatus::Sent),
            event(b, 2, 1, TaskStatus::Sent),
            event(a, 3, 2, TaskStatus::Completed),
        ]));
        let frame = global.events.try_recv().expect("one global frame");
        assert_eq!(frame.len(), 3);
        assert_eq!(
            std::str::from_utf8(frame.after(1).expect("newer").0).expect("utf8"),
            "id: 2\nevent: status\ndata: 1\n\nid: 3\nevent: status\ndata: 2\n\n"
        );
        assert!(global.events.try_recv().is_err(), "one frame per batch");
        let frame = room_a.events.try_recv().expect("one room frame");
        assert_eq!((frame.len(), id(&frame), frame.ends_task()), (2, 2, true));
        assert!(
            room_a.events.recv().is_err(),
            "the room closed after the final status"
        );
    }

    #[test]
    fn client_limit_and_shutdown_refuse_new_streams() {
        let hub = SseHub::new(1, 4, 0, enc);
        let _one = hub.subscribe_all(None).expect("first");
        assert_eq!(
            hub.subscribe_all(None).err(),
            Some(HubError::TooManyClients(1))
        );
        hub.shutdown();
        assert!(hub.is_shutting_down());
        assert_eq!(
            hub.subscribe_task(TaskId::new_v4()).err(),
            Some(HubError::ShuttingDown)
        );
    }
}
