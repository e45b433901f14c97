//! Key-ordered concurrency: events with the same key (within a partition) run one after
//! another, in the order they were read; events with different keys, or none, run at once.
//! A pure structure: the dispatcher holds it under a lock and runs what it hands out.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// The queues of the keys that have an event running.
pub struct KeyOrder<K, T> {
    /// A key is here while one of its events runs; its queue holds the ones read after it.
    busy: HashMap<K, VecDeque<T>>,
}

impl<K: Eq + Hash + Clone, T> Default for KeyOrder<K, T> {
    fn default() -> Self {
        KeyOrder { busy: HashMap::new() }
    }
}

impl<K: Eq + Hash + Clone, T> KeyOrder<K, T> {
    /// An event was read: `Some(item)` when it may start now, `None` when it waits behind an
    /// event of its key. Events without a key always start.
    pub fn submit(&mut self, key: Option<&K>, item: T) -> Option<T> {
        let Some(key) = key else { return Some(item) };
        match self.busy.get_mut(key) {
            Some(queue) => {
                queue.push_back(item);
                None
            }
            None => {
                self.busy.insert(key.clone(), VecDeque::new());
                Some(item)
            }
        }
    }

    /// The running event of `key` finished: the next one of the key, which may start now.
    pub fn finished(&mut self, key: &K) -> Option<T> {
        let next = self.busy.get_mut(key).and_then(VecDeque::pop_front);
        if next.is_none() {
            self.busy.remove(key);
        }
        next
    }

    /// Events waiting behind a running one of their key.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.busy.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::HashSet;

    /// A property test over random interleavings: events of one key never run at once and run
    /// in the order they were read; every event runs exactly once.
    #[test]
    fn any_interleaving_keeps_per_key_order_and_finishes_every_event() {
        for seed in 0..500 {
            let mut rng = StdRng::seed_from_u64(seed);
            let keys = rng.random_range(1..6);
            let events = rng.random_range(1..200);
            let mut order: KeyOrder<u32, (Option<u32>, usize)> = KeyOrder::default();
            let mut running: Vec<(Option<u32>, usize)> = Vec::new();
            let mut started: Vec<(Option<u32>, usize)> = Vec::new();
            let mut read = 0;
            while read < events || !running.is_empty() {
                let finish = read == events || (!running.is_empty() && rng.random_bool(0.5));
                if finish {
                    let (key, seq) = running.swap_remove(rng.random_range(0..running.len()));
                    if let Some(key) = key
                        && let Some(next) = order.finished(&key)
                    {
                        running.push(next);
                        started.push(next);
                    }
                    let _ = seq;
                } else {
                    let key = (rng.random_range(0..keys + 1) < keys).then(|| rng.random_range(0..keys));
                    if let Some(item) = order.submit(key.as_ref(), (key, read)) {
                        running.push(item);
                        started.push(item);
                    }
                    read += 1;
                }
                let busy: Vec<u32> = running.iter().filter_map(|(k, _)| *k).collect();
                let distinct: HashSet<u32> = busy.iter().copied().collect();
                assert_eq!(busy.len(), distinct.len(), "seed {seed}: two events of one key at once");
            }
            assert_eq!(order.waiting(), 0, "seed {seed}");
            let mut seen: Vec<usize> = started.iter().map(|(_, seq)| *seq).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..events).collect::<Vec<_>>(), "seed {seed}: every event once");
            for key in 0..keys {
                let of_key: Vec<usize> =
                    started.iter().filter(|(k, _)| *k == Some(key)).map(|(_, s)| *s).collect();
                assert!(of_key.windows(2).all(|w| w[0] < w[1]), "seed {seed}: key {key} out of order");
            }
        }
    }
}
