//! Quotas per instance: memory and tables (a [`ResourceLimiter`] over the whole component, not
//! per memory), CPU per message (epoch ticks, optional fuel), wall-clock timeout, mailbox
//! length, storage bytes and message rate.
//!
//! Everything here is pure bookkeeping; the actor applies it around each call.

use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;

/// The limits one component runs under (the agent-side form of the CRD's `ResolvedLimits`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    /// Total linear memory of one instance, over all its memories.
    pub memory_bytes: u64,
    /// Table elements over all tables of one instance.
    pub table_elements: u64,
    /// Fuel per message, when the engine counts fuel.
    pub fuel_per_message: Option<u64>,
    /// CPU time per message, enforced with epoch ticks.
    pub cpu_time_per_message: Duration,
    /// Wall-clock time per message, including time waiting on host calls.
    pub timeout: Duration,
    /// Messages handled at once by one replica: the component runs up to this many instances
    /// per replica (capped at [`MAX_INSTANCES_PER_COMPONENT`]), each handling one at a time.
    pub max_concurrent_messages: u32,
    /// Replicas of the component on this node (a Placement's `instances`; 1 for a local
    /// manifest). They share the component's one mailbox, so they add concurrency, not
    /// queues: the node runs up to `replicas × maxConcurrentMessages` instances.
    pub replicas: u32,
    /// Messages waiting in the mailbox before senders are pushed back.
    pub mailbox_capacity: u32,
    /// Bytes the component may keep in the node's store.
    pub storage_bytes: u64,
    /// Messages per second the component may publish, send or request.
    pub messages_per_second: u32,
    /// Largest payload the component may send or receive.
    pub max_message_bytes: u32,
}

impl Default for Quotas {
    /// The CRD defaults (DESIGN §3).
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            table_elements: 100_000,
            fuel_per_message: None,
            cpu_time_per_message: Duration::from_millis(100),
            timeout: Duration::from_secs(5),
            max_concurrent_messages: 1,
            replicas: 1,
            mailbox_capacity: 64,
            storage_bytes: 10 << 20,
            messages_per_second: 1000,
            max_message_bytes: 1 << 20,
        }
    }
}

impl From<&airssys_crds::limits::ResolvedLimits> for Quotas {
    fn from(l: &airssys_crds::limits::ResolvedLimits) -> Self {
        Self {
            memory_bytes: l.memory_bytes,
            table_elements: Quotas::default().table_elements,
            fuel_per_message: l.fuel_per_message,
            cpu_time_per_message: l.cpu_time_per_message,
            timeout: l.timeout,
            max_concurrent_messages: l.max_concurrent_messages,
            replicas: 1,
            mailbox_capacity: l.mailbox_capacity,
            storage_bytes: l.storage_bytes,
            messages_per_second: l.messages_per_second,
            max_message_bytes: l.max_message_bytes,
        }
    }
}

/// Most instances one component may run at once, whatever its `maxConcurrentMessages`
/// says: each takes a slot of the node's instance pool, so one component must not be able
/// to take them all.
pub const MAX_INSTANCES_PER_COMPONENT: u32 = airssys_crds::limits::MAX_CONCURRENT_MESSAGES;

impl Quotas {
    /// Instances the component may run at once: `maxConcurrentMessages` (at least one, at
    /// most [`MAX_INSTANCES_PER_COMPONENT`]) for each of its replicas on this node. The
    /// replica count is the operator's to bound (it places no more than the node's capacity).
    pub fn instances(&self) -> u32 {
        self.max_concurrent_messages
            .clamp(1, MAX_INSTANCES_PER_COMPONENT)
            .saturating_mul(self.replicas.max(1))
    }

    /// Epoch ticks a message may run on the CPU, rounded up, at least one.
    pub fn cpu_ticks(&self, tick: Duration) -> u64 {
        let tick = tick.as_nanos().max(1);
        let ticks = self.cpu_time_per_message.as_nanos().div_ceil(tick);
        u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
    }
}

/// Which quota a breach hit: the one quota vocabulary of the agent. The audit event, the
/// metric label and the guest's error all name it by [`Quota::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quota {
    /// Linear memory, and table elements with it (they are one budget per instance).
    Memory,
    Fuel,
    CpuTime,
    Timeout,
    Storage,
    MessageRate,
    MessageSize,
    Mailbox,
    /// Requests in flight of an HTTP component (over it: 503), or messages at once.
    Concurrency,
    /// An HTTP request body over the component's `maxRequestBodyBytes` (413).
    RequestBody,
    /// An HTTP response body over the component's `maxResponseBodyBytes` (cut off).
    ResponseBody,
    /// Host resources the instance holds: resource-table entries (HTTP fields and bodies,
    /// streams, pollables, files, sockets) and the open files among them.
    Handles,
}

impl Quota {
    /// Every quota, in counter-array order (`quota as usize`).
    pub const ALL: [Quota; 12] = [
        Self::Memory,
        Self::Fuel,
        Self::CpuTime,
        Self::Timeout,
        Self::Storage,
        Self::MessageRate,
        Self::MessageSize,
        Self::Mailbox,
        Self::Concurrency,
        Self::RequestBody,
        Self::ResponseBody,
        Self::Handles,
    ];

