//! Restart policy: exponential backoff after a crash and crash-loop detection, as pure
//! bookkeeping (the actor feeds it crashes and healthy messages with their times).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How restarts are paced and when a component counts as crash-looping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Delay before the first restart after a healthy run.
    pub initial_backoff: Duration,
    /// The delay doubles per consecutive crash up to this.
    pub max_backoff: Duration,
    /// Crashes counted for crash-loop detection are those within this window.
    pub window: Duration,
    /// This many crashes within `window` mark the component crash-looping.
    pub crash_loop_after: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            window: Duration::from_secs(60),
            crash_loop_after: 5,
        }
    }
}

/// What to do after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartDecision {
    /// Wait this long, then start a fresh instance.
    pub delay: Duration,
    /// Crashes within the window, this one included.
    pub recent: u32,
    /// The component is crash-looping (keeps restarting at the backoff, reported Degraded).
    pub crash_looping: bool,
}

/// Pure restart bookkeeping for one actor.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: RestartPolicy,
    recent: VecDeque<Instant>,
    consecutive: u32,
}

impl RestartTracker {
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            recent: VecDeque::new(),
            consecutive: 0,
        }
    }

    /// Records a crash at `now` and decides the backoff.
    pub fn on_crash(&mut self, now: Instant) -> RestartDecision {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > self.policy.window)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        let exponent = self.consecutive.min(20);
        self.consecutive = self.consecutive.saturating_add(1);
        let delay = self
            .policy
            .initial_backoff
            .saturating_mul(1u32 << exponent)
            .min(self.policy.max_backoff);
        let recent = u32::try_from(self.recent.len()).unwrap_or(u32::MAX);
        RestartDecision {
            delay,
            recent,
            crash_looping: recent >= self.policy.crash_loop_after,
        }
    }

    /// A message was handled: the next crash starts the backoff from the beginning.
    pub fn healthy(&mut self) {
        self.consecutive = 0;
    }

    /// A new revision: forget the old one's crashes.
    pub fn reset(&mut self) {
        self.consecutive = 0;
        self.recent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            window: Duration::from_secs(10),
            crash_loop_after: 3,
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut t = RestartTracker::new(policy());
        let now = Instant::now();
        let delays: Vec<_> = (0..6).map(|_| t.on_crash(now).delay.as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn a_handled_message_resets_the_backoff() {
        let mut t = RestartTracker::new(policy());
        let now = Instant::now();
        t.on_crash(now);
        t.on_crash(now);
        t.healthy();
        assert_eq!(t.on_crash(now).delay, Duration::from_millis(100));
    }

    #[test]
    fn crashes_within_the_window_mark_a_crash_loop() {
        let mut t = RestartTracker::new(policy());
        let now = Instant::now();
        assert!(!t.on_crash(now).crash_looping);
        assert!(!t.on_crash(now).crash_looping);
        let third = t.on_crash(now + Duration::from_secs(1));
        assert!(third.crash_looping);
        assert_eq!(third.recent, 3);
    }

    #[test]
    fn crashes_outside_the_window_are_forgotten() {
        let mut t = RestartTracker::new(policy());
        let now = Instant::now();
        t.on_crash(now);
        t.on_crash(now);
        let later = t.on_crash(now + Duration::from_secs(11));
        assert_eq!(later.recent, 1);
        assert!(!later.crash_looping);
    }
}
