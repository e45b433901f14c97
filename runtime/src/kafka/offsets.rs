//! Which offset of each partition may be committed, although events finish out of order.
//!
//! Events of one partition run concurrently (different keys), so the offset stored for a
//! partition is the lowest one not yet finished: every event before it is done. When a partition
//! is revoked, nothing more begins in it and the events already read are finished during the
//! drain; whatever is left when the drain deadline passes is forgotten here and read again by the
//! partition's next owner. An abandoned event (interrupted before a decision) holds the stored
//! offset back for good. A ticket dropped without being finished or abandoned (its task
//! panicked, or was dropped at the drain's deadline) abandons its event: nothing waits for it,
//! and nothing is committed past it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// A topic's partition: where offsets are tracked and committed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
}

impl TopicPartition {
    /// `partition` of `topic`.
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition { topic: topic.into(), partition }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.topic, self.partition)
    }
}

/// Proof that an event was begun in the current assignment of its partition. It is given back
/// to the tracker by [`OffsetTracker::finish`] or [`OffsetTracker::abandon`]; dropped otherwise
/// (a task that panicked), it abandons its event, so the partition's drain does not wait for it
/// and its offset is not committed past.
pub struct Ticket {
    /// The event's partition.
    pub partition: TopicPartition,
    /// The event's offset.
    pub offset: i64,
    /// Whether it is the first event begun in this assignment of its partition: where the
    /// consumer started reading it (the committed offset, or `auto.offset.reset` without one).
    pub first_in_assignment: bool,
    generation: u64,
    /// The tracker to give the event back to if the ticket is dropped; `None` once given back.
    tracker: Option<Arc<OffsetTracker>>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("generation", &self.generation)
            .finish()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(tracker) = self.tracker.take() {
            tracing::warn!(topic = %self.partition.topic, partition = self.partition.partition, offset = self.offset,
                "An event ended without a decision (its task panicked, or was dropped at the drain's deadline); it is read again after a restart or a rebalance.");
            tracker.give_up(&self.partition, self.offset, self.generation);
        }
    }
}

#[derive(Default)]
struct PartitionState {
    /// Which assignment of the partition this is; tickets of earlier ones are stale.
    generation: u64,
    /// Begun and not yet finished.
    in_flight: BTreeSet<i64>,
    /// Abandoned after revocation: never handled here, so never committed past.
    abandoned: BTreeSet<i64>,
    /// One past the highest offset begun.
    next: Option<i64>,
    /// The offset last returned for storing.
    stored: Option<i64>,
    /// Revoked: begin nothing more.
    revoked: bool,
}

impl PartitionState {
    fn committable(&self) -> Option<i64> {
        let held = self.in_flight.first().into_iter().chain(self.abandoned.first()).min().copied();
        held.or(self.next)
    }
}

#[derive(Default)]
struct Partitions {
    states: HashMap<TopicPartition, PartitionState>,
    /// Generations are never reused, even for a partition forgotten and assigned again.
    last_generation: u64,
}

impl std::ops::Deref for Partitions {
    type Target = HashMap<TopicPartition, PartitionState>;
    fn deref(&self) -> &Self::Target {
        &self.states
    }
}

impl std::ops::DerefMut for Partitions {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.states
    }
}

/// Tracks every assigned partition of one binding's consumer.
#[derive(Default)]
pub struct OffsetTracker {
    partitions: Mutex<Partitions>,
    /// Signalled whenever an event finishes, for drains waiting on it.
    finished: Condvar,
}

impl OffsetTracker {
    fn lock(&self) -> MutexGuard<'_, Partitions> {
        // A panic while holding this lock cannot leave the map half-updated in a way that
        // matters more than stopping would: carry on with what is there.
        self.partitions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The partitions were assigned to this consumer: start a new generation for each.
    pub fn assign(&self, partitions: impl IntoIterator<Item = TopicPartition>) {
        let mut map = self.lock();
        for partition in partitions {
            map.last_generation += 1;
            let generation = map.last_generation;
            map.insert(partition, PartitionState { generation, ..PartitionState::default() });
        }
    }

    /// The partition's current assignment, if it is assigned and not revoked. Taken when a
    /// record is read and checked by [`OffsetTracker::begin_at`] when its event begins: a
    /// record read before a rebalance is not begun in the partition's next assignment.
    pub fn generation(&self, partition: &TopicPartition) -> Option<u64> {
        self.lock().get(partition).filter(|s| !s.revoked).map(|s| s.generation)
    }

