//! `ComponentActor`: one component on the node, its bounded mailbox, and its instances,
//! each an actor handling one message at a time.
//!
//! A component runs up to `maxConcurrentMessages` instances, all draining the component's
//! one mailbox (so mailbox length, message rate and storage quota stay per component); the
//! first is started with the component, the others on demand. Each instance has its own
//! `Store`, memory limit and CPU/time budget. A trap, a timeout or a quota breach kills that
//! instance only (its `Store` is dropped: a trapped instance cannot be entered again), is
//! audited, and the instance restarts fresh after the component's backoff; crash-loop
//! detection counts the crashes of all instances. The mailbox outlives instances, so an
//! update or a restart loses no queued message.
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Instant;

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;

use crate::audit::AuditKind;
use crate::broker::Envelope;
use crate::context::InstanceScope;
use crate::engine::AgentEngine;
use crate::instance::{Kill, LiveInstance, Revision, audit_kill, handle, start, stop_instance};
use crate::restart::{RestartPolicy, RestartTracker};

/// Where an actor is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ActorState {
    Starting = 0,
    Running = 1,
    BackingOff = 2,
    Stopped = 3,
}

/// Live counters for one actor, readable from anywhere.
#[derive(Debug, Default)]
pub struct ActorStatus {
    state: AtomicU8,
    pub handled: AtomicU64,
    pub failed: AtomicU64,
    pub kills: AtomicU64,
    pub restarts: AtomicU64,
    crash_looping: AtomicBool,
}

impl ActorStatus {
    pub fn state(&self) -> ActorState {
        match self.state.load(Ordering::Relaxed) {
            0 => ActorState::Starting,
            1 => ActorState::Running,
            2 => ActorState::BackingOff,
            _ => ActorState::Stopped,
        }
    }

    pub(crate) fn set_state(&self, s: ActorState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    /// True while restarts come faster than the policy tolerates (→ `Degraded`).
    pub fn is_crash_looping(&self) -> bool {
        self.crash_looping.load(Ordering::Relaxed)
    }
}

/// What every instance of a component should be doing: the latest value wins, every
/// instance sees it between two messages (a `watch` channel, so no instance can miss it).
#[derive(Debug, Clone)]
pub enum Control {
    /// Run this revision; a change of revision (update) is applied by each instance after
    /// its current message: `shutdown`, then a fresh instance of the new revision.
    Run(Revision),
    /// Finish the current message, call `shutdown`, stop.
    Stop,
}

/// One component on this node: up to `maxConcurrentMessages` instances, each an actor
/// handling one message at a time, all draining the component's one bounded mailbox.
///
/// Instances beyond the first are started on demand, when an instance takes a message and
/// none is left waiting: an idle component costs one instance whatever its limit, so 10,000
/// idle components stay cheap, and a burst gets its extra instances within one start
/// (~tens of µs). Extra instances then stay until the next update or stop (an update
/// drops them; demand starts them again from the new revision).
pub struct ComponentActor {
    revision: Revision,
    engine: AgentEngine,
    mailbox: mpsc::Receiver<Envelope>,
    control: watch::Receiver<Control>,
    status: Arc<ActorStatus>,
    policy: RestartPolicy,
}

impl std::fmt::Debug for ComponentActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentActor")
            .field("component", &self.revision.ctx.id)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// What a component's instances share.
struct Shared {
    engine: AgentEngine,
    /// The component's one mailbox; whichever idle instance locks it takes the next message.
    mailbox: tokio::sync::Mutex<mpsc::Receiver<Envelope>>,
    status: Arc<ActorStatus>,
    /// Crash-loop detection is per component, over all its instances.
    tracker: StdMutex<RestartTracker>,
    /// A crash happened since the last handled message: only then does a handled message
    /// need the tracker's lock (the message path stays lock-free in the common case).
    crashed_since_healthy: AtomicBool,
    /// Instances alive (starting, idle, busy or backing off).
    live: AtomicU32,
    /// Instances waiting for a message.
    idle: AtomicU32,
    /// An instance took a message and none was left waiting.
    want_more: Notify,
}

impl Shared {
    fn tracker(&self) -> std::sync::MutexGuard<'_, RestartTracker> {
        self.tracker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How an instance goes on after a crash and its backoff.
enum AfterCrash {
    Restart,
    Upgrade(Revision),
    Stop,
}

impl ComponentActor {
    /// `control` must hold `Control::Run(revision)` to start with.
    pub fn new(
        revision: Revision,
        engine: AgentEngine,
        mailbox: mpsc::Receiver<Envelope>,
        control: watch::Receiver<Control>,
        status: Arc<ActorStatus>,
        policy: RestartPolicy,
    ) -> Self {
        Self {
            revision,
            engine,
            mailbox,
            control,
            status,
            policy,
        }
    }

