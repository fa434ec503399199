//! The SSE fan-out: routes task events to the Server-Sent Events clients that want them.
//!
//! The hub is a coalescing task-manager listener, so it runs on its own listener thread and
//! never on the response thread, and receives events in batches, spaced by an interval that
//! grows with the open streams ([`SseHub::batch_interval`]). Each batch is formatted once per
//! kind of stream ([`Frame`]): once for all global-stream clients, once per task room, and each
//! client is handed the shared frame. Each client has a bounded queue of frames; delivery is a
//! `try_send`, so one slow client never delays another. A client whose queue is full is dropped
//! from the hub: its writer sees the queue close, ends the HTTP stream, and the client can
//! resume with `Last-Event-ID`. Per-task clients are grouped in rooms by task id; dashboard
//! clients of the global stream receive everything, and a bounded window of recent events lets
//! them resume.
//!
//! The hub itself may miss events (its listener queue overflowed) and its window forgets old
//! ones; neither is ever silent. Global sequence numbers reach the hub in order, so a missing
//! number is a hole: global-stream clients get a `gap` event naming the missing ids, in order,
//! where the hole is (live, in the window, and in a resuming client's backlog when it resumes
//! from before the window), and should reload what they show. Task streams resume from the
//! task's own complete history instead: on a hole the hub closes every room, and each client
//! reconnects with its `Last-Event-ID`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use parking_lot::Mutex;

use super::frame::{EncodeEvent, Frame, IdKind, Item};
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

/// The SSE event name of a gap.
pub const GAP_EVENT: &str = "gap";

/// Global sequence numbers `from..=to` that a global-stream client will never receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    /// The first missing id.
    pub from: u64,
    /// The last missing id; the `gap` event carries it as its own id, so a client that
    /// reconnects after it is not told again.
    pub to: u64,
}

impl Gap {
    /// The `data:` text of the `gap` event.
    pub fn data(&self) -> String {
        format!(
            r#"{{"from":{},"to":{},"missed":{}}}"#,
            self.from,
            self.to,
            self.to - self.from + 1
        )
    }
}

/// One entry of the global window: an event, or the ids the hub knows it lost.
#[derive(Clone, Debug)]
enum Entry {
    Event(Arc<TaskEvent>),
    Gap(Gap),
}

impl Entry {
    /// The id a global-stream client sees for it.
    fn id(&self) -> u64 {
        match self {
            Entry::Event(e) => e.global_seq,
            Entry::Gap(g) => g.to,
        }
    }

    /// Approximate memory it holds.
    fn bytes(&self) -> usize {
        match self {
            Entry::Event(e) => event_bytes(e),
            Entry::Gap(_) => 64,
        }
    }
}

/// What a resuming global-stream client missed: retained events after its id, with gaps
/// where events are not retained. Encoding it is left to the client's writer thread.
pub struct Backlog {
    entries: Vec<Entry>,
    encode: EncodeEvent,
}

impl Backlog {
    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The first id the hub holds an event for in this backlog (`None`: none), so the part
    /// before it, lost or never held (a restart), can be asked of durable history.
    pub fn first_event_id(&self) -> Option<u64> {
        self.entries.iter().find_map(|e| match e {
            Entry::Event(ev) => Some(ev.global_seq),
            Entry::Gap(_) => None,
        })
    }

    /// Puts events from durable history (in order, all before [`Backlog::first_event_id`])
    /// in front, shrinking or dropping the leading gap they cover.
    pub fn prepend_history(&mut self, history: Vec<TaskEvent>) {
        let Some(newest) = history.last().map(|e| e.global_seq) else {
            return;
        };
        let mut rest: Vec<Entry> = Vec::with_capacity(self.entries.len());
        for entry in self.entries.drain(..) {
            match entry {
                Entry::Gap(g) if g.to <= newest => {}
                Entry::Gap(g) if g.from <= newest => rest.push(Entry::Gap(Gap {
                    from: newest + 1,
                    to: g.to,
                })),
                Entry::Event(e) if e.global_seq <= newest => {}
                other => rest.push(other),
            }
        }
        self.entries = history
            .into_iter()
            .map(|e| Entry::Event(Arc::new(e)))
            .chain(rest)
            .collect();
    }