    /// Records that an event was read. `None` when its partition is not (or no longer)
    /// assigned: the event must be dropped, not handled. (The read loop uses
    /// [`OffsetTracker::begin_at`], with the assignment a record was read in.)
    #[cfg(test)]
    pub fn begin(self: &Arc<Self>, partition: TopicPartition, offset: i64) -> Option<Ticket> {
        let generation = self.generation(&partition)?;
        self.begin_at(partition, offset, generation)
    }

    /// [`OffsetTracker::begin`] for a record read in assignment `generation`: `None` when the
    /// partition was revoked (or reassigned) since.
    pub fn begin_at(
        self: &Arc<Self>,
        partition: TopicPartition,
        offset: i64,
        generation: u64,
    ) -> Option<Ticket> {
        let mut map = self.lock();
        let state = map.get_mut(&partition).filter(|s| !s.revoked && s.generation == generation)?;
        state.in_flight.insert(offset);
        state.next = Some(state.next.map_or(offset + 1, |n| n.max(offset + 1)));
        // The first event read shows where the group's committed position is: storing it again
        // would change nothing.
        let first_in_assignment = state.stored.is_none();
        state.stored.get_or_insert(offset);
        Some(Ticket {
            generation: state.generation,
            partition,
            offset,
            first_in_assignment,
            tracker: Some(self.clone()),
        })
    }

    /// Whether the ticket's partition is still assigned in the same generation. A revoked
    /// partition still counts until its drain ends: events already read are finished then, so
    /// its next owner need not handle them again.
    pub fn is_current(&self, ticket: &Ticket) -> bool {
        self.lock().get(&ticket.partition).is_some_and(|s| s.generation == ticket.generation)
    }

    /// The event is finished (handled, or decided without the handler). When the committable
    /// offset moved forward, calls `store` with it and returns it.
    ///
    /// `store` runs under the tracker's lock: events finish on many tasks at once, and storing
    /// outside the lock could let an older offset overwrite a newer one in librdkafka.
    pub fn finish(&self, mut ticket: Ticket, store: impl FnOnce(&TopicPartition, i64)) -> Option<i64> {
        ticket.tracker = None;
        let mut map = self.lock();
        let stored =
            map.get_mut(&ticket.partition).filter(|s| s.generation == ticket.generation).and_then(|state| {
                state.in_flight.remove(&ticket.offset);
                let committable = state.committable()?;
                (state.stored < Some(committable)).then(|| {
                    state.stored = Some(committable);
                    committable
                })
            });
        if let Some(offset) = stored {
            store(&ticket.partition, offset);
        }
        drop(map);
        self.finished.notify_all();
        stored
    }

    /// The event was not handled (shutdown or revocation interrupted it): it holds the
    /// committable offset back so it is read again.
    pub fn abandon(&self, mut ticket: Ticket) {
        ticket.tracker = None;
        self.give_up(&ticket.partition, ticket.offset, ticket.generation);
    }

    fn give_up(&self, partition: &TopicPartition, offset: i64, generation: u64) {
        let mut map = self.lock();
        if let Some(state) = map.get_mut(partition).filter(|s| s.generation == generation) {
            state.in_flight.remove(&offset);
            state.abandoned.insert(offset);
        }
        drop(map);
        self.finished.notify_all();
    }