    /// Runs the component's instances until stopped or until the mailbox closes. Aborting
    /// this task aborts every instance (they live in its `JoinSet`).
    pub async fn run(self) {
        let shared = Arc::new(Shared {
            engine: self.engine,
            mailbox: tokio::sync::Mutex::new(self.mailbox),
            status: self.status,
            tracker: StdMutex::new(RestartTracker::new(self.policy)),
            crashed_since_healthy: AtomicBool::new(false),
            live: AtomicU32::new(1),
            idle: AtomicU32::new(0),
            want_more: Notify::new(),
        });
        let mut instances = JoinSet::new();
        instances.spawn(instance(shared.clone(), self.control.clone(), true));
        loop {
            tokio::select! {
                joined = instances.join_next() => match joined {
                    Some(Err(e)) if e.is_panic() => {
                        tracing::error!(component = %self.revision.ctx.id, error = %e, "instance task panicked");
                    }
                    Some(_) => {}
                    None => break,
                },
                () = shared.want_more.notified() => {
                    let max = match &*self.control.borrow() {
                        Control::Run(r) => r.ctx.quotas.instances(),
                        Control::Stop => 0,
                    };
                    let grew = shared.idle.load(Ordering::Acquire) == 0
                        && shared
                            .live
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
                            .is_ok();
                    if grew {
                        instances.spawn(instance(shared.clone(), self.control.clone(), false));
                    }
                }
            }
        }
        shared.status.set_state(ActorState::Stopped);
    }
}

/// What an instance waited for.
enum Wake {
    Control,
    Message(Option<Envelope>),
}

/// One instance's life: start, take messages from the shared mailbox one at a time, restart
/// after a kill (with the component's backoff), follow updates, stop. The `primary` instance
/// lives as long as the component; extra ones end at an update or when they cannot start.
async fn instance(shared: Arc<Shared>, mut control: watch::Receiver<Control>, primary: bool) {
    let first = match &*control.borrow_and_update() {
        Control::Run(r) => Some(r.clone()),
        Control::Stop => None,
    };
    if let Some(revision) = first {
        instance_loop(&shared, &mut control, revision, primary).await;
    }
    shared.live.fetch_sub(1, Ordering::AcqRel);
}

async fn instance_loop(
    shared: &Shared,
    control: &mut watch::Receiver<Control>,
    mut revision: Revision,
    primary: bool,
) {
    let status = &shared.status;
    let mut running: Option<LiveInstance> = None;
    loop {
        if running.is_none() {
            if let Some(started) = revision.take_started() {
                running = Some(started);
                status.set_state(ActorState::Running);
                continue;
            }
            status.set_state(ActorState::Starting);
            let scope = revision.ctx.next_instance();
            match start(&scope, &revision.pre, &shared.engine).await {
                Ok(r) => {
                    running = Some(r);
                    status.set_state(ActorState::Running);
                }
                Err(Kill::Setup(reason)) if !primary => {
                    // No room for another instance (say, the pool is full): the primary
                    // keeps serving; this is not the component's fault.
                    tracing::warn!(component = %revision.ctx.id, %reason, "extra instance could not start");
                    return;
                }
                Err(kill) => match crashed(shared, &scope, kill, control).await {
                    AfterCrash::Restart => continue,
                    AfterCrash::Upgrade(next) if primary => {
                        revision = next;
                        continue;
                    }
                    AfterCrash::Upgrade(_) | AfterCrash::Stop => return,
                },
            }
        }
        let (wake, idle_left) = next_wake(shared, control).await;
        match wake {
            Wake::Control => {
                let next = match &*control.borrow_and_update() {
                    Control::Run(r) => Some(r.clone()),
                    Control::Stop => None,
                };
                // Start before stop: an update hands over an instance of the new revision
                // that already passed `init`; it serves from now, then the old one shuts down.
                let handed_over = match &next {
                    Some(next) if primary => next.take_started(),
                    _ => None,
                };
                let old = match handed_over {
                    Some(started) => {
                        status.set_state(ActorState::Running);
                        running.replace(started)
                    }
                    None => running.take(),
                };
                if let Some(r) = old {
                    stop_instance(r).await;
                }
                match next {
                    Some(next) if primary => {
                        revision = next;
                        shared.tracker().reset();
                    }
                    _ => return,
                }
            }
            Wake::Message(None) => break,
            Wake::Message(Some(envelope)) => {
                // Only wake the coordinator when another instance may start: with the
                // default limit of one this costs nothing per message.
                if idle_left == 0
                    && shared.live.load(Ordering::Acquire) < revision.ctx.quotas.instances()
                {
                    shared.want_more.notify_one();
                }
                let Some(r) = running.as_mut() else { continue };
                match handle(r, envelope).await {
                    Ok(true) => {
                        status.handled.fetch_add(1, Ordering::Relaxed);
                        if shared.crashed_since_healthy.swap(false, Ordering::Relaxed) {
                            shared.tracker().healthy();
                            status.crash_looping.store(false, Ordering::Relaxed);
                        }
                    }
                    Ok(false) => {
                        status.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(kill) => {
                        let scope = r.scope().clone();
                        running = None;
                        match crashed(shared, &scope, kill, control).await {
                            AfterCrash::Restart => {}
                            AfterCrash::Upgrade(next) if primary => revision = next,
                            AfterCrash::Upgrade(_) | AfterCrash::Stop => return,
                        }
                    }
                }
            }
        }
    }
    if let Some(r) = running.take() {
        stop_instance(r).await;
    }
}

/// The next thing an instance must do (control comes before messages), and how many
/// instances are still waiting after it. Always waits through `recv().await`, never
/// `try_recv`: the receive spends tokio's cooperative budget, so a busy instance yields now
/// and then and a neighbour woken on the same worker (say, the subscriber it publishes to)
/// gets to run instead of its mailbox overflowing.
async fn next_wake(shared: &Shared, control: &mut watch::Receiver<Control>) -> (Wake, u32) {
    shared.idle.fetch_add(1, Ordering::AcqRel);
    let wake = tokio::select! {
        biased;
        changed = control.changed() => match changed {
            Ok(()) => Wake::Control,
            Err(_) => Wake::Message(None),
        },
        envelope = async { shared.mailbox.lock().await.recv().await } => Wake::Message(envelope),
    };
    let idle_left = shared.idle.fetch_sub(1, Ordering::AcqRel) - 1;
    (wake, idle_left)
}

/// Audits a kill of the instance `scope` names and waits out the component's backoff; an
/// update or stop meanwhile cuts the wait short.
async fn crashed(
    shared: &Shared,
    scope: &InstanceScope,
    kill: Kill,
    control: &mut watch::Receiver<Control>,
) -> AfterCrash {
    let status = &shared.status;
    status.kills.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(component = %scope.id, instance = scope.number(), reason = %kill, "instance killed");
    audit_kill(scope, &kill);
    let decision = shared.tracker().on_crash(Instant::now());
    shared.crashed_since_healthy.store(true, Ordering::Relaxed);
    if decision.crash_looping && !status.crash_looping.swap(true, Ordering::Relaxed) {
        tracing::error!(component = %scope.id, restarts = decision.recent, "component is crash-looping");
        scope.record(AuditKind::CrashLoop);
    }
    status.set_state(ActorState::BackingOff);
    let after = tokio::select! {
        () = tokio::time::sleep(decision.delay) => AfterCrash::Restart,
        changed = control.changed() => match changed {
            Err(_) => AfterCrash::Stop,
            Ok(()) => match &*control.borrow_and_update() {
                Control::Run(next) => {
                    shared.tracker().reset();
                    AfterCrash::Upgrade(next.clone())
                }
                Control::Stop => AfterCrash::Stop,
            },
        },
    };
    // The killed instance is the one restarted (its successor's `Started` names the new
    // number), also when the restart moves to a new revision.
    if matches!(after, AfterCrash::Restart | AfterCrash::Upgrade(_)) {
        status.restarts.fetch_add(1, Ordering::Relaxed);
        scope.record(AuditKind::Restarted);
    }
    after
}