    /// The backlog as one frame of global ids; `None` when empty.
    pub fn into_frame(self) -> Option<Arc<Frame>> {
        if self.entries.is_empty() {
            return None;
        }
        let encoded = encode_entries(&self.entries, self.encode);
        Some(Frame::build(encoded.iter().map(EncodedEntry::item)))
    }
}

/// An entry with its SSE name and data.
struct EncodedEntry {
    id: u64,
    name: &'static str,
    data: String,
    ends_task: bool,
}

impl EncodedEntry {
    fn item(&self) -> Item<'_> {
        Item {
            id: self.id,
            name: self.name,
            data: &self.data,
            ends_task: self.ends_task,
        }
    }
}

fn encode_entries(entries: &[Entry], encode: EncodeEvent) -> Vec<EncodedEntry> {
    entries
        .iter()
        .map(|entry| match entry {
            Entry::Event(e) => {
                let (name, data) = encode(e);
                EncodedEntry {
                    id: e.global_seq,
                    name,
                    data,
                    ends_task: e.ends_task(),
                }
            }
            Entry::Gap(g) => EncodedEntry {
                id: g.to,
                name: GAP_EVENT,
                data: g.data(),
                ends_task: false,
            },
        })
        .collect()
}

struct Client {
    id: u64,
    tx: Sender<Arc<Frame>>,
}

#[derive(Default)]
struct State {
    rooms: HashMap<TaskId, Vec<Client>>,
    global: Vec<Client>,
    window: VecDeque<Entry>,
    window_bytes: usize,
    /// The newest id that left the window (0: none yet): a client resuming from before it
    /// is told of a gap up to it.
    evicted_through: u64,
    /// Global sequence number of the newest event delivered or known lost (0 before any).
    newest: u64,
    clients: usize,
    shutting_down: bool,
}

/// Text kept in the global window at most, whatever its event count.
const WINDOW_MAX_BYTES: usize = 8 << 20;

/// Batch interval per open stream: a batch costs every client a wake-up and a write (a few
/// microseconds each), so spacing batches by this much per client keeps that cost to a
/// fraction of a core at any event rate, while one or a few clients get events at once.
const INTERVAL_PER_CLIENT: Duration = Duration::from_micros(10);
/// The batch interval at most: the longest an event waits in the hub under load.
const MAX_INTERVAL: Duration = Duration::from_millis(5);

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
    missed_events: AtomicU64,
    /// `State::clients`, readable without the lock (for the batch interval).
    open_streams: AtomicUsize,
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

