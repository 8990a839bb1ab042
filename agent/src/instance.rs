//! One live instance of a component: its `Store`, the bound exports, and one call into it
//! under the per-message budgets (CPU ticks, fuel, wall clock). A trap, a timeout or a quota
//! breach ends the call with a [`Kill`]: the instance must be dropped (a trapped instance
//! cannot be entered again); the actor decides what happens next.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Store, StoreContextMut, Trap, UpdateDeadline};

use crate::audit::AuditKind;
use crate::bindings::Component as Bindings;
use crate::bindings::{WitError, WitMessage, WitOrigin, WitTopicMessage};
use crate::broker::{Envelope, Origin, Reply, ReplyError};
use crate::context::{ComponentContext, InstanceScope};
use crate::engine::{AgentEngine, Prepared};
use crate::host::HostState;
use crate::limits::Quota;

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

/// Most bytes of guest-supplied text (an `init` error, a trap message) the agent keeps in a
/// kill reason: the reason is logged on every restart, so a guest must not be able to make
/// the agent write megabytes per crash.
pub const GUEST_TEXT_MAX: usize = 512;

/// `text` cut to [`GUEST_TEXT_MAX`] bytes on a char boundary, saying how much was cut.
pub fn bounded_guest_text(text: &str) -> String {
    if text.len() <= GUEST_TEXT_MAX {
        return text.to_owned();
    }
    let mut end = GUEST_TEXT_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… ({} more bytes not shown)",
        &text[..end],
        text.len() - end
    )
}

