//! Hashed timing wheel: the data structure behind every timeout in nodelink.
//!
//! A `TimerWheel<T>` owns the pending timers and their payloads. It is plain
//! single-threaded data with no locking and no clock of its own: the timer
//! thread in `super` (`timer/mod.rs`) is the only thread that touches it in
//! production and hands it `Instant::now()`, while tests drive it with a fake
//! clock (`start + n * tick`). It exists so that scheduling and cancelling a
//! timeout is O(1) even with a million timeouts pending, which a binary heap
//! (O(log n), no cheap cancel) or a sorted map cannot give.
//!
//! Layout: entries live in a slab (`Vec` plus an intrusive free list) and are
//! chained per slot into doubly-linked lists by slab index (`u32`), so
//! unlinking needs no search. Each entry stores its absolute deadline tick;
//! an entry sits in slot `tick % slots` and fires when the wheel reaches that
//! exact tick, so deadlines many revolutions away need no "rounds" counter to
//! be decremented. Caller-chosen [`TimerKey`]s map to slab indices through a
//! `HashMap`, making cancel-by-key O(1). A bitmap of non-empty slots lets
//! `advance` and `next_expiry` skip empty slots 64 at a time.
//!
//! Time is quantised relative to `start`: tick `n` is the instant
//! `start + n * tick`. A deadline maps to the *ceiling* tick, and `advance(now)`
//! processes every tick up to the *floor* of `now`, so a timer never fires
//! before its deadline and fires less than one tick after it when `advance` is
//! called promptly.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

/// Tick used by nodelink's timer thread: fine enough for network timeouts, coarse enough to stay idle.
pub const DEFAULT_TICK: Duration = Duration::from_millis(10);

/// Slot count used by nodelink's timer thread: one revolution spans 10.24 s at the default tick.
pub const DEFAULT_SLOTS: usize = 1024;

/// Upper bound on the slot count, so a typo cannot allocate gigabytes of list heads.
pub const MAX_SLOTS: usize = 1 << 24;

/// Slab index meaning "no entry" (end of a list, empty free list).
const NIL: u32 = u32::MAX;

/// Caller-chosen identity of a timer, so it can be cancelled or replaced in O(1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct TimerKey(pub u64);

/// One slab cell: a pending timer, or (with `payload == None`) a free cell
/// whose `next` links the free list. 24 bytes plus the payload.
struct Entry<T> {
    key: u64,
    /// Absolute tick at which this timer fires (`ceil((deadline - start) / tick)`).
    deadline: u64,
    prev: u32,
    next: u32,
    payload: Option<T>,
}

/// Head and tail of one intrusive list (a slot, or the overdue list).
#[derive(Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

const EMPTY_LIST: List = List {
    head: NIL,
    tail: NIL,
};

/// Hasher for `u64` timer keys: one murmur3 finaliser instead of SipHash.
///
/// Keys come from our own counters, not from the network, so HashDoS
/// resistance is not needed; the finaliser still spreads sequential keys and
/// keys differing only in high bits over all buckets.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached if the key type changes; correct, just slower.
        for &b in bytes {
            self.0 = mix64(self.0 ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = mix64(self.0 ^ x);
    }
}

/// murmur3's 64-bit finaliser: a cheap bijective mixer.
fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

type KeyIndex = HashMap<u64, u32, BuildHasherDefault<KeyHasher>>;

/// Hashed timing wheel holding timers with payloads of type `T`; O(1) schedule and cancel.
pub struct TimerWheel<T> {
    start: Instant,
    tick: Duration,
    tick_nanos: u64,
    /// `slots - 1`; `slots` is a power of two.
    mask: u64,
    /// Every tick `<= current` has been processed: nothing pending has a deadline tick `<= current`
    /// except entries on the overdue list.
    current: u64,
    /// `slots` slot lists followed by one overdue list (deadlines already in the past when scheduled).
    lists: Vec<List>,
    /// Bit `i` set iff slot list `i` is non-empty (the overdue list is not tracked here).
    occupied: Vec<u64>,
    entries: Vec<Entry<T>>,
    free_head: u32,
    index: KeyIndex,
}

