//! Fairness between components in the audit pipeline: a component's repeated records are
//! folded into counts once it has had its share, so a flood from one component can neither
//! fill the shared queue (hiding its neighbours' records) nor rotate its own earlier, more
//! interesting records out of the log.
//!
//! Per component revision and per foldable reason, the first [`FOLD_VERBATIM`] records of
//! every [`FOLD_WINDOW`] are queued verbatim; later ones in the same window only bump an
//! atomic count. The writer thread turns counts into one summary line per (component,
//! reason) per tick ("N more like this") and adds them to the Kubernetes Event series, so
//! nothing is lost silently: every occurrence is either a line, part of a summary's count,
//! or (queue full) counted as dropped.
//!
//! Lifecycle records (started, killed, trapped, crash loop) are never folded: the supervisor's
//! restart backoff already bounds them, and they are the ones an auditor needs.
//!
//! Lock-free and allocation-free: three atomics per (component, reason). Counts at a window
//! boundary are approximate (two threads may both start the window); the folded total is
//! exact.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::event::Reason;

/// Length of a fairness window.
pub const FOLD_WINDOW: Duration = Duration::from_secs(10);
/// Records of one (component, reason) written verbatim per window; the rest are folded.
/// With about 300 bytes a line this bounds one component's audit log growth to roughly
/// 5 lines (1.5 KB) a second per reason, plus one summary line per second.
pub const FOLD_VERBATIM: u32 = 50;

/// The reasons that can come in floods, each with its own budget so a denial flood cannot
/// fold away a quota breach.
pub const FOLDABLE: [Reason; 3] = [
    Reason::CapabilityDenied,
    Reason::QuotaExceeded,
    Reason::MessageRejected,
];

/// Index of `reason` in [`FOLDABLE`], `None` for reasons that are never folded.
#[inline]
pub(crate) fn foldable(reason: Reason) -> Option<usize> {
    match reason {
        Reason::CapabilityDenied => Some(0),
        Reason::QuotaExceeded => Some(1),
        Reason::MessageRejected => Some(2),
        _ => None,
    }
}

/// What to do with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Queue it.
    Verbatim,
    /// Counted in the fold. `first` is set for the first fold since the writer last took the
    /// count, so the writer can be told which component to summarize.
    Folded { first: bool },
}

/// One (component revision, reason) budget.
#[derive(Debug, Default)]
struct Budget {
    window: AtomicU64,
    admitted: AtomicU32,
    folded: AtomicU64,
}

impl Budget {
    #[inline]
    fn admit(&self, window: u64) -> Admit {
        let current = self.window.load(Ordering::Relaxed);
        if current != window
            && self
                .window
                .compare_exchange(current, window, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.admitted.store(0, Ordering::Relaxed);
        }
        if self.admitted.fetch_add(1, Ordering::Relaxed) < FOLD_VERBATIM {
            Admit::Verbatim
        } else {
            // Saturating in practice: 2^64 folds would take centuries.
            let before = self.folded.fetch_add(1, Ordering::Relaxed);
            Admit::Folded { first: before == 0 }
        }
    }
}

/// The fold state of one component revision; lives in its
/// [`ComponentIdentity`](super::ComponentIdentity), shared by all its instances.
#[derive(Debug, Default)]
pub struct FoldState {
    budgets: [Budget; FOLDABLE.len()],
}

impl FoldState {
    /// Decides whether a record of `reason` at `at` is queued or folded.
    #[inline]
    pub(crate) fn admit(&self, reason: usize, at: SystemTime) -> Admit {
        let secs = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.budgets[reason].admit(secs / FOLD_WINDOW.as_secs())
    }

    /// Whether any record is folded and not yet summarized.
    pub(crate) fn pending(&self) -> bool {
        self.budgets
            .iter()
            .any(|b| b.folded.load(Ordering::Relaxed) > 0)
    }

    /// Takes the folded counts (per [`FOLDABLE`] reason) for a summary.
    pub(crate) fn take(&self) -> [u64; FOLDABLE.len()] {
        self.budgets
            .each_ref()
            .map(|b| b.folded.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn first_records_of_a_window_are_verbatim_then_folded() {
        let f = FoldState::default();
        for _ in 0..FOLD_VERBATIM {
            assert_eq!(f.admit(0, at(100)), Admit::Verbatim);
        }
        assert_eq!(f.admit(0, at(100)), Admit::Folded { first: true });
        assert_eq!(f.admit(0, at(101)), Admit::Folded { first: false });
        assert_eq!(f.take(), [2, 0, 0]);
        assert_eq!(f.take(), [0, 0, 0], "taking resets the count");
    }

    #[test]
    fn a_new_window_gets_a_new_verbatim_share() {
        let f = FoldState::default();
        for _ in 0..=FOLD_VERBATIM {
            f.admit(0, at(100));
        }
        let next = 100 + FOLD_WINDOW.as_secs();
        assert_eq!(f.admit(0, at(next)), Admit::Verbatim);
    }

    #[test]
    fn each_reason_has_its_own_budget() {
        let f = FoldState::default();
        for _ in 0..FOLD_VERBATIM * 3 {
            f.admit(0, at(100));
        }
        assert_eq!(
            f.admit(1, at(100)),
            Admit::Verbatim,
            "a quota breach is not folded away"
        );
    }

    #[test]
    fn lifecycle_reasons_are_never_folded() {
        for r in [
            Reason::Started,
            Reason::Killed,
            Reason::Trapped,
            Reason::CrashLoop,
            Reason::Restarted,
        ] {
            assert_eq!(foldable(r), None, "{r:?}");
        }
        for (i, r) in FOLDABLE.iter().enumerate() {
            assert_eq!(foldable(*r), Some(i));
        }
    }
}
