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

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::{Duration, Instant};

use airssys_crds::capability::CapabilitySet;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use wasmtime::{Store, StoreContextMut, Trap, UpdateDeadline};

use crate::audit::{AuditEvent, AuditKind, AuditSink, ComponentIdentity, InstanceIdentity, Text};
use crate::broker::{Broker, Envelope, Mailbox, Origin};
use crate::engine::{AgentEngine, Prepared};
use crate::grant::CapabilityKind;
use crate::grant::GrantTable;
use crate::host::bindings::Component as Bindings;
use crate::host::{HostState, WitError, WitMessage, WitOrigin, WitTopicMessage};
use crate::limits::{Quota, Quotas, RateLimiter};
use crate::storage::KvStore;
use crate::supervisor::{RestartPolicy, RestartTracker};

/// A component's identity on the node: `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ComponentId {
    pub namespace: String,
    pub name: String,
}

impl ComponentId {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ComponentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Everything an instance of one revision (digest + grant + quotas) of a component needs.
/// Shared by all its instances across restarts; replaced on update.
#[derive(Debug)]
pub struct ComponentContext {
    pub id: ComponentId,
    /// `namespace/name`, the component's key in storage and audit.
    pub component_key: String,
    pub digest: String,
    /// The grant as parsed (preopens and network pre-checks read it).
    pub grant: Arc<CapabilitySet>,
    /// The same grant compiled for hot-path checks.
    pub grants: Arc<GrantTable>,
    pub quotas: Quotas,
    pub broker: Broker,
    pub storage: Arc<KvStore>,
    pub audit: AuditSink,
    /// This component's own mailbox (subscriptions deliver here).
    pub mailbox: Mailbox,
    /// Host directory holding the component's filesystem grants (`<fs_root>/<guest path>`).
    pub fs_root: PathBuf,
    /// Environment variables the grant exposes.
    pub env: Vec<(String, String)>,
    /// Epoch tick of the engine (CPU budgets are counted in ticks).
    pub epoch_tick: Duration,
    /// The CPU budget per message in ticks (computed once, read before every call).
    pub cpu_ticks: u64,
    /// Instances of this revision started so far; the next start gets the next number.
    pub instance: AtomicU64,
    /// This revision's name in audit events (each instance adds its number).
    pub identity: Arc<ComponentIdentity>,
    /// Outgoing message rate, per component: shared by all its instances and kept across
    /// restarts (a crash does not refill the bucket).
    pub rate: StdMutex<RateLimiter>,
}

impl ComponentContext {
    /// Numbers a new instance (1 = first start) and names it for audit: called once per
    /// instance start, so the hot path only clones the identity's `Arc`.
    pub fn next_instance(self: &Arc<Self>) -> InstanceScope {
        let n = self.instance.fetch_add(1, Ordering::Relaxed) + 1;
        InstanceScope {
            identity: InstanceIdentity::of(&self.identity, n),
            ctx: self.clone(),
        }
    }
}

/// One instance of a component: the revision's shared context plus the instance's own audit
/// identity. Everything the instance records goes through it, so with several instances
/// each event names the instance it happened in.
#[derive(Debug, Clone)]
pub struct InstanceScope {
    pub ctx: Arc<ComponentContext>,
    pub identity: Arc<InstanceIdentity>,
}

impl Deref for InstanceScope {
    type Target = ComponentContext;

    fn deref(&self) -> &ComponentContext {
        &self.ctx
    }
}

impl InstanceScope {
    /// Agent-local number of this instance (1 = first start of its revision).
    pub fn number(&self) -> u64 {
        self.identity.instance
    }

    /// Records a capability denial (always audited, never blocks).
    pub fn denied(&self, kind: CapabilityKind, target: &str) {
        tracing::debug!(component = %self.ctx.id, instance = self.identity.instance, capability = kind.as_str(), target, "capability denied");
        self.ctx.audit.deny(&self.identity, kind, target);
    }

    /// Counts a granted capability use.
    pub fn granted(&self, kind: CapabilityKind) {
        self.ctx.audit.count_grant(kind);
    }

    /// Records a quota breach.
    pub fn quota_exceeded(&self, quota: Quota) {
        self.record(AuditKind::QuotaExceeded {
            quota: quota.kind(),
        });
    }

