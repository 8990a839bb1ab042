//! `ComponentActor`: one instance of a component, its bounded mailbox, and the loop that
//! handles one message at a time.
//!
//! A trap, a timeout or a quota breach kills the instance (its `Store` is dropped: a trapped
//! instance cannot be entered again), is audited, and the actor restarts a fresh instance
//! after the supervisor's backoff. The mailbox outlives instances, so an update or a restart
//! loses no queued message.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use airssys_crds::capability::CapabilitySet;
use tokio::sync::mpsc;
use wasmtime::{Store, StoreContextMut, Trap, UpdateDeadline};

use crate::audit::{AuditEvent, AuditKind, AuditSink, InstanceIdentity, Text};
use crate::broker::{Broker, Envelope, Mailbox, Origin};
use crate::engine::{AgentEngine, Prepared};
use crate::grant::CapabilityKind;
use crate::grant::GrantTable;
use crate::host::bindings::Component as Bindings;
use crate::host::{HostState, WitError, WitMessage, WitOrigin, WitTopicMessage};
use crate::limits::{Quota, Quotas};
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
    /// Number of the current instance (1 = first start); names the instance in audit events.
    pub instance: AtomicU64,
    /// Audit identity of the current instance (replaced at each start; read on denials only).
    pub identity: RwLock<Arc<InstanceIdentity>>,
}