/// One piece of a delivered batch for the global stream: an event (by index) or a hole.
enum Piece {
    Event(usize),
    Gap(Gap),
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
            missed_events: AtomicU64::new(0),
            open_streams: AtomicUsize::new(0),
        })
    }

    /// Open streams now.
    pub fn clients(&self) -> usize {
        self.state.lock().clients
    }

    /// How long the hub's listener should gather events before the next batch: it grows with
    /// the open streams, as the cost of a batch does (see `INTERVAL_PER_CLIENT`).
    pub fn batch_interval(&self) -> Duration {
        let clients = self.open_streams.load(Ordering::Relaxed);
        INTERVAL_PER_CLIENT
            .saturating_mul(u32::try_from(clients).unwrap_or(u32::MAX))
            .min(MAX_INTERVAL)
    }

    /// Clients dropped since start because they (or the hub) fell behind.
    pub fn lagged_clients(&self) -> u64 {
        self.lagged_clients.load(Ordering::Relaxed)
    }

    /// Events the hub never received (announced to global-stream clients as gaps).
    pub fn missed_events(&self) -> u64 {
        self.missed_events.load(Ordering::Relaxed)
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
    /// sequence number) also gets what it missed: the retained events after its id, and a
    /// gap for any it missed that are not retained. Returns the subscription, that backlog,
    /// and the id after which live events are new to this client.
    ///
    /// An id above any this hub has delivered was sent by an earlier server process (an
    /// EventSource reconnecting after a restart): numbering started again at 1 here, so the
    /// client has seen none of this process's events. It resumes from the start instead of
    /// having every event up to its old id skipped as already seen.
    pub fn subscribe_all(
        self: &Arc<Self>,
        last_event_id: Option<u64>,
    ) -> Result<(Subscription, Backlog, u64), HubError> {
        let (client, rx) = self.new_client();
        let id = client.id;
        let mut st = self.state.lock();
        self.admit(&mut st)?;
        let (entries, after) = match last_event_id {
            Some(last) => {
                let after = if last > st.newest { 0 } else { last };
                let mut entries = Vec::new();
                if after < st.evicted_through {
                    entries.push(Entry::Gap(Gap {
                        from: after + 1,
                        to: st.evicted_through,
                    }));
                }
                for entry in st.window.iter().filter(|e| e.id() > after) {
                    entries.push(match entry {
                        Entry::Gap(g) => Entry::Gap(Gap {
                            from: g.from.max(after + 1),
                            to: g.to,
                        }),
                        e => e.clone(),
                    });
                }
                (entries, after)
            }
            None => (Vec::new(), st.newest),
        };
        st.global.push(client);
        let backlog = Backlog {
            entries,
            encode: self.encode,
        };
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
        self.open_streams.store(st.clients, Ordering::Relaxed);
        Ok(())
    }

    fn unsubscribe(&self, id: u64, room: Option<TaskId>) {
        let mut st = self.state.lock();
        st.clients = st.clients.saturating_sub(1);
        self.open_streams.store(st.clients, Ordering::Relaxed);
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
            Delivery::Lagged { missed, through } => {
                log::warn!("event hub missed {missed} event(s); telling stream clients");
                let mut st = self.state.lock();
                if through <= st.newest {
                    return; // the holes were seen (and announced) in the events after them
                }
                let gap = Gap {
                    from: st.newest + 1,
                    to: through,
                };
                self.record_gap(&mut st, gap);
                st.newest = through;
                if !st.global.is_empty() {
                    let data = gap.data();
                    let frame = Frame::build([Item {
                        id: gap.to,
                        name: GAP_EVENT,
                        data: &data,
                        ends_task: false,
                    }]);
                    let mut global = std::mem::take(&mut st.global);
                    self.send_all(&mut global, &frame);
                    st.global = global;
                }
            }
        }
    }

    /// Notes ids the hub will never receive: in the window, and by closing every task room,
    /// whose clients then resume from their task's complete history.
    fn record_gap(&self, st: &mut State, gap: Gap) {
        log::warn!(
            "event hub lost events {}..={}; global streams get a gap event, task streams resume",
            gap.from,
            gap.to
        );
        self.missed_events
            .fetch_add(gap.to - gap.from + 1, Ordering::Relaxed);
        self.push_window(st, Entry::Gap(gap));
        let closed: usize = st.rooms.values().map(Vec::len).sum();
        self.lagged_clients
            .fetch_add(closed as u64, Ordering::Relaxed);
        st.rooms.clear();
    }

    fn push_window(&self, st: &mut State, entry: Entry) {
        if self.window == 0 {
            st.evicted_through = entry.id();
            return;
        }
        st.window_bytes += entry.bytes();
        st.window.push_back(entry);
        while st.window.len() > self.window || st.window_bytes > self.window_max_bytes {
            let Some(old) = st.window.pop_front() else {
                break;
            };
            st.window_bytes -= old.bytes();
            st.evicted_through = old.id();
        }
    }

    fn deliver_batch(&self, batch: &[Arc<TaskEvent>]) {
        let (pieces, wanted) = {
            let mut st = self.state.lock();
            let mut pieces = Vec::with_capacity(batch.len());
            for (i, event) in batch.iter().enumerate() {
                let seq = event.global_seq;
                if seq <= st.newest {
                    // Only after a loss was reported as a gap; that event was announced lost.
                    log::debug!("event {seq} arrived after it was reported lost; skipped");
                    continue;
                }
                if seq > st.newest + 1 {
                    let gap = Gap {
                        from: st.newest + 1,
                        to: seq - 1,
                    };
                    self.record_gap(&mut st, gap);
                    pieces.push(Piece::Gap(gap));
                }
                st.newest = seq;
                self.push_window(&mut st, Entry::Event(event.clone()));
                pieces.push(Piece::Event(i));
            }
            let wanted =
                !st.global.is_empty() || batch.iter().any(|e| st.rooms.contains_key(&e.task_id));
            (pieces, wanted)
        };
        if !wanted || pieces.is_empty() {
            return;
        }
        // Each event is encoded once, whoever shows it, and outside the lock. A client that
        // subscribes meanwhile has these events from history or counts them as past (its
        // writer skips them by id); one that had subscribed gets them below.
        let encode = self.encode;
        let encoded: Vec<Option<(&'static str, String)>> = {
            let mut out: Vec<Option<(&'static str, String)>> = vec![None; batch.len()];
            for p in &pieces {
                if let Piece::Event(i) = p {
                    out[*i] = Some(encode(&batch[*i]));
                }
            }
            out
        };
        let gaps: Vec<String> = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Gap(g) => Some(g.data()),
                Piece::Event(_) => None,
            })
            .collect();
        let mut st = self.state.lock();
        if !st.rooms.is_empty() {
            // The batch's events per task with a room, in order.
            let mut per_room: HashMap<TaskId, Vec<usize>> = HashMap::new();
            for p in &pieces {
                if let Piece::Event(i) = p {
                    let task = batch[*i].task_id;
                    if st.rooms.contains_key(&task) {
                        per_room.entry(task).or_default().push(*i);
                    }
                }
            }
            for (task, indices) in per_room {
                let frame = Frame::build(indices.iter().filter_map(|&i| {
                    let x = encoded[i].as_ref()?;
                    Some(Item::event(&batch[i], x, IdKind::Task))
                }));
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
            let mut gap_data = gaps.iter();
            let items = pieces.iter().filter_map(|p| match p {
                Piece::Event(i) => {
                    let x = encoded[*i].as_ref()?;
                    Some(Item::event(&batch[*i], x, IdKind::Global))
                }
                Piece::Gap(g) => Some(Item {
                    id: g.to,
                    name: GAP_EVENT,
                    data: gap_data.next()?,
                    ends_task: false,
                }),
            });
            let frame = Frame::build(items);
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

    /// A backlog as ids, gaps written `-from..=to` as (from, to) pairs.
    fn ids(b: &Backlog) -> Vec<(u64, u64)> {
        b.entries
            .iter()
            .map(|e| match e {
                Entry::Event(e) => (e.global_seq, e.global_seq),
                Entry::Gap(g) => (g.from, g.to),
            })
            .collect()
    }

    fn text(frame: &Frame) -> String {
        String::from_utf8(frame.bytes_from(0).to_vec()).expect("utf8")
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
        assert_eq!(ids(&backlog), vec![(4, 4), (5, 5)]);
        assert_eq!(after, 3);
        let (_sub, backlog, _) = hub.subscribe_all(Some(0)).expect("sub");
        assert_eq!(
            ids(&backlog),
            vec![(1, 2), (3, 3), (4, 4), (5, 5)],
            "only the window is kept, and the client is told what it lost"
        );
        let frame = backlog.into_frame().expect("a frame");
        assert!(
            text(&frame)
                .starts_with("id: 2\nevent: gap\ndata: {\"from\":1,\"to\":2,\"missed\":2}\n\n"),
            "{}",
            text(&frame)
        );
        let (_sub, backlog, after) = hub.subscribe_all(Some(1)).expect("sub");
        assert_eq!(
            ids(&backlog)[0],
            (2, 2),
            "a gap starts after the client's id"
        );
        assert_eq!(after, 1);
        let (_sub, backlog, after) = hub.subscribe_all(None).expect("sub");
        assert_eq!(
            (backlog.is_empty(), after),
            (true, 5),
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
        assert_eq!(ids(&backlog), vec![(1, 1), (2, 2), (3, 3)]);
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
    fn a_hole_in_the_numbers_reaches_global_clients_as_a_gap_and_closes_rooms() {
        let hub = SseHub::new(10, 16, 100, enc);
        let task = TaskId::new_v4();
        let (global, _, _) = hub.subscribe_all(None).expect("global");
        let room = hub.subscribe_task(task).expect("room");
        hub.deliver(one(event(task, 1, 1, TaskStatus::Sent)));
        // Events 2 and 3 were dropped before the hub saw them.
        hub.deliver(one(event(task, 4, 4, TaskStatus::InProgress)));
        assert_eq!(
            text(&global.events.recv().expect("first")),
            "id: 1\nevent: status\ndata: 1\n\n"
        );
        assert_eq!(
            text(&global.events.recv().expect("the gap, then the event")),
            "id: 3\nevent: gap\ndata: {\"from\":2,\"to\":3,\"missed\":2}\n\n\
             id: 4\nevent: status\ndata: 4\n\n"
        );
        assert_eq!(id(&room.events.recv().expect("before the hole")), 1);
        assert!(
            room.events.recv().is_err(),
            "the room closed at the hole: its client resumes from the task's history"
        );
        assert_eq!(hub.missed_events(), 2);
        let (_sub, backlog, _) = hub.subscribe_all(Some(1)).expect("resume");
        assert_eq!(
            ids(&backlog),
            vec![(2, 3), (4, 4)],
            "the window keeps the gap"
        );
    }

    #[test]
    fn a_loss_at_the_tail_is_told_when_reported() {
        let hub = SseHub::new(10, 16, 100, enc);
        let task = TaskId::new_v4();
        let (global, _, _) = hub.subscribe_all(None).expect("global");
        hub.deliver(one(event(task, 1, 1, TaskStatus::Sent)));
        hub.deliver(Delivery::Lagged {
            missed: 2,
            through: 3,
        });
        let _ = global.events.recv().expect("first");
        assert_eq!(
            text(&global.events.recv().expect("the gap")),
            "id: 3\nevent: gap\ndata: {\"from\":2,\"to\":3,\"missed\":2}\n\n"
        );
        // A report of holes already seen in the numbers says nothing new.
        hub.deliver(one(event(task, 5, 5, TaskStatus::Completed)));
        hub.deliver(Delivery::Lagged {
            missed: 1,
            through: 4,
        });
        assert!(text(&global.events.recv().expect("gap 4")).contains("event: gap"));
        assert!(global.events.try_recv().is_err(), "nothing more");
        assert_eq!(hub.missed_events(), 3);
    }

    #[test]
    fn the_batch_interval_grows_with_the_streams_up_to_its_cap() {
        let hub = SseHub::new(1000, 4, 0, enc);
        assert_eq!(hub.batch_interval(), Duration::ZERO);
        let one = hub.subscribe_all(None).expect("one");
        assert_eq!(hub.batch_interval(), INTERVAL_PER_CLIENT);
        let many: Vec<_> = (0..999)
            .map(|_| hub.subscribe_all(None).expect("sub"))
            .collect();
        assert_eq!(hub.batch_interval(), MAX_INTERVAL);
        drop(many);
        drop(one);
        assert_eq!(hub.batch_interval(), Duration::ZERO);
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