impl<T> fmt::Debug for TimerWheel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerWheel")
            .field("tick", &self.tick)
            .field("slots", &self.slots())
            .field("current_tick", &self.current)
            .field("len", &self.len())
            .finish()
    }
}

impl<T> TimerWheel<T> {
    /// Creates an empty wheel whose tick 0 is `start`; `slots` is rounded up to a power of two.
    ///
    /// # Panics
    /// If `tick` is zero or longer than `u64::MAX` nanoseconds, or `slots > MAX_SLOTS`.
    pub fn new(tick: Duration, slots: usize, start: Instant) -> Self {
        let tick_nanos =
            u64::try_from(tick.as_nanos()).expect("timer tick must fit in u64 nanoseconds");
        assert!(tick_nanos > 0, "timer tick must be non-zero");
        assert!(
            slots <= MAX_SLOTS,
            "timer wheel slot count {slots} exceeds MAX_SLOTS"
        );
        let slots = slots.max(1).next_power_of_two();
        TimerWheel {
            start,
            tick,
            tick_nanos,
            mask: slots as u64 - 1,
            current: 0,
            lists: vec![EMPTY_LIST; slots + 1],
            occupied: vec![0; slots.div_ceil(64)],
            entries: Vec::new(),
            free_head: NIL,
            index: KeyIndex::default(),
        }
    }

    /// Tick length, so callers can reason about firing granularity.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// Number of slots (a power of two), so callers can reason about revolution length.
    pub fn slots(&self) -> usize {
        self.lists.len() - 1
    }

    /// Number of pending timers.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no timer is pending (the timer thread then blocks without a timeout).
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether `key` is pending, so callers can check without cancelling.
    pub fn contains(&self, key: TimerKey) -> bool {
        self.index.contains_key(&key.0)
    }

    /// Schedules `payload` to fire at `deadline`, replacing (and returning) any timer with the same key.
    ///
    /// A deadline at or before the last processed tick fires on the very next
    /// [`advance`](Self::advance) call, whatever `now` that call is given.
    pub fn schedule(&mut self, key: TimerKey, deadline: Instant, payload: T) -> Option<T> {
        let tick = self.deadline_tick(deadline);
        let idx = self.alloc(key.0, tick, payload);
        let list = self.list_for(tick);
        self.link_back(list, idx);
        // One hash operation for both the new-key and the replace case.
        let old = self.index.insert(key.0, idx)?;
        self.unlink(old);
        Some(self.release(old))
    }