impl ComponentContext {
    /// Who audit events of the current instance are about.
    fn identity(&self) -> Arc<InstanceIdentity> {
        self.identity
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Starts numbering a new instance (1 = first start).
    fn next_instance(&self) {
        let n = self.instance.fetch_add(1, Ordering::Relaxed) + 1;
        let identity = InstanceIdentity::new(&self.id.namespace, &self.id.name, n, &self.digest);
        *self
            .identity
            .write()
            .unwrap_or_else(PoisonError::into_inner) = identity;
    }

    /// Records a capability denial (always audited, never blocks).
    pub fn denied(&self, kind: CapabilityKind, target: &str) {
        tracing::debug!(component = %self.id, capability = kind.as_str(), target, "capability denied");
        self.audit.deny(&self.identity(), kind, target);
    }

    /// Counts a granted capability use.
    pub fn granted(&self, kind: CapabilityKind) {
        self.audit.count_grant(kind);
    }

    /// Records a quota breach.
    pub fn quota_exceeded(&self, quota: Quota) {
        self.record(AuditKind::QuotaExceeded {
            quota: quota.kind(),
        });
    }

    fn record(&self, kind: AuditKind) {
        self.audit.record(AuditEvent::now(&self.identity(), kind));
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

/// Instructions from the supervisor, handled between messages.
#[derive(Debug)]
pub enum Control {
    /// Run a new revision (new digest and/or grant) from the next message on.
    Upgrade(Box<Revision>),
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
        start(revision, engine).await
    }

    /// Handles one envelope: `Ok(true)` handled, `Ok(false)` refused or answered with an
    /// error, `Err` the instance must be dropped.
    pub async fn handle(&mut self, envelope: Envelope) -> Result<bool, Kill> {
        let ctx = self.store.data().ctx.clone();
        handle(self, &ctx, envelope).await
    }

    /// Linear memory the instance holds.
    pub fn memory_bytes(&self) -> u64 {
        self.store.data().limiter.memory_used()
    }
}

/// The actor: a revision, its mailbox and its supervision state.
pub struct ComponentActor {
    revision: Revision,
    engine: AgentEngine,
    mailbox: mpsc::Receiver<Envelope>,
    control: mpsc::Receiver<Control>,
    status: Arc<ActorStatus>,
    tracker: RestartTracker,
}

impl std::fmt::Debug for ComponentActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentActor")
            .field("component", &self.revision.ctx.id)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl ComponentActor {
    pub fn new(
        revision: Revision,
        engine: AgentEngine,
        mailbox: mpsc::Receiver<Envelope>,
        control: mpsc::Receiver<Control>,
        status: Arc<ActorStatus>,
        policy: RestartPolicy,
    ) -> Self {
        Self {
            revision,
            engine,
            mailbox,
            control,
            status,
            tracker: RestartTracker::new(policy),
        }
    }

    /// Runs until stopped or until the mailbox closes.
    pub async fn run(mut self) {
        let mut running: Option<LiveInstance> = None;
        loop {
            if running.is_none() {
                self.status.set_state(ActorState::Starting);
                match start(&self.revision, &self.engine).await {
                    Ok(r) => {
                        running = Some(r);
                        self.status.set_state(ActorState::Running);
                    }
                    Err(kill) => {
                        if self.crashed(kill).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            tokio::select! {
                biased;
                control = self.control.recv() => match control {
                    Some(Control::Upgrade(revision)) => {
                        if let Some(r) = running.take() {
                            stop_instance(r, &self.revision.ctx).await;
                        }
                        self.revision = *revision;
                        self.tracker.reset();
                    }
                    Some(Control::Stop) | None => break,
                },
                envelope = self.mailbox.recv() => {
                    let Some(envelope) = envelope else { break };
                    let Some(r) = running.as_mut() else { continue };
                    match handle(r, &self.revision.ctx, envelope).await {
                        Ok(true) => {
                            self.status.handled.fetch_add(1, Ordering::Relaxed);
                            self.tracker.healthy();
                            self.status.crash_looping.store(false, Ordering::Relaxed);
                        }
                        Ok(false) => {
                            self.status.failed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(kill) => {
                            running = None;
                            if self.crashed(kill).await {
                                break;
                            }
                        }
                    }
                }
            }
        }
        if let Some(r) = running.take() {
            stop_instance(r, &self.revision.ctx).await;
        }
        self.status.set_state(ActorState::Stopped);
    }

    /// Audits a kill and waits out the backoff. Returns `true` if told to stop meanwhile.
    async fn crashed(&mut self, kill: Kill) -> bool {
        let ctx = &self.revision.ctx;
        self.status.kills.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(component = %ctx.id, reason = %kill, "instance killed");
        match &kill {
            Kill::Quota(q) => ctx.quota_exceeded(*q),
            Kill::Trap(m) => ctx.record(AuditKind::Trapped {
                message: Text::new(m),
            }),
            Kill::InitFailed(_) | Kill::Setup(_) => {}
        }
        ctx.record(AuditKind::Killed {
            reason: Text::new(&kill.to_string()),
        });
        let decision = self.tracker.on_crash(Instant::now());
        if decision.crash_looping && !self.status.is_crash_looping() {
            self.status.crash_looping.store(true, Ordering::Relaxed);
            tracing::error!(component = %ctx.id, restarts = decision.recent, "component is crash-looping");
            ctx.record(AuditKind::CrashLoop);
        }
        self.status.set_state(ActorState::BackingOff);
        // An upgrade during the backoff starts the new revision at once; a stop ends it.
        tokio::select! {
            () = tokio::time::sleep(decision.delay) => {}
            control = self.control.recv() => match control {
                Some(Control::Upgrade(revision)) => {
                    self.revision = *revision;
                    self.tracker.reset();
                }
                Some(Control::Stop) | None => return true,
            },
        }
        self.status.restarts.fetch_add(1, Ordering::Relaxed);
        self.revision.ctx.record(AuditKind::Restarted);
        false
    }
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
    let ctx = store.data().ctx.clone();
    let ticks = ctx.quotas.cpu_ticks(ctx.epoch_tick);
    let data = store.data_mut();
    data.cpu.reset(ticks);
    data.breach = None;
    data.limiter.breached = None;
    store.set_epoch_deadline(1);
    if let Some(fuel) = ctx.quotas.fuel_per_message {
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

async fn start(revision: &Revision, engine: &AgentEngine) -> Result<LiveInstance, Kill> {
    let ctx = &revision.ctx;
    ctx.next_instance();
    // The new instance subscribes again in `init`.
    ctx.broker.unsubscribe_all(&ctx.id);
    let state = HostState::new(ctx.clone()).map_err(|e| Kill::Setup(e.to_string()))?;
    let mut store = Store::new(engine.engine(), state);
    store.limiter(|s| &mut s.limiter);
    store.epoch_deadline_callback(on_epoch);
    arm(&mut store)?;
    let bindings = match revision.pre.instantiate_async(&mut store).await {
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
        ctx.quotas.timeout,
        bindings.airssys_component_lifecycle().call_init(&mut store),
    )
    .await;
    match init {
        Err(_) => Err(Kill::Quota(Quota::Timeout)),
        Ok(Err(e)) => Err(classify(&store, &e)),
        Ok(Ok(Err(e))) => Err(Kill::InitFailed(format!("{e:?}"))),
        Ok(Ok(Ok(()))) => {
            ctx.record(AuditKind::Started);
            Ok(LiveInstance { store, bindings })
        }
    }
}

/// Calls `shutdown` (bounded) and drops the instance.
async fn stop_instance(mut r: LiveInstance, ctx: &ComponentContext) {
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
async fn handle(
    r: &mut LiveInstance,
    ctx: &ComponentContext,
    envelope: Envelope,
) -> Result<bool, Kill> {
    let Envelope {
        origin,
        payload,
        reply,
    } = envelope;
    if payload.len() > ctx.quotas.max_message_bytes as usize {
        ctx.quota_exceeded(Quota::MessageSize);
        respond(
            reply,
            Err(WitError::InvalidInput(format!(
                "message of {} bytes is over the {}-byte limit",
                payload.len(),
                ctx.quotas.max_message_bytes
            ))),
        );
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
            respond(reply, Ok(answer.unwrap_or_default()));
            Ok(true)
        }
        Ok(Ok(Err(error))) => {
            respond(reply, Err(error));
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
