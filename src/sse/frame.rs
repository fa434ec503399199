//! A batch of events formatted as Server-Sent Events text once, for every client that shows
//! the same ids. All dashboard clients of the global stream get the same bytes, and so do all
//! clients of one task's stream: encoding JSON per client per event was what limited fan-out.

use std::sync::Arc;

use crate::http::sse::format_event_into;
use crate::tasks::TaskEvent;

/// Turns an event into its SSE event name and `data:` text (the API layer's JSON).
pub type EncodeEvent = fn(&TaskEvent) -> (&'static str, String);

/// Which sequence number a stream shows as the event id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    /// Global sequence numbers: the stream of every task.
    Global,
    /// Per-task sequence numbers: one task's stream.
    Task,
}

impl IdKind {
    /// The id this kind of stream shows for `e`.
    pub fn of(self, e: &TaskEvent) -> u64 {
        match self {
            IdKind::Global => e.global_seq,
            IdKind::Task => e.task_seq,
        }
    }
}

/// One SSE event of a frame: its id, name and `data:` text.
#[derive(Clone, Copy, Debug)]
pub struct Item<'a> {
    /// The id the stream shows.
    pub id: u64,
    /// The SSE event name.
    pub name: &'a str,
    /// The `data:` text.
    pub data: &'a str,
    /// Whether it is a task's final status.
    pub ends_task: bool,
}

impl<'a> Item<'a> {
    /// A task event shown with the ids of `kind`, with its encoded name and data.
    pub fn event(e: &TaskEvent, encoded: &'a (&'static str, String), kind: IdKind) -> Self {
        Item {
            id: kind.of(e),
            name: encoded.0,
            data: &encoded.1,
            ends_task: e.ends_task(),
        }
    }
}

/// Consecutive events as SSE text, shared by every client that receives them.
#[derive(Debug)]
pub struct Frame {
    text: Vec<u8>,
    /// Per event, in order: its id and where its text ends.
    marks: Vec<(u64, usize)>,
    ends_task: bool,
}

impl Frame {
    /// Formats `items` (in order, ids ascending); their data is encoded by the caller, so an
    /// event shown by several streams is encoded only once.
    pub fn build<'a>(items: impl IntoIterator<Item = Item<'a>>) -> Arc<Frame> {
        let mut frame = Frame {
            text: Vec::with_capacity(256),
            marks: Vec::new(),
            ends_task: false,
        };
        let mut id_text = String::with_capacity(20);
        for item in items {
            id_text.clear();
            id_text.push_str(&item.id.to_string());
            format_event_into(&mut frame.text, Some(&id_text), item.name, item.data);
            frame.marks.push((item.id, frame.text.len()));
            frame.ends_task |= item.ends_task;
        }
        Arc::new(frame)
    }

    /// The text of the events with an id above `last_id`, and the newest id; `None` when the
    /// client has seen all of them already (e.g. from history it was sent on subscribing).
    pub fn after(&self, last_id: u64) -> Option<(&[u8], u64)> {
        let newest = self.marks.last()?.0;
        if newest <= last_id {
            return None;
        }
        let start = self
            .marks
            .iter()
            .take_while(|(id, _)| *id <= last_id)
            .last()
            .map_or(0, |&(_, end)| end);
        Some((&self.text[start..], newest))
    }

    /// Length of the frame's text.
    pub fn len_bytes(&self) -> usize {
        self.text.len()
    }

    /// The frame's text from byte `offset` (an offset `after` produced) to its end.
    pub fn bytes_from(&self, offset: usize) -> &[u8] {
        self.text.get(offset..).unwrap_or_default()
    }

    /// Whether the frame holds a task's final status: a task stream ends after it.
    pub fn ends_task(&self) -> bool {
        self.ends_task
    }

    /// Events in the frame.
    pub fn len(&self) -> usize {
        self.marks.len()
    }

    /// Whether the frame holds no event.
    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::{EventKind, TaskId, TaskStatus};
    use std::time::SystemTime;

    fn event(global_seq: u64, task_seq: u64, status: TaskStatus) -> TaskEvent {
        TaskEvent {
            global_seq,
            task_seq,
            task_id: TaskId::nil(),
            agent_id: Arc::from("a"),
            at: SystemTime::now(),
            kind: EventKind::Status {
                status,
                reason: None,
            },
        }
    }

    fn enc(e: &TaskEvent) -> (&'static str, String) {
        ("status", format!("s{}", e.task_seq))
    }

    #[test]
    fn a_frame_skips_what_the_client_has_seen() {
        let events = [
            event(10, 1, TaskStatus::Created),
            event(11, 2, TaskStatus::Sent),
            event(12, 3, TaskStatus::Completed),
        ];
        let encoded: Vec<_> = events.iter().map(enc).collect();
        let frame = Frame::build(
            events
                .iter()
                .zip(&encoded)
                .map(|(e, x)| Item::event(e, x, IdKind::Task)),
        );
        assert_eq!(frame.len(), 3);
        assert!(frame.ends_task());
        let (all, newest) = frame.after(0).expect("all new");
        assert_eq!(newest, 3);
        assert_eq!(
            std::str::from_utf8(all).expect("utf8"),
            "id: 1\nevent: status\ndata: s1\n\nid: 2\nevent: status\ndata: s2\n\n\
             id: 3\nevent: status\ndata: s3\n\n"
        );
        let (tail, _) = frame.after(2).expect("one new");
        assert_eq!(
            std::str::from_utf8(tail).expect("utf8"),
            "id: 3\nevent: status\ndata: s3\n\n"
        );
        assert!(frame.after(3).is_none());

        let global = Frame::build(
            events
                .iter()
                .zip(&encoded)
                .take(2)
                .map(|(e, x)| Item::event(e, x, IdKind::Global)),
        );
        assert!(!global.ends_task());
        assert_eq!(global.after(10).map(|(_, n)| n), Some(11));
    }
}