    /// Stable lower-case name used in the audit log, metric labels and guest errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Fuel => "fuel",
            Self::CpuTime => "cpu-time",
            Self::Timeout => "timeout",
            Self::Storage => "storage",
            Self::MessageRate => "message-rate",
            Self::MessageSize => "message-size",
            Self::Mailbox => "mailbox",
            Self::Concurrency => "concurrency",
            Self::RequestBody => "request-body",
            Self::ResponseBody => "response-body",
            Self::Handles => "handles",
        }
    }
}

impl std::fmt::Display for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Caps the sum of all linear memories (and all table elements) of one instance.
///
/// `StoreLimits` caps each memory on its own, so a component with several memories could
/// exceed its quota; this limiter keeps a running total instead.
#[derive(Debug, Clone)]
pub struct InstanceLimiter {
    memory_limit: u64,
    memory_used: u64,
    table_limit: u64,
    table_used: u64,
    /// Set when a growth was refused, so the trap that usually follows is reported as a
    /// quota breach rather than a plain crash.
    pub breached: Option<Quota>,
}

impl InstanceLimiter {
    pub fn new(memory_limit: u64, table_limit: u64) -> Self {
        Self {
            memory_limit,
            memory_used: 0,
            table_limit,
            table_used: 0,
            breached: None,
        }
    }

    /// Linear memory currently held by the instance.
    pub fn memory_used(&self) -> u64 {
        self.memory_used
    }
}

fn grow(used: &mut u64, limit: u64, current: usize, desired: usize) -> bool {
    let extra = desired.saturating_sub(current) as u64;
    match used.checked_add(extra) {
        Some(total) if total <= limit => {
            *used = total;
            true
        }
        _ => false,
    }
}

impl ResourceLimiter for InstanceLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let ok = grow(&mut self.memory_used, self.memory_limit, current, desired);
        if !ok {
            self.breached = Some(Quota::Memory);
        }
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let ok = grow(&mut self.table_used, self.table_limit, current, desired);
        if !ok {
            // Tables are not a quota of their own: they are reported as memory.
            self.breached = Some(Quota::Memory);
        }
        Ok(ok)
    }
}

/// Token bucket for a component's outgoing messages, shared by all its instances.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// A bucket refilled at `per_second`, holding at most one second's worth.
    pub fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            per_second,
            burst: per_second,
            tokens: per_second,
            last: Instant::now(),
        }
    }

    /// Takes one token if available.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// CPU budget of the message being handled, in epoch ticks.
///
/// The epoch callback charges one tick each time it fires; a host call that waits (say, a
/// request) costs at most one tick however long it waits, so this approximates CPU time.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBudget {
    pub allowed: u64,
    pub used: u64,
}

impl CpuBudget {
    /// Starts a new message with `allowed` ticks.
    pub fn reset(&mut self, allowed: u64) {
        self.allowed = allowed;
        self.used = 0;
    }

    /// Charges one tick; `false` once the budget is spent.
    pub fn charge(&mut self) -> bool {
        self.used += 1;
        self.used < self.allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_caps_the_sum_of_all_memories_not_each_one() {
        let mut l = InstanceLimiter::new(100, 10);
        assert!(l.memory_growing(0, 60, None).unwrap(), "first memory fits");
        assert!(
            !l.memory_growing(0, 60, None).unwrap(),
            "second one would exceed the total"
        );
        assert_eq!(l.breached, Some(Quota::Memory));
        assert!(
            l.memory_growing(0, 40, None).unwrap(),
            "exactly the rest fits"
        );
        assert_eq!(l.memory_used(), 100);
    }

    #[test]
    fn limiter_respects_the_module_maximum() {
        let mut l = InstanceLimiter::new(1000, 10);
        assert!(!l.memory_growing(0, 60, Some(50)).unwrap());
        assert_eq!(l.breached, None, "a module maximum is not our quota");
    }

    #[test]
    fn limiter_caps_table_elements() {
        let mut l = InstanceLimiter::new(1000, 10);
        assert!(l.table_growing(0, 10, None).unwrap());
        assert!(!l.table_growing(10, 11, None).unwrap());
        assert_eq!(l.breached, Some(Quota::Memory));
    }

    #[test]
    fn rate_limiter_allows_a_burst_then_refills_over_time() {
        let mut r = RateLimiter::new(10);
        let t0 = r.last;
        let granted = (0..20).filter(|_| r.try_acquire(t0)).count();
        assert_eq!(granted, 10, "burst is one second's worth");
        assert!(!r.try_acquire(t0));
        assert!(
            r.try_acquire(t0 + Duration::from_millis(150)),
            "refilled after 100ms+"
        );
    }

    #[test]
    fn cpu_budget_counts_ticks() {
        let q = Quotas {
            cpu_time_per_message: Duration::from_millis(25),
            ..Quotas::default()
        };
        assert_eq!(q.cpu_ticks(Duration::from_millis(10)), 3, "rounded up");
        let mut b = CpuBudget::default();
        b.reset(2);
        assert!(b.charge());
        assert!(!b.charge());
    }
}