    fn record(&self, kind: AuditKind) {
        self.ctx.audit.record(AuditEvent::now(&self.identity, kind));
    }
}

/// Why an instance was stopped against its will.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kill {
    /// A quota (memory, CPU, fuel, wall clock) was exceeded.
    Quota(Quota),
    /// The guest trapped (panic, unreachable, stack overflow...).
    Trap(String),
    /// `init` returned an error.
    InitFailed(String),
    /// The host could not set the instance up.
    Setup(String),
}

impl std::fmt::Display for Kill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kill::Quota(q) => write!(f, "{q} quota exceeded"),
            Kill::Trap(m) => write!(f, "trap: {m}"),
            Kill::InitFailed(m) => write!(f, "init failed: {m}"),
            Kill::Setup(m) => write!(f, "setup failed: {m}"),
        }
    }
}

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

    fn set_state(&self, s: ActorState) {
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

/// A compiled component with the context its instances run in.
#[derive(Clone)]
pub struct Revision {
    pub ctx: Arc<ComponentContext>,
    pub pre: Prepared,
}

impl std::fmt::Debug for Revision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revision")
            .field("component", &self.ctx.id)
            .field("digest", &self.ctx.digest)
            .finish_non_exhaustive()
    }
}

/// A live instance: its `Store` and the bound exports. Dropped whole when it dies.
pub struct LiveInstance {
    store: Store<HostState>,
    bindings: Bindings,
    /// The same scope as the store's (kept here so a call can borrow it beside the store).
    scope: InstanceScope,
}

impl std::fmt::Debug for LiveInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveInstance")
            .field("state", self.store.data())
            .finish_non_exhaustive()
    }
}

impl LiveInstance {
    /// Instantiates `revision` and runs its `init` (what a start or restart does).
    pub async fn start(revision: &Revision, engine: &AgentEngine) -> Result<Self, Kill> {
        start(&revision.ctx.next_instance(), &revision.pre, engine).await
    }

    /// Handles one envelope: `Ok(true)` handled, `Ok(false)` refused or answered with an
    /// error, `Err` the instance must be dropped.
    pub async fn handle(&mut self, envelope: Envelope) -> Result<bool, Kill> {
        handle(self, envelope).await
    }

    /// Which instance this is (what its audit events name).
    pub fn scope(&self) -> &InstanceScope {
        &self.scope
    }

