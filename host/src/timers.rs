//! Timers of one tenant: what to fire when.
//!
//! A plain data structure owned by the tenant's host-held state, so timers
//! survive swaps and crashes; the tenant task sleeps until
//! [`Timers::next_deadline`] and fires what [`Timers::take_due`] returns on
//! whatever instance is current then. Timers live in memory only: a host
//! restart forgets them (plugins re-arm them in `init`).

use std::collections::{BTreeMap, HashMap};

use tokio::time::Instant;

/// Identifies a timer (unique within its tenant).
pub type TimerId = u64;

/// A pending timer as a handover carries it: id, name, time left, payload.
pub type Carried = (TimerId, Option<String>, std::time::Duration, Vec<u8>);

/// Largest payload.
pub const MAX_PAYLOAD: usize = 64 << 10;

/// Pending timers of one tenant.
#[derive(Debug, Default)]
pub struct Timers {
    due: BTreeMap<(Instant, TimerId), Timer>,
    at: HashMap<TimerId, Instant>,
    named: HashMap<String, TimerId>,
    next: TimerId,
}

#[derive(Debug)]
struct Timer {
    name: Option<String>,
    payload: Vec<u8>,
}

impl Timers {
    /// Sets a timer; a named one replaces the pending timer of that name.
    pub fn set(&mut self, name: Option<String>, at: Instant, payload: Vec<u8>) -> TimerId {
        if let Some(old) = name.as_ref().and_then(|n| self.named.get(n).copied()) {
            self.cancel(old);
        }
        self.next += 1;
        let id = self.next;
        if let Some(name) = &name {
            self.named.insert(name.clone(), id);
        }
        self.due.insert((at, id), Timer { name, payload });
        self.at.insert(id, at);
        id
    }

    /// Cancels a pending timer.
    pub fn cancel(&mut self, id: TimerId) -> bool {
        let Some(at) = self.at.remove(&id) else {
            return false;
        };
        if let Some(timer) = self.due.remove(&(at, id))
            && let Some(name) = timer.name
        {
            self.named.remove(&name);
        }
        true
    }

    /// The pending timer named `name`.
    pub fn pending(&self, name: &str) -> Option<TimerId> {
        self.named.get(name).copied()
    }

    /// Pending timers.
    pub fn len(&self) -> usize {
        self.at.len()
    }

    /// Whether none is pending.
    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// When the next timer is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.due.keys().next().map(|(at, _)| *at)
    }

    /// Every pending timer, earliest first, as (id, name, time left from
    /// `now`, payload), and the last id handed out: what a handover carries.
    pub fn export(&self, now: Instant) -> (TimerId, Vec<Carried>) {
        let pending = self
            .due
            .iter()
            .map(|((at, id), timer)| {
                (
                    *id,
                    timer.name.clone(),
                    at.saturating_duration_since(now),
                    timer.payload.clone(),
                )
            })
            .collect();
        (self.next, pending)
    }

    /// The timers a handover carried, due `left` after `now` each; ids go
    /// on after `next`.
    pub fn import(next: TimerId, pending: Vec<Carried>, now: Instant) -> Timers {
        let mut timers = Timers::default();
        for (id, name, left, payload) in pending {
            let at = now + left;
            if let Some(name) = &name {
                timers.named.insert(name.clone(), id);
            }
            timers.due.insert((at, id), Timer { name, payload });
            timers.at.insert(id, at);
            timers.next = timers.next.max(id);
        }
        timers.next = timers.next.max(next);
        timers
    }

    /// Removes and returns the timers due at `now`, earliest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<(TimerId, Vec<u8>)> {
        let mut fired = Vec::new();
        while let Some(entry) = self.due.first_entry() {
            let (at, id) = *entry.key();
            if at > now {
                break;
            }
            let timer = entry.remove();
            self.at.remove(&id);
            if let Some(name) = timer.name {
                self.named.remove(&name);
            }
            fired.push((id, timer.payload));
        }
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timers_fire_in_order_and_names_replace() {
        let now = Instant::now();
        let mut t = Timers::default();
        let late = t.set(None, now + Duration::from_secs(2), b"late".to_vec());
        let first = t.set(Some("flush".into()), now + Duration::from_secs(5), b"old".to_vec());
        let second = t.set(Some("flush".into()), now + Duration::from_secs(1), b"new".to_vec());
        assert_ne!(first, second);
        assert_eq!(t.pending("flush"), Some(second));
        assert_eq!(t.len(), 2);
        assert_eq!(t.next_deadline(), Some(now + Duration::from_secs(1)));
        assert!(t.take_due(now).is_empty());
        let fired = t.take_due(now + Duration::from_secs(3));
        assert_eq!(fired, vec![(second, b"new".to_vec()), (late, b"late".to_vec())]);
        assert_eq!(t.pending("flush"), None);
        assert!(t.is_empty());
    }

    #[test]
    fn timers_carried_over_keep_ids_names_and_order() {
        let now = Instant::now();
        let mut t = Timers::default();
        let a = t.set(Some("a".into()), now + Duration::from_secs(3), b"a".to_vec());
        let b = t.set(None, now + Duration::from_secs(1), b"b".to_vec());
        let (next, pending) = t.export(now);
        let later = now + Duration::from_secs(10);
        let mut moved = Timers::import(next, pending, later);
        assert_eq!(moved.pending("a"), Some(a));
        assert_eq!(moved.next_deadline(), Some(later + Duration::from_secs(1)));
        assert!(moved.set(None, later, vec![]) > b, "ids go on");
        let fired: Vec<_> = moved
            .take_due(later + Duration::from_secs(5))
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(fired.len(), 3);
        assert_eq!(&fired[1..], &[b, a]);
    }

    #[test]
    fn cancel() {
        let now = Instant::now();
        let mut t = Timers::default();
        let id = t.set(Some("x".into()), now, vec![]);
        assert!(t.cancel(id));
        assert!(!t.cancel(id));
        assert_eq!(t.pending("x"), None);
        assert!(t.take_due(now).is_empty());
    }
}
