//! Budgets for work in progress: a total of units (bytes of upload files,
//! upload sessions, bytes of manifests held in memory) handed out in
//! [`Share`]s that give their units back when dropped. A share that would
//! pass the total is refused at once, never waited for: the caller answers
//! 429 and the client retries, so no request sits holding part of a budget
//! while it waits for the rest.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A total of units, some of them handed out.
#[derive(Debug)]
pub struct Budget {
    total: u64,
    used: AtomicU64,
}

/// Units taken from a [`Budget`], returned when dropped.
#[derive(Debug)]
pub struct Share {
    budget: Arc<Budget>,
    held: u64,
}

impl Budget {
    /// A budget of `total` units, none handed out.
    pub fn new(total: u64) -> Arc<Budget> {
        Arc::new(Budget {
            total,
            used: AtomicU64::new(0),
        })
    }

    /// The total.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Units handed out now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// A share of `units`, if the budget has them.
    pub fn take(self: &Arc<Self>, units: u64) -> Option<Share> {
        let mut share = Share {
            budget: self.clone(),
            held: 0,
        };
        share.grow_to(units).then_some(share)
    }

    fn add(&self, units: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(units).filter(|after| *after <= self.total)
            })
            .is_ok()
    }
}

impl Share {
    /// The budget this share is of.
    pub fn budget(&self) -> Arc<Budget> {
        self.budget.clone()
    }

    /// Grows the share to `units` (never shrinks it); false, holding what
    /// it held, if the budget lacks the difference.
    pub fn grow_to(&mut self, units: u64) -> bool {
        let more = units.saturating_sub(self.held);
        if more == 0 {
            return true;
        }
        if !self.budget.add(more) {
            return false;
        }
        self.held = units;
        true
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_stay_within_the_total_and_give_back_when_dropped() {
        let budget = Budget::new(10);
        let mut a = budget.take(4).unwrap();
        assert!(budget.take(7).is_none());
        let b = budget.take(6).unwrap();
        assert_eq!(budget.used(), 10);
        assert!(!a.grow_to(5), "the budget is spent");
        assert!(a.grow_to(3), "a share never shrinks");
        drop(b);
        assert!(a.grow_to(10));
        assert_eq!(budget.used(), 10);
        drop(a);
        assert_eq!(budget.used(), 0);
    }
}