    /// Linear memory the instance holds.
    pub fn memory_bytes(&self) -> u64 {
        self.store.data().limiter.memory_used()
    }
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
                if let Some(r) = running.take() {
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
                        let scope = r.scope.clone();
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
    match &kill {
        Kill::Quota(q) => scope.quota_exceeded(*q),
        Kill::Trap(m) => scope.record(AuditKind::Trapped {
            message: Text::new(m),
        }),
        Kill::InitFailed(_) | Kill::Setup(_) => {}
    }
    scope.record(AuditKind::Killed {
        reason: Text::new(&kill.to_string()),
    });
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

/// Epoch callback: charge one tick of the message's CPU budget; yield to the runtime while
/// there is budget left (so the wall-clock timeout and other actors get to run), trap when
/// it is spent.
fn on_epoch(mut cx: StoreContextMut<'_, HostState>) -> wasmtime::Result<UpdateDeadline> {
    let state = cx.data_mut();
    if state.cpu.charge() {
        Ok(UpdateDeadline::Yield(1))
    } else {
        state.breach = Some(Quota::Cpu);
        Err(wasmtime::Error::msg("cpu time per message exceeded"))
    }
}

/// Prepares the store for one call. The deadline must be set before every call: without
/// it the guest never reaches the callback and nothing can stop it.
fn arm(store: &mut Store<HostState>) -> Result<(), Kill> {
    let data = store.data_mut();
    data.cpu.reset(data.scope.cpu_ticks);
    data.breach = None;
    data.limiter.breached = None;
    let fuel = data.scope.quotas.fuel_per_message;
    store.set_epoch_deadline(1);
    if let Some(fuel) = fuel {
        store
            .set_fuel(fuel)
            .map_err(|e| Kill::Setup(format!("fuel: {e}")))?;
    }
    Ok(())
}

/// Names what stopped a call.
fn classify(store: &Store<HostState>, error: &wasmtime::Error) -> Kill {
    let data = store.data();
    if let Some(q) = data.breach.or(data.limiter.breached) {
        return Kill::Quota(q);
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Kill::Quota(Quota::Fuel),
        Some(trap) => Kill::Trap(trap.to_string()),
        None => Kill::Trap(format!("{error:#}").chars().take(512).collect()),
    }
}

/// Starts the instance `scope` names (its number was taken by the caller, so a failed start
/// is audited against it).
async fn start(
    scope: &InstanceScope,
    pre: &Prepared,
    engine: &AgentEngine,
) -> Result<LiveInstance, Kill> {
    let state = HostState::new(scope.clone()).map_err(|e| Kill::Setup(e.to_string()))?;
    let mut store = Store::new(engine.engine(), state);
    store.limiter(|s| &mut s.limiter);
    store.epoch_deadline_callback(on_epoch);
    arm(&mut store)?;
    let bindings = match pre.instantiate_async(&mut store).await {
        Ok(b) => b,
        Err(e) => {
            let kill = classify(&store, &e);
            return Err(match kill {
                Kill::Trap(m) => Kill::Setup(m),
                other => other,
            });
        }
    };
    let init = tokio::time::timeout(
        scope.quotas.timeout,
        bindings.airssys_component_lifecycle().call_init(&mut store),
    )
    .await;
    match init {
        Err(_) => Err(Kill::Quota(Quota::Timeout)),
        Ok(Err(e)) => Err(classify(&store, &e)),
        Ok(Ok(Err(e))) => Err(Kill::InitFailed(format!("{e:?}"))),
        Ok(Ok(Ok(()))) => {
            scope.record(AuditKind::Started);
            Ok(LiveInstance {
                store,
                bindings,
                scope: scope.clone(),
            })
        }
    }
}

/// Calls `shutdown` (bounded) and drops the instance.
async fn stop_instance(mut r: LiveInstance) {
    let ctx = &r.scope;
    if arm(&mut r.store).is_ok() {
        let call = r
            .bindings
            .airssys_component_lifecycle()
            .call_shutdown(&mut r.store);
        if tokio::time::timeout(ctx.quotas.timeout.min(Duration::from_secs(1)), call)
            .await
            .is_err()
        {
            tracing::warn!(component = %ctx.id, "shutdown did not finish in time");
        }
    }
}

fn respond(
    envelope_reply: Option<tokio::sync::oneshot::Sender<crate::broker::Reply>>,
    reply: crate::broker::Reply,
) {
    if let Some(tx) = envelope_reply {
        // The requester may have given up (timeout); that is not our problem.
        let _ = tx.send(reply);
    }
}

/// Handles one message. `Ok(true)`: handled; `Ok(false)`: the guest or the host refused it
/// without harm; `Err`: the instance must die.
async fn handle(r: &mut LiveInstance, envelope: Envelope) -> Result<bool, Kill> {
    let ctx = &r.scope;
    let Envelope {
        origin,
        payload,
        reply,
    } = envelope;
    if let Err(e) = r.store.data().check_size(payload.len()) {
        respond(reply, Err(e));
        return Ok(false);
    }
    let message = WitMessage {
        origin: match origin {
            Origin::Topic { topic, publisher } => WitOrigin::Topic(WitTopicMessage {
                topic,
                publisher: publisher.to_string(),
            }),
            Origin::Direct(Some(sender)) => WitOrigin::Direct(sender.to_string()),
            Origin::Direct(None) => WitOrigin::Direct("agent".to_string()),
        },
        payload: payload.to_vec(),
    };
    arm(&mut r.store)?;
    let call = r
        .bindings
        .airssys_component_lifecycle()
        .call_handle_message(&mut r.store, &message);
    match tokio::time::timeout(ctx.quotas.timeout, call).await {
        Ok(Ok(Ok(answer))) => {
            if reply.is_some() {
                respond(
                    reply,
                    r.store.data().bound_reply(Ok(answer.unwrap_or_default())),
                );
            }
            Ok(true)
        }
        Ok(Ok(Err(error))) => {
            if reply.is_some() {
                respond(reply, r.store.data().bound_reply(Err(error)));
            }
            Ok(false)
        }
        Ok(Err(e)) => {
            let kill = classify(&r.store, &e);
            respond(
                reply,
                Err(WitError::Internal(format!("component killed: {kill}"))),
            );
            Err(kill)
        }
        Err(_) => {
            respond(
                reply,
                Err(WitError::Timeout(format!(
                    "no answer within {:?}; component killed",
                    ctx.quotas.timeout
                ))),
            );
            Err(Kill::Quota(Quota::Timeout))
        }
    }
}
