//! Per-key limits on calls in flight to the guest agents: one key (or, for the WebSocket relays,
//! which authenticate with a computer's token, one computer) may hold at most
//! `limits.max_agent_calls_per_key` of them at once. The shared in-flight budget of
//! `computers::agent_client` bounds the daemon's memory; this bounds one tenant's share of it and
//! of the agents' time, so a tenant that opens many slow calls cannot starve the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Counts calls in flight per key; a slot is given back when its [`Slot`] is dropped.
pub struct InFlight {
    max: usize,
    counts: Mutex<HashMap<String, usize>>,
}

/// One call in flight, counted against its key until dropped.
#[derive(Debug)]
pub struct Slot {
    owner: Arc<InFlight>,
    key: String,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight").field("max", &self.max).finish()
    }
}

impl InFlight {
    /// At most `max` calls in flight per key (0 is taken as 1).
    pub fn new(max: usize) -> Arc<InFlight> {
        Arc::new(InFlight {
            max: max.max(1),
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// The most calls one key may have in flight.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot for `key`, or `None` when it holds all of its slots already.
    pub fn try_take(self: &Arc<Self>, key: &str) -> Option<Slot> {
        let mut counts = self.counts();
        let n = counts.entry(key.to_string()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            owner: self.clone(),
            key: key.to_string(),
        })
    }

    /// Calls in flight for `key` now.
    pub fn held(&self, key: &str) -> usize {
        self.counts().get(key).copied().unwrap_or(0)
    }

    fn counts(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        // Counting cannot be left half done by a panic: the map is still right.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts();
        // Keys without calls are forgotten, so the map holds only keys with calls in flight.
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_at_most_max_and_gets_them_back() {
        let limit = InFlight::new(2);
        let a1 = limit.try_take("a").unwrap();
        let _a2 = limit.try_take("a").unwrap();
        assert!(limit.try_take("a").is_none());
        // Another key has its own slots.
        let b = limit.try_take("b").unwrap();
        assert_eq!(limit.held("a"), 2);
        drop(a1);
        assert_eq!(limit.held("a"), 1);
        let _a3 = limit.try_take("a").unwrap();
        drop(b);
        assert_eq!(limit.held("b"), 0);
        assert!(!limit.counts().contains_key("b"));
    }
}