    /// Marks partitions revoked (nothing more begins in them) and waits until their in-flight
    /// events finish or `deadline` passes; then forgets them. Returns how many events were still
    /// running and the offsets stored for the partitions. Blocks the calling thread: it runs in
    /// librdkafka's rebalance callback, which must not return before offsets are stored.
    pub fn revoke_and_drain(
        &self,
        partitions: &[TopicPartition],
        deadline: Instant,
    ) -> (usize, Vec<(TopicPartition, i64)>) {
        let mut map = self.lock();
        for partition in partitions {
            if let Some(state) = map.get_mut(partition) {
                state.revoked = true;
            }
        }
        loop {
            let busy: usize = partitions.iter().filter_map(|p| map.get(p)).map(|s| s.in_flight.len()).sum();
            let now = Instant::now();
            if busy == 0 || now >= deadline {
                let stored = partitions
                    .iter()
                    .filter_map(|p| map.remove(p).and_then(|s| s.stored).map(|o| (p.clone(), o)))
                    .collect();
                return (busy, stored);
            }
            map = match self.finished.wait_timeout(map, deadline - now) {
                Ok((map, _)) => map,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// Events begun and not finished, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.lock().values().map(|s| s.in_flight.len()).sum()
    }

    /// The offsets stored so far, per partition, for the final commit at shutdown.
    pub fn stored(&self) -> Vec<(TopicPartition, i64)> {
        self.lock().iter().filter_map(|(p, s)| s.stored.map(|o| (p.clone(), o))).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn p() -> TopicPartition {
        TopicPartition::new("refs", 0)
    }

    #[test]
    fn commits_only_the_lowest_contiguous_finished_offset() {
        let tracker = Arc::new(OffsetTracker::default());
        tracker.assign([p()]);
        let t10 = tracker.begin(p(), 10).unwrap();
        let t11 = tracker.begin(p(), 11).unwrap();
        let t12 = tracker.begin(p(), 12).unwrap();
        assert_eq!(tracker.finish(t12, |_, _| {}), None, "10 and 11 are still running");
        assert_eq!(tracker.finish(t10, |_, _| {}), Some(11));
        assert_eq!(tracker.finish(t11, |_, _| {}), Some(13));
    }

    #[test]
    fn an_abandoned_event_holds_the_offset_back() {
        let tracker = Arc::new(OffsetTracker::default());
        tracker.assign([p()]);
        let t1 = tracker.begin(p(), 1).unwrap();
        let t2 = tracker.begin(p(), 2).unwrap();
        tracker.abandon(t1);
        assert_eq!(tracker.finish(t2, |_, _| {}), None, "1 must be read again: nothing past it is committed");
        assert_eq!(tracker.stored(), vec![(p(), 1)]);
    }

    #[test]
    fn revoked_partitions_begin_nothing_and_stale_tickets_are_ignored() {
        let tracker = Arc::new(OffsetTracker::default());
        tracker.assign([p()]);
        let old = tracker.begin(p(), 5).unwrap();
        assert!(tracker.is_current(&old));
        let (left, _) = tracker.revoke_and_drain(&[p()], Instant::now());
        assert_eq!(left, 1);
        assert!(tracker.begin(p(), 6).is_none());
        tracker.assign([p()]);
        assert!(!tracker.is_current(&old));
        assert_eq!(tracker.finish(old, |_, _| {}), None);
        assert!(tracker.begin(p(), 5).is_some());
    }

    #[test]
    fn a_record_read_before_a_rebalance_is_not_begun_in_the_next_assignment() {
        let tracker = Arc::new(OffsetTracker::default());
        tracker.assign([p()]);
        let read_in = tracker.generation(&p()).unwrap();
        let (left, _) = tracker.revoke_and_drain(&[p()], Instant::now());
        assert_eq!(left, 0, "a record read but not begun holds nothing back");
        assert!(tracker.begin_at(p(), 7, read_in).is_none(), "revoked");
        tracker.assign([p()]);
        assert!(tracker.begin_at(p(), 7, read_in).is_none(), "reassigned: read again, not begun");
        let now = tracker.generation(&p()).unwrap();
        assert!(tracker.begin_at(p(), 7, now).is_some());
    }

    #[test]
    fn drain_returns_as_soon_as_the_partition_is_idle() {
        let tracker = Arc::new(OffsetTracker::default());
        tracker.assign([p()]);
        let ticket = tracker.begin(p(), 0).unwrap();
        let finisher = {
            let tracker = tracker.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                tracker.finish(ticket, |_, _| {})
            })
        };
        let (left, stored) =
            tracker.revoke_and_drain(&[p()], Instant::now() + std::time::Duration::from_secs(30));
        assert_eq!(left, 0);
        assert_eq!(stored, vec![(p(), 1)]);
        assert_eq!(finisher.join().unwrap(), Some(1), "stored before the revocation completes");
    }

    #[test]
    fn a_ticket_dropped_unfinished_abandons_its_event_so_no_drain_waits_for_it() {
        let tracker = Arc::new(OffsetTracker::default());
        tracker.assign([p()]);
        let t1 = tracker.begin(p(), 1).unwrap();
        let t2 = tracker.begin(p(), 2).unwrap();
        // As a task that panicked drops what it held.
        drop(t1);
        assert_eq!(tracker.in_flight(), 1);
        assert_eq!(tracker.finish(t2, |_, _| {}), None, "1 is read again: nothing is committed past it");
        let started = Instant::now();
        let (left, stored) =
            tracker.revoke_and_drain(&[p()], Instant::now() + std::time::Duration::from_secs(30));
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "the drain waited for a dead task");
        assert_eq!((left, stored), (0, vec![(p(), 1)]));
    }
}