/// An `init` error in words: `access-denied: …`, never a debug dump.
fn describe(e: &WitError) -> String {
    let (case, text) = match e {
        WitError::AccessDenied(m) => ("access-denied", m),
        WitError::NotFound(m) => ("not-found", m),
        WitError::InvalidInput(m) => ("invalid-input", m),
        WitError::QuotaExceeded(m) => ("quota-exceeded", m),
        WitError::Timeout(m) => ("timeout", m),
        WitError::Internal(m) => ("internal", m),
    };
    bounded_guest_text(&format!("{case}: {text}"))
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

/// A compiled component with the context its instances run in.
#[derive(Clone)]
pub struct Revision {
    pub ctx: Arc<ComponentContext>,
    pub pre: Prepared,
    /// An instance of this revision already started (its `init` passed) by the update that
    /// made it: the instance that moves to this revision takes it instead of starting one,
    /// so the component never waits on a start between the two revisions.
    started: Arc<std::sync::Mutex<Option<LiveInstance>>>,
}

impl Revision {
    pub fn new(ctx: Arc<ComponentContext>, pre: Prepared) -> Self {
        Self {
            ctx,
            pre,
            started: Arc::default(),
        }
    }

    /// This revision with `instance` (one of its own) waiting to be taken.
    pub(crate) fn with_started(self, instance: LiveInstance) -> Self {
        *self
            .started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(instance);
        self
    }

    /// The instance started ahead, if no one has taken it yet.
    pub(crate) fn take_started(&self) -> Option<LiveInstance> {
        self.started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
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

/// Epoch callback: charge one tick of the message's CPU budget; yield to the runtime while
/// there is budget left (so the wall-clock timeout and other actors get to run), trap when
/// it is spent.
pub(crate) fn on_epoch(mut cx: StoreContextMut<'_, HostState>) -> wasmtime::Result<UpdateDeadline> {
    let state = cx.data_mut();
    if state.cpu.charge() {
        Ok(UpdateDeadline::Yield(1))
    } else {
        state.breach = Some(Quota::CpuTime);
        Err(wasmtime::Error::msg("cpu time per message exceeded"))
    }
}

/// Prepares the store for one call. The deadline must be set before every call: without
/// it the guest never reaches the callback and nothing can stop it.
pub(crate) fn arm(store: &mut Store<HostState>) -> Result<(), Kill> {
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
pub(crate) fn classify(store: &Store<HostState>, error: &wasmtime::Error) -> Kill {
    let data = store.data();
    if let Some(q) = data.breach.or(data.limiter.breached) {
        return Kill::Quota(q);
    }
    if crate::host::resources::is_breach(error) {
        return Kill::Quota(crate::host::resources::QUOTA);
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Kill::Quota(Quota::Fuel),
        Some(trap) => Kill::Trap(trap.to_string()),
        None => Kill::Trap(bounded_guest_text(&format!("{error:#}"))),
    }
}

/// A fresh `Store` for the instance `scope` names: its host state, memory limiter and CPU
/// budget armed for one call.
pub(crate) fn new_store(
    scope: &InstanceScope,
    engine: &AgentEngine,
) -> Result<Store<HostState>, Kill> {
    let state = HostState::new(scope.clone()).map_err(|e| Kill::Setup(e.to_string()))?;
    let mut store = Store::new(engine.engine(), state);
    store.limiter(|s| &mut s.limiter);
    store.epoch_deadline_callback(on_epoch);
    arm(&mut store)?;
    Ok(store)
}

/// Audits a kill of the instance `scope` names: the quota or trap, then the kill itself.
pub(crate) fn audit_kill(scope: &InstanceScope, kill: &Kill) {
    match kill {
        Kill::Quota(q) => scope.quota_exceeded(*q),
        Kill::Trap(m) => scope.record(crate::audit::AuditKind::Trapped {
            message: crate::audit::Text::new(m),
        }),
        Kill::InitFailed(_) | Kill::Setup(_) => {}
    }
    scope.record(crate::audit::AuditKind::Killed {
        reason: crate::audit::Text::new(&kill.to_string()),
    });
}

/// Starts the instance `scope` names (its number was taken by the caller, so a failed start
/// is audited against it).
pub(crate) async fn start(
    scope: &InstanceScope,
    pre: &Prepared,
    engine: &AgentEngine,
) -> Result<LiveInstance, Kill> {
    let mut store = new_store(scope, engine)?;
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
        Ok(Ok(Err(e))) => Err(Kill::InitFailed(describe(&e))),
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
pub(crate) async fn stop_instance(mut r: LiveInstance) {
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
    envelope_reply: Option<tokio::sync::oneshot::Sender<Reply>>,
    reply: Result<Vec<u8>, WitError>,
) {
    if let Some(tx) = envelope_reply {
        let reply = reply.map_err(ReplyError::from);
        // The requester may have given up (timeout); that is not our problem.
        let _ = tx.send(reply);
    }
}

/// Answers a request with the guest's own reply, held to the guest's message-size limit
/// (see `HostState::bound_reply`): a responder cannot hand its requester, or the agent, more
/// than it may send.
fn respond_from_guest(
    store: &Store<HostState>,
    envelope_reply: Option<tokio::sync::oneshot::Sender<Reply>>,
    reply: Result<Vec<u8>, WitError>,
) {
    if let Some(tx) = envelope_reply {
        let bounded = store.data().bound_reply(reply.map_err(ReplyError::from));
        // The requester may have given up (timeout); that is not our problem.
        let _ = tx.send(bounded);
    }
}

/// Handles one message. `Ok(true)`: handled; `Ok(false)`: the guest or the host refused it
/// without harm; `Err`: the instance must die.
pub(crate) async fn handle(r: &mut LiveInstance, envelope: Envelope) -> Result<bool, Kill> {
    let ctx = &r.scope;
    let Envelope {
        origin,
        payload,
        reply,
    } = envelope;
    if let Err(refused) = ctx.check_message_size(payload.len()) {
        respond(reply, Err(refused));
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
            respond_from_guest(&r.store, reply, Ok(answer.unwrap_or_default()));
            Ok(true)
        }
        Ok(Ok(Err(error))) => {
            respond_from_guest(&r.store, reply, Err(error));
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