    /// Cancels the timer with `key`, returning its payload, or `None` if it is not pending.
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        let idx = self.index.remove(&key.0)?;
        self.unlink(idx);
        Some(self.release(idx))
    }

    /// Processes every tick up to `now`, appending fired timers to `fired` in deadline-tick order.
    ///
    /// Timers with the same deadline tick fire in scheduling order. Cost is
    /// O(fired + non-empty slots visited); when more than one revolution has
    /// elapsed (the caller was descheduled), each slot is walked once and the
    /// fired timers are sorted, instead of replaying every elapsed tick.
    pub fn advance(&mut self, now: Instant, fired: &mut Vec<(TimerKey, T)>) {
        let target = self.floor_tick(now);
        let overdue = self.slots();
        if self.lists[overdue].head != NIL {
            self.drain_overdue(fired);
        }
        if target <= self.current {
            return;
        }
        if self.index.is_empty() {
            self.current = target;
            return;
        }
        if target - self.current >= self.slots() as u64 {
            self.catch_up(target, fired);
        } else {
            let mut t = self.current + 1;
            while t <= target {
                let from = (t & self.mask) as usize;
                let Some(slot) = self.next_occupied(from) else {
                    break;
                };
                let tick = t + ((slot as u64).wrapping_sub(from as u64) & self.mask);
                if tick > target {
                    break;
                }
                self.fire_slot(slot, tick, fired);
                t = tick + 1;
            }
        }
        self.current = target;
    }

    /// Earliest instant at which [`advance`](Self::advance) may fire something, or `None` when empty.
    ///
    /// Never later than the firing tick of the earliest pending timer (so at
    /// most one tick after its deadline), but may be earlier: it is the tick
    /// of the next non-empty slot, whose timers may belong to a later
    /// revolution. Cost: a scan of the occupancy bitmap (`slots / 64` words).
    /// Returns an instant in the past when an overdue timer is waiting.
    pub fn next_expiry(&self) -> Option<Instant> {
        if self.index.is_empty() {
            return None;
        }
        if self.lists[self.slots()].head != NIL {
            return Some(self.tick_instant(self.current));
        }
        let from = ((self.current + 1) & self.mask) as usize;
        let slot = self.next_occupied(from)?;
        let ahead = (slot as u64).wrapping_sub(from as u64) & self.mask;
        Some(self.tick_instant(self.current + 1 + ahead))
    }

    /// Ceiling tick of `deadline`: the first tick boundary at or after it.
    fn deadline_tick(&self, deadline: Instant) -> u64 {
        let nanos = deadline.saturating_duration_since(self.start).as_nanos();
        let ticks = nanos.div_ceil(u128::from(self.tick_nanos));
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    /// Floor tick of `now`: the last tick boundary at or before it.
    fn floor_tick(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.start).as_nanos();
        u64::try_from(nanos / u128::from(self.tick_nanos)).unwrap_or(u64::MAX)
    }

    /// The instant of tick boundary `tick` (saturating ~584 years after `start`, i.e. never early).
    fn tick_instant(&self, tick: u64) -> Instant {
        self.start + Duration::from_nanos(tick.saturating_mul(self.tick_nanos))
    }

    /// Which list an entry with deadline tick `tick` belongs on, given the current tick.
    fn list_for(&self, tick: u64) -> usize {
        if tick <= self.current {
            self.slots()
        } else {
            (tick & self.mask) as usize
        }
    }

    /// Takes a free slab cell (or grows the slab) and fills it; the cell is not linked yet.
    fn alloc(&mut self, key: u64, deadline: u64, payload: T) -> u32 {
        let entry = Entry {
            key,
            deadline,
            prev: NIL,
            next: NIL,
            payload: Some(payload),
        };
        if self.free_head != NIL {
            let idx = self.free_head;
            let cell = &mut self.entries[idx as usize];
            self.free_head = cell.next;
            *cell = entry;
            idx
        } else {
            let idx = u32::try_from(self.entries.len())
                .ok()
                .filter(|&i| i != NIL)
                .expect("timer wheel holds more than u32::MAX - 1 timers");
            self.entries.push(entry);
            idx
        }
    }

    /// Returns an unlinked cell to the free list and hands back its payload.
    fn release(&mut self, idx: u32) -> T {
        let cell = &mut self.entries[idx as usize];
        cell.next = self.free_head;
        self.free_head = idx;
        cell.payload
            .take()
            .expect("released timer cell must be occupied")
    }

    /// Appends cell `idx` to list `list`.
    fn link_back(&mut self, list: usize, idx: u32) {
        let tail = self.lists[list].tail;
        {
            let e = &mut self.entries[idx as usize];
            e.prev = tail;
            e.next = NIL;
        }
        if tail == NIL {
            self.lists[list].head = idx;
            if list < self.slots() {
                self.occupied[list / 64] |= 1 << (list % 64);
            }
        } else {
            self.entries[tail as usize].next = idx;
        }
        self.lists[list].tail = idx;
    }

    /// Unlinks cell `idx` from whichever list it is on (derived from its deadline tick).
    fn unlink(&mut self, idx: u32) {
        let list = self.list_for(self.entries[idx as usize].deadline);
        self.unlink_from(list, idx);
    }

    /// Unlinks cell `idx` from list `list`, clearing the occupancy bit if the list empties.
    fn unlink_from(&mut self, list: usize, idx: u32) {
        let (prev, next) = {
            let e = &self.entries[idx as usize];
            (e.prev, e.next)
        };
        if prev == NIL {
            self.lists[list].head = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next == NIL {
            self.lists[list].tail = prev;
        } else {
            self.entries[next as usize].prev = prev;
        }
        if self.lists[list].head == NIL && list < self.slots() {
            self.occupied[list / 64] &= !(1 << (list % 64));
        }
    }

    /// Removes a linked cell entirely (list, key index, slab) and returns key and payload.
    fn take(&mut self, list: usize, idx: u32) -> (u64, TimerKey, T) {
        self.unlink_from(list, idx);
        let (key, deadline) = {
            let e = &self.entries[idx as usize];
            (e.key, e.deadline)
        };
        self.index.remove(&key);
        (deadline, TimerKey(key), self.release(idx))
    }

    /// Fires every timer of slot `slot` whose deadline tick is `<= tick`, in list order.
    fn fire_slot(&mut self, slot: usize, tick: u64, fired: &mut Vec<(TimerKey, T)>) {
        let mut idx = self.lists[slot].head;
        while idx != NIL {
            let e = &self.entries[idx as usize];
            let next = e.next;
            if e.deadline <= tick {
                let (_, key, payload) = self.take(slot, idx);
                fired.push((key, payload));
            }
            idx = next;
        }
    }

    /// Fires the whole overdue list, ordered by deadline tick (stable, so FIFO within a tick).
    fn drain_overdue(&mut self, fired: &mut Vec<(TimerKey, T)>) {
        let overdue = self.slots();
        let mut due = Vec::new();
        while self.lists[overdue].head != NIL {
            let idx = self.lists[overdue].head;
            due.push(self.take(overdue, idx));
        }
        due.sort_by_key(|&(deadline, _, _)| deadline);
        fired.extend(due.into_iter().map(|(_, key, payload)| (key, payload)));
    }

    /// Catch-up after at least one full revolution: walk each non-empty slot once,
    /// collect everything due by `target`, then sort by deadline tick.
    fn catch_up(&mut self, target: u64, fired: &mut Vec<(TimerKey, T)>) {
        let mut due = Vec::new();
        for slot in 0..self.slots() {
            let mut idx = self.lists[slot].head;
            while idx != NIL {
                let e = &self.entries[idx as usize];
                let next = e.next;
                if e.deadline <= target {
                    due.push(self.take(slot, idx));
                }
                idx = next;
            }
        }
        // Stable: timers sharing a deadline tick share a slot and were collected in list order.
        due.sort_by_key(|&(deadline, _, _)| deadline);
        fired.extend(due.into_iter().map(|(_, key, payload)| (key, payload)));
    }

    /// First non-empty slot at or cyclically after `from`, via the occupancy bitmap.
    fn next_occupied(&self, from: usize) -> Option<usize> {
        let words = self.occupied.len();
        let w0 = from / 64;
        let bit = from % 64;
        let first = self.occupied[w0] & (!0u64 << bit);
        if first != 0 {
            return Some(w0 * 64 + first.trailing_zeros() as usize);
        }
        for step in 1..=words {
            let w = (w0 + step) % words;
            let mut word = self.occupied[w];
            if step == words {
                // Wrapped back to the starting word: only the bits before `from`.
                word &= (1u64 << bit) - 1;
            }
            if word != 0 {
                return Some(w * 64 + word.trailing_zeros() as usize);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(10);

    /// Deterministic xorshift64* so tests need no `rand` dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn at(start: Instant, ticks: u64) -> Instant {
        start + TICK * u32::try_from(ticks).expect("test tick fits u32")
    }

    fn advance_keys(w: &mut TimerWheel<u64>, now: Instant) -> Vec<u64> {
        let mut fired = Vec::new();
        w.advance(now, &mut fired);
        fired.into_iter().map(|(k, _)| k.0).collect()
    }

    #[test]
    fn fires_exactly_at_ceiling_tick_never_earlier() {
        let start = Instant::now();
        let mut w = TimerWheel::new(TICK, 16, start);
        // Exactly on a boundary: tick 3. Just past a boundary: tick 4.
        w.schedule(TimerKey(1), at(start, 3), 1);
        w.schedule(TimerKey(2), at(start, 3) + Duration::from_nanos(1), 2);
        assert!(advance_keys(&mut w, at(start, 2)).is_empty());
        assert!(advance_keys(&mut w, at(start, 3) - Duration::from_nanos(1)).is_empty());
        assert_eq!(advance_keys(&mut w, at(start, 3)), vec![1]);
        assert!(advance_keys(&mut w, at(start, 4) - Duration::from_nanos(1)).is_empty());
        assert_eq!(advance_keys(&mut w, at(start, 4)), vec![2]);
        assert!(w.is_empty());
    }

    #[test]
    fn timeouts_fire_within_two_ticks_of_deadline_fake_clock() {
        let start = Instant::now();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut w = TimerWheel::new(TICK, 64, start);
        let mut deadlines = HashMap::new();
        for key in 0..5_000u64 {
            // Arbitrary nanosecond offsets up to ~40 revolutions.
            let d = start + Duration::from_nanos(rng.below(25_600_000_000));
            deadlines.insert(key, d);
            w.schedule(TimerKey(key), d, key);
        }
        // Advance in uneven sub-tick steps (promptly: each step < 1 tick).
        let mut now = start;
        let mut fired = Vec::new();
        while !w.is_empty() {
            now += Duration::from_nanos(1 + rng.below(TICK.as_nanos() as u64 - 1));
            fired.clear();
            w.advance(now, &mut fired);
            for (key, _) in &fired {
                let d = deadlines[&key.0];
                assert!(now >= d, "fired before its deadline");
                assert!(now - d < 2 * TICK, "fired {:?} late", now - d);
            }
        }
    }

    #[test]
    fn cancel_removes_and_returns_payload() {
        let start = Instant::now();
        let mut w = TimerWheel::new(TICK, 8, start);
        w.schedule(TimerKey(7), at(start, 2), 70);
        w.schedule(TimerKey(8), at(start, 2), 80);
        assert_eq!(w.cancel(TimerKey(7)), Some(70));
        assert_eq!(w.cancel(TimerKey(7)), None);
        assert_eq!(w.cancel(TimerKey(99)), None);
        assert!(!w.contains(TimerKey(7)));
        assert_eq!(w.len(), 1);
        assert_eq!(advance_keys(&mut w, at(start, 5)), vec![8]);
        // Cancelling after firing is a no-op.
        assert_eq!(w.cancel(TimerKey(8)), None);
        assert_eq!(w.next_expiry(), None);
    }

    #[test]
    fn reschedule_replaces() {
        let start = Instant::now();
        let mut w = TimerWheel::new(TICK, 8, start);
        assert_eq!(w.schedule(TimerKey(1), at(start, 2), 1), None);
        assert_eq!(w.schedule(TimerKey(1), at(start, 30), 2), Some(1));
        assert_eq!(w.len(), 1);
        assert!(advance_keys(&mut w, at(start, 29)).is_empty());
        let mut fired = Vec::new();
        w.advance(at(start, 30), &mut fired);
        assert_eq!(fired, vec![(TimerKey(1), 2)]);
        // Replace with an earlier deadline, too.
        w.schedule(TimerKey(2), at(start, 50), 1);
        w.schedule(TimerKey(2), at(start, 35), 2);
        fired.clear();
        w.advance(at(start, 35), &mut fired);
        assert_eq!(fired, vec![(TimerKey(2), 2)]);
        assert!(w.is_empty());
    }

    #[test]
    fn past_deadline_fires_on_next_advance() {
        let start = Instant::now();
        let mut w = TimerWheel::new(TICK, 8, start);
        w.advance(at(start, 10), &mut Vec::new());
        w.schedule(TimerKey(2), at(start, 9), 2);
        w.schedule(TimerKey(1), at(start, 4), 1);
        let before_start = start.checked_sub(Duration::from_secs(1)).unwrap_or(start);
        w.schedule(TimerKey(3), before_start, 3);
        assert!(w.next_expiry().expect("pending") <= at(start, 10));
        // Same `now` as before: no tick boundary crossed, still fires, in deadline order.
        assert_eq!(advance_keys(&mut w, at(start, 10)), vec![3, 1, 2]);
        assert!(w.is_empty());
    }

    #[test]
    fn deadline_tick_order_within_one_advance() {
        let start = Instant::now();
        let mut w = TimerWheel::new(TICK, 64, start);
        let ticks = [9u64, 3, 7, 3, 1, 20, 9];
        for (key, &t) in ticks.iter().enumerate() {
            w.schedule(TimerKey(key as u64), at(start, t), 0);
        }
        // Within one revolution (tick-by-tick path); ties keep scheduling order.
        assert_eq!(
            advance_keys(&mut w, at(start, 25)),
            vec![4, 1, 3, 2, 0, 6, 5]
        );
    }

    #[test]
    fn many_revolutions() {
        let start = Instant::now();
        let mut w = TimerWheel::new(TICK, 8, start);
        let mut rng = Rng(42);
        let mut expect: Vec<(u64, u64)> = Vec::new();
        for key in 0..2_000u64 {
            let t = 1 + rng.below(500); // up to ~62 revolutions of 8 slots
            w.schedule(TimerKey(key), at(start, t), key);
            expect.push((t, key));
        }
        for tick in 1..=500 {
            let got = advance_keys(&mut w, at(start, tick));
            let want: Vec<u64> = expect
                .iter()
                .filter(|&&(t, _)| t == tick)
                .map(|&(_, k)| k)
                .collect();
            assert_eq!(got, want, "tick {tick}");
        }
        assert!(w.is_empty());
    }

    #[test]
    fn catch_up_after_large_jump() {
        let start = Instant::now();
        let mut w = TimerWheel::new(TICK, 64, start);
        let mut rng = Rng(7);
        let mut deadline_of = HashMap::new();
        for key in 0..10_000u64 {
            let t = 1 + rng.below(5_000);
            w.schedule(TimerKey(key), at(start, t), key);
            deadline_of.insert(key, t);
        }
        // One jump over ~47 revolutions.
        let fired = advance_keys(&mut w, at(start, 3_000));
        let want = deadline_of.values().filter(|&&t| t <= 3_000).count();
        assert_eq!(fired.len(), want);
        let ticks: Vec<u64> = fired.iter().map(|k| deadline_of[k]).collect();
        assert!(
            ticks.windows(2).all(|p| p[0] <= p[1]),
            "not in deadline order"
        );
        // Same-tick timers keep scheduling (key) order.
        assert!(fired
            .windows(2)
            .all(|p| deadline_of[&p[0]] < deadline_of[&p[1]] || p[0] < p[1]));
        // The rest still fire exactly on their tick.
        for tick in 3_001..=5_000 {
            for key in advance_keys(&mut w, at(start, tick)) {
                assert_eq!(deadline_of[&key], tick);
            }
        }
        assert!(w.is_empty());
    }

    #[test]
    fn next_expiry_tracks_earliest_slot() {
        let start = Instant::now();
        let mut w = TimerWheel::new(TICK, 16, start);
        assert_eq!(w.next_expiry(), None);
        w.schedule(TimerKey(1), at(start, 5) - Duration::from_millis(3), 1);
        assert_eq!(w.next_expiry(), Some(at(start, 5)));
        w.schedule(TimerKey(2), at(start, 3), 2);
        assert_eq!(w.next_expiry(), Some(at(start, 3)));
        w.cancel(TimerKey(2));
        assert_eq!(w.next_expiry(), Some(at(start, 5)));
        // A timer in a later revolution: its slot comes up early (allowed: never late).
        w.cancel(TimerKey(1));
        w.schedule(TimerKey(3), at(start, 16 + 9), 3);
        assert_eq!(w.next_expiry(), Some(at(start, 9)));
        assert!(advance_keys(&mut w, at(start, 9)).is_empty());
        // Within the revolution it is exact, also when the scan wraps around the bitmap.
        assert_eq!(w.next_expiry(), Some(at(start, 25)));
        w.advance(at(start, 20), &mut Vec::new());
        assert_eq!(w.next_expiry(), Some(at(start, 25)));
    }

    #[test]
    fn empty_wheel_jumps_for_free() {
        let start = Instant::now();
        let mut w: TimerWheel<u64> = TimerWheel::new(TICK, 4, start);
        let year = start + Duration::from_secs(365 * 24 * 3600);
        w.advance(year, &mut Vec::new());
        w.schedule(TimerKey(1), year + Duration::from_secs(1), 1);
        let next = w.next_expiry().expect("pending");
        assert!(next > year && next <= year + Duration::from_secs(1));
        assert!(advance_keys(&mut w, year + Duration::from_millis(999)).is_empty());
        assert_eq!(advance_keys(&mut w, year + Duration::from_secs(1)), vec![1]);
    }

    #[test]
    fn matches_naive_model_under_random_ops() {
        let start = Instant::now();
        let mut rng = Rng(0xdead_beef);
        let mut w = TimerWheel::new(TICK, 32, start);
        // key -> deadline tick
        let mut model: HashMap<u64, u64> = HashMap::new();
        let mut now_tick = 0u64;
        for _ in 0..50_000 {
            match rng.below(10) {
                0..=4 => {
                    let key = rng.below(500);
                    let t = now_tick.saturating_sub(3) + rng.below(200);
                    w.schedule(TimerKey(key), at(start, t), key);
                    model.insert(key, t);
                }
                5..=6 => {
                    let key = rng.below(500);
                    assert_eq!(
                        w.cancel(TimerKey(key)).is_some(),
                        model.remove(&key).is_some()
                    );
                }
                _ => {
                    now_tick += if rng.below(20) == 0 {
                        rng.below(300)
                    } else {
                        rng.below(3)
                    };
                    let fired = advance_keys(&mut w, at(start, now_tick));
                    let mut want: Vec<(u64, u64)> = model
                        .iter()
                        .filter(|&(_, &t)| t <= now_tick)
                        .map(|(&k, &t)| (t, k))
                        .collect();
                    want.sort_unstable();
                    let mut got: Vec<(u64, u64)> = fired.iter().map(|k| (model[k], *k)).collect();
                    assert!(got.windows(2).all(|p| p[0].0 <= p[1].0), "order");
                    got.sort_unstable();
                    assert_eq!(got, want);
                    for k in &fired {
                        model.remove(k);
                    }
                }
            }
            assert_eq!(w.len(), model.len());
        }
    }

    #[test]
    fn million_timers_schedule_then_cancel() {
        let start = Instant::now();
        let mut w = TimerWheel::new(DEFAULT_TICK, DEFAULT_SLOTS, start);
        let n = 1_000_000u64;
        for key in 0..n {
            // Spread over ~100 s (about 10 revolutions).
            let d = start + Duration::from_micros(key * 97 % 100_000_000);
            w.schedule(TimerKey(key), d, key);
        }
        assert_eq!(w.len(), n as usize);
        for key in 0..n {
            assert_eq!(w.cancel(TimerKey(key)), Some(key));
        }
        assert_eq!(w.len(), 0);
        assert!(w.is_empty());
        assert_eq!(w.next_expiry(), None);
        let mut fired = Vec::new();
        w.advance(start + Duration::from_secs(200), &mut fired);
        assert!(fired.is_empty());
    }

    #[test]
    fn entry_is_compact() {
        assert_eq!(std::mem::size_of::<Entry<u64>>(), 40);
        assert_eq!(std::mem::size_of::<Entry<Box<u8>>>(), 32);
    }

    #[test]
    fn slots_round_up_to_power_of_two() {
        let w: TimerWheel<()> = TimerWheel::new(TICK, 100, Instant::now());
        assert_eq!(w.slots(), 128);
        let w: TimerWheel<()> = TimerWheel::new(TICK, 0, Instant::now());
        assert_eq!(w.slots(), 1);
    }

    #[test]
    fn single_slot_wheel_works() {
        let start = Instant::now();
        let mut w = TimerWheel::new(TICK, 1, start);
        w.schedule(TimerKey(1), at(start, 3), 1);
        w.schedule(TimerKey(2), at(start, 1), 2);
        assert_eq!(w.next_expiry(), Some(at(start, 1)));
        assert_eq!(advance_keys(&mut w, at(start, 1)), vec![2]);
        assert!(advance_keys(&mut w, at(start, 2)).is_empty());
        assert_eq!(advance_keys(&mut w, at(start, 3)), vec![1]);
    }
}
