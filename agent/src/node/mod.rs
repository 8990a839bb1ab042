//! Node mode: the agent as one node of the cluster (`airssys-agent run --node-name`).
//!
//! - [`lease`]: the agent's Lease (liveness and capacity), renewed every
//!   `LEASE_RENEW_SECONDS`, released on a graceful shutdown.
//! - A watcher on `Placement`s with the field selector `spec.nodeName=<node>`: the agent
//!   sees only its own node's Placements (and [`placements::select`] checks the node again).
//! - The loop in this file converges the [`Supervisor`] onto them with the pure steps of
//!   [`placements`]: start, scale, update to a new digest, stop on delete. Bytes come from an
//!   [`ArtifactSource`], fetched and compiled in the background per Placement; the running
//!   revision keeps running until the new one is compiled, and keeps running (reported) if
//!   the new one cannot be fetched or compiled. It never runs a digest other than a
//!   Placement's.
//! - [`status`]: each Placement's status, written by server-side apply (field manager
//!   `AGENT_FIELD_MANAGER`) on change, paced per Placement, and resynced.
//!
//! A component here is (Placement namespace, `spec.component.name`); its Placement's
//! `instances` replicas share the component's one mailbox, each adding
//! `maxConcurrentMessages` instances (see [`placements::prepare`]).
//!
//! On shutdown the Lease is deleted rather than left to expire: the instances stop with the
//! agent, so a Lease saying the node runs them for another 40 s would keep the operator from
//! moving their replicas. An agent restart therefore lets the operator re-place; a new
//! agent's Lease makes the node eligible again within a second.

pub mod lease;
pub mod placements;
pub mod status;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex as StdMutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use airssys_crds::agent::{
    AGENT_FIELD_MANAGER, AgentCapacity, LEASE_DURATION_SECONDS, LEASE_RENEW_SECONDS,
};
use airssys_crds::artifact::Digest;
use airssys_crds::placement::{Placement, PlacementSpec, PlacementStatus};
use airssys_crds::reason::Reason;
use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Api, Client};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::AbortHandle;

use crate::actor::ActorStatus;
use crate::artifact::{ArtifactSource, Fetched};
use crate::audit::{AuditKind, ComponentIdentity, ObjectRefs};
use crate::engine::AgentEngine;
use crate::error::Error;
use crate::id::ComponentId;
use crate::supervisor::{ComponentSpec, Supervisor};
use placements::{FetchState, PlacementKey, Prepared, RunSpec, Step, Wanted};
use status::{Failure, Observed, Running, WriteBook, WritePolicy};

/// How node mode runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's name (`spec.nodeName` of its Placements, the Lease's holder).
    pub node: String,
    /// The product's namespace (where the Lease lives).
    pub namespace: String,
    /// What the Lease announces.
    pub capacity: AgentCapacity,
    pub lease_duration_seconds: i32,
    pub lease_renew: Duration,
    pub writes: WritePolicy,
    /// Longest wait between fetches of a digest that failed to fetch.
    pub fetch_retry_cap: Duration,
    /// Longest wait between fetches of a digest that failed to compile (it will fail again
    /// unless the engine changed; retrying is cheap insurance against a transient cause).
    pub compile_retry_cap: Duration,
    /// How often the actors' state is sampled for status.
    pub sample_every: Duration,
    /// After a start or update, the actor is sampled this often for a while, so Ready is
    /// reported within milliseconds rather than at the next sample.
    pub fast_sample_every: Duration,
    pub fast_sample_for: Duration,
    /// Status writes in flight at once.
    pub max_writes_in_flight: usize,
    /// The address HTTP components are served on (announced on the Lease; each listens on
    /// it at its Placement's `targetPort`).
    pub advertise_address: std::net::IpAddr,
}

impl NodeConfig {
    /// The contract's timings (`airssys_crds::agent`) and the default write pacing.
    pub fn new(
        node: impl Into<String>,
        namespace: impl Into<String>,
        capacity: AgentCapacity,
    ) -> Self {
        Self {
            node: node.into(),
            namespace: namespace.into(),
            capacity,
            lease_duration_seconds: LEASE_DURATION_SECONDS,
            lease_renew: Duration::from_secs(LEASE_RENEW_SECONDS),
            writes: WritePolicy::default(),
            fetch_retry_cap: Duration::from_secs(60),
            compile_retry_cap: Duration::from_secs(300),
            sample_every: Duration::from_secs(1),
            fast_sample_every: Duration::from_millis(10),
            fast_sample_for: Duration::from_secs(2),
            max_writes_in_flight: 16,
            advertise_address: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        }
    }
}

/// Runs node mode until `shutdown` resolves: keeps the Lease, watches this node's
/// Placements and converges `supervisor` onto them, writes their status. Errors of the API
/// server, the artifact source or a component are retried and reported, never returned.
/// On shutdown: stops renewing and releases the Lease, stops every component it started, and
/// marks their Placements as not ready (best effort, a few seconds at most).
pub async fn run<S: ArtifactSource>(
    client: Client,
    config: NodeConfig,
    supervisor: Arc<Supervisor>,
    source: Arc<S>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    tracing::info!(node = %config.node, namespace = %config.namespace, capacity = ?config.capacity, "node mode starting");
    let leases: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    let (stop_lease, lease_stopped) = tokio::sync::oneshot::channel::<()>();
    let lease_task = tokio::spawn(lease::keep(
        leases.clone(),
        lease::LeaseConfig {
            node: config.node.clone(),
            namespace: config.namespace.clone(),
            capacity: config.capacity,
            address: config.advertise_address,
            duration_seconds: config.lease_duration_seconds,
            renew_every: config.lease_renew,
        },
        lease_stopped.map(drop),
    ));

    let mut node = Node::new(client, config, supervisor, source);
    node.run(shutdown).await;

    tracing::info!(node = %node.config.node, "node mode stopping: releasing the Lease, stopping components");
    let _ = stop_lease.send(());
    if let Err(e) = lease_task.await {
        tracing::warn!(error = %e, "Lease task ended abnormally");
    }
    match tokio::time::timeout(
        Duration::from_secs(5),
        lease::release(&leases, &node.config.node),
    )
    .await
    {
        Ok(Ok(())) => tracing::info!(node = %node.config.node, "Lease released"),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot release the Lease; it expires on its own"),
        Err(_) => tracing::warn!("releasing the Lease timed out; it expires on its own"),
    }
    node.stop_all().await;
    Ok(())
}

/// The bytes of Placement digests some component holds: a second Placement of the same digest
/// (500 components of one image) takes them without fetching again. Weak, so bytes no
/// component runs are freed.
type Artifacts = Arc<StdMutex<HashMap<Digest, (Weak<[u8]>, Digest)>>>;

/// What woke the loop.
enum Wake {
    Watch(Watched),
    Done(Done),
    Timer,
}

/// A watch event, as far as the loop cares (the store holds the objects).
enum Watched {
    Changed { init_done: bool },
    Failed(watcher::Error),
    Ended,
}

impl Watched {
    fn of(event: Option<Result<watcher::Event<Placement>, watcher::Error>>) -> Self {
        match event {
            Some(Ok(e)) => Self::Changed {
                init_done: matches!(e, watcher::Event::InitDone),
            },
            Some(Err(e)) => Self::Failed(e),
            None => Self::Ended,
        }
    }
}

/// What the background tasks report to the loop.
enum Done {
    Fetched {
        id: ComponentId,
        digest: Digest,
        result: Result<Fetched, Failure>,
    },
    Wrote {
        key: PlacementKey,
        status: Box<PlacementStatus>,
        at: Instant,
        result: Result<(), WriteError>,
    },
}

enum WriteError {
    /// The Placement is gone; nothing to write.
    Gone,
    Other(String),
}

/// What runs for a component.
struct Applied {
    run: RunSpec,
    fetched: Fetched,
    status: Arc<ActorStatus>,
    /// Who its Events are about (the component, its Placement, the digest it runs).
    identity: Arc<ComponentIdentity>,
}

/// Records why a running component stops (`Revoked`: the operator revoked its Placement;
/// `Stopped`: its Placement was scaled in or moved, or the agent stops) and tells its
/// instances to stop; the returned future waits until they have.
async fn retire(
    supervisor: &Supervisor,
    id: &ComponentId,
    applied: &Applied,
    why: AuditKind,
) -> Option<impl Future<Output = ()> + Send + 'static> {
    supervisor.audit().component_event(&applied.identity, why);
    match supervisor.begin_remove(id).await {
        Ok(stopped) => Some(stopped),
        Err(e) => {
            tracing::warn!(component = %id, error = %e, "cannot stop component");
            None
        }
    }
}

/// A fetch (and compile) that failed, and when to try again.
struct FetchFailure {
    digest: Digest,
    failure: Failure,
    failures: u32,
    retry_at: Instant,
}

/// One component of this node: what is wanted, what runs, where its bytes are.
#[derive(Default)]
struct Slot {
    wanted: Option<Wanted>,
    /// `prepare` of `wanted` (an `Err` is the InvalidSpec message).
    prepared: Option<Result<Prepared, String>>,
    applied: Option<Applied>,
    fetch: Option<(Digest, AbortHandle)>,
    failed: Option<FetchFailure>,
    /// An instance of the actor has run (see `status::is_ready`).
    has_run: bool,
    /// Sample fast until then (after a start or update).
    watch_until: Option<Instant>,
    /// The operator marked its Placement revoked: its stop is recorded as `Revoked`, not
    /// `Stopped` (scale-in, move).
    revoked: bool,
}

impl Slot {
    fn wanted_run(&self) -> Option<RunSpec> {
        match (&self.wanted, &self.prepared) {
            (Some(w), Some(Ok(_))) => Some(RunSpec::of(&w.spec)),
            _ => None,
        }
    }

    fn cancel_fetch(&mut self) {
        if let Some((_, handle)) = self.fetch.take() {
            handle.abort();
        }
    }
}

/// Status bookkeeping for one Placement of this node.
struct Book {
    generation: Option<i64>,
    /// The status as last computed (the `previous` of the next computation).
    current: Option<PlacementStatus>,
    write: WriteBook,
    due: Option<Instant>,
    in_flight: bool,
    retry_at: Option<Instant>,
    seen: bool,
}

struct Node<S> {
    client: Client,
    config: NodeConfig,
    supervisor: Arc<Supervisor>,
    engine: AgentEngine,
    source: Arc<S>,
    pool_instances: u32,
    slots: BTreeMap<ComponentId, Slot>,
    books: BTreeMap<PlacementKey, Book>,
    /// Placements this node does not run (a newer one for the same component does), with why.
    ignored: BTreeMap<PlacementKey, String>,
    artifacts: Artifacts,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    write_slots: Arc<Semaphore>,
    next_sample: Instant,
}

impl<S: ArtifactSource> Node<S> {
    fn new(
        client: Client,
        config: NodeConfig,
        supervisor: Arc<Supervisor>,
        source: Arc<S>,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let engine = supervisor.engine().clone();
        let pool_instances = engine.config().total_component_instances;
        let write_slots = Arc::new(Semaphore::new(config.max_writes_in_flight.max(1)));
        Self {
            client,
            config,
            supervisor,
            engine,
            source,
            pool_instances,
            slots: BTreeMap::new(),
            books: BTreeMap::new(),
            ignored: BTreeMap::new(),
            artifacts: Arc::default(),
            done_tx,
            done_rx,
            write_slots,
            next_sample: Instant::now(),
        }
    }

    /// The loop: watch events, background results and timers, until `shutdown`.
    async fn run(&mut self, shutdown: impl Future<Output = ()>) {
        let api: Api<Placement> = Api::all(self.client.clone());
        let selector = format!("spec.nodeName={}", self.config.node);
        let (reader, writer) = reflector::store::<Placement>();
        let events = watcher(api, watcher::Config::default().fields(&selector))
            .default_backoff()
            .reflect(writer);
        tokio::pin!(events);
        tokio::pin!(shutdown);
        let mut synced = false;
        loop {
            let deadline = self.next_deadline();
            let wake = tokio::select! {
                biased;
                () = &mut shutdown => return,
                event = events.next() => Wake::Watch(Watched::of(event)),
                Some(done) = self.done_rx.recv() => Wake::Done(done),
                () = tokio::time::sleep_until(deadline.into()) => Wake::Timer,
            };
            let mut changed = false;
            match wake {
                Wake::Watch(mut watched) => {
                    // Take what is already there in one go: one convergence per burst.
                    for _ in 0..1024 {
                        match watched {
                            Watched::Changed { init_done } => {
                                synced |= init_done;
                                changed = true;
                            }
                            Watched::Failed(e) => {
                                tracing::warn!(node = %self.config.node, error = %e, "Placement watch failed; retrying with backoff");
                            }
                            Watched::Ended => {
                                tracing::error!("the Placement watch ended; stopping node mode");
                                return;
                            }
                        }
                        match events.next().now_or_never() {
                            Some(next) => watched = Watched::of(next),
                            None => break,
                        }
                    }
                }
                Wake::Done(done) => {
                    self.on_done(done).await;
                    changed = true;
                }
                Wake::Timer => {}
            }
            if !synced {
                continue;
            }
            let now = Instant::now();
            if changed {
                let state = reader.state();
                self.select(state.iter().map(|p| &**p));
            }
            if changed || self.retry_due(now) {
                self.converge().await;
            }
            let full = changed || now >= self.next_sample;
            if now >= self.next_sample {
                self.next_sample = now + self.config.sample_every;
            }
            self.refresh(full, now);
            self.flush_writes(Instant::now());
        }
    }

    fn retry_due(&self, now: Instant) -> bool {
        self.slots
            .values()
            .any(|s| s.failed.as_ref().is_some_and(|f| f.retry_at <= now))
    }

    /// The earliest time the loop has something to do without an event.
    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let mut next = self.next_sample;
        if self
            .slots
            .values()
            .any(|s| s.watch_until.is_some_and(|t| t > now))
        {
            next = next.min(now + self.config.fast_sample_every);
        }
        for slot in self.slots.values() {
            if let Some(f) = &slot.failed {
                next = next.min(f.retry_at);
            }
        }
        for book in self.books.values() {
            if let (false, Some(due)) = (book.in_flight, book.due) {
                next = next.min(book.retry_at.map_or(due, |r| r.max(due)));
            }
        }
        next
    }

    /// Takes in the watcher's Placements: what each component wants, which are ignored.
    fn select<'a>(&mut self, placements: impl Iterator<Item = &'a Placement>) {
        let all: Vec<&Placement> = placements.collect();
        let selection = placements::select(&self.config.node, all.iter().copied());
        for book in self.books.values_mut() {
            book.seen = false;
        }
        // Books start from the status on the API server (keeps lastTransitionTime across an
        // agent restart; an unchanged status is not written again).
        for p in &all {
            let (Some(namespace), Some(name)) = (&p.metadata.namespace, &p.metadata.name) else {
                continue;
            };
            if p.spec.node_name != self.config.node {
                continue;
            }
            let key = PlacementKey {
                namespace: namespace.clone(),
                name: name.clone(),
            };
            let book = self.books.entry(key).or_insert_with(|| {
                let mut write = WriteBook::new(Instant::now());
                if let Some(status) = &p.status {
                    write.wrote(status.clone(), Instant::now(), &self.config.writes);
                }
                Book {
                    generation: p.metadata.generation,
                    current: p.status.clone(),
                    write,
                    due: None,
                    in_flight: false,
                    retry_at: None,
                    seen: true,
                }
            });
            book.seen = p.metadata.deletion_timestamp.is_none();
            book.generation = p.metadata.generation;
        }
        self.books.retain(|_, b| b.seen);

        self.ignored = selection
            .ignored
            .into_iter()
            .map(|i| (i.key, i.reason))
            .collect();
        let wanted = selection.wanted;
        for (id, slot) in &mut self.slots {
            if !wanted.contains_key(id) {
                slot.wanted = None;
                slot.prepared = None;
                // Kept once seen: the deletion that follows the mark must not clear it.
                slot.revoked |= selection.revoked.contains(id);
            }
        }
        let pool = self.pool_instances;
        for (id, new) in wanted {
            let slot = self.slots.entry(id.clone()).or_default();
            let same =
                slot.prepared.is_some() && slot.wanted.as_ref().is_some_and(|w| w.spec == new.spec);
            if !same {
                slot.prepared = Some(placements::prepare(
                    &id,
                    &new.spec,
                    pool,
                    self.config.advertise_address,
                ));
            }
            slot.wanted = Some(new);
            slot.revoked = false;
        }
    }

    /// Carries out each component's next step.
    async fn converge(&mut self) {
        let now = Instant::now();
        let ids: Vec<ComponentId> = self.slots.keys().cloned().collect();
        for id in ids {
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            let wanted = slot.wanted_run();
            let step = placements::decide(
                wanted.as_ref(),
                slot.applied.as_ref().map(|a| &a.run),
                FetchState {
                    in_flight: slot.fetch.as_ref().map(|(d, _)| d),
                    failed: slot.failed.as_ref().map(|f| (&f.digest, f.retry_at <= now)),
                },
            );
            match step {
                Step::Keep | Step::Wait => {
                    let stale = slot
                        .fetch
                        .as_ref()
                        .is_some_and(|(d, _)| wanted.as_ref().is_none_or(|w| &w.digest != d));
                    if stale && step == Step::Keep {
                        slot.cancel_fetch();
                    }
                }
                Step::Stop => {
                    slot.cancel_fetch();
                    slot.failed = None;
                    if let Some(applied) = slot.applied.take() {
                        // The operator took the Placement away: revoked, or moved or scaled in.
                        let why = if slot.revoked {
                            AuditKind::Revoked
                        } else {
                            AuditKind::Stopped
                        };
                        self.stop(&id, &applied, why).await;
                    }
                }
                Step::Reconfigure => {
                    if let Some(fetched) = slot.applied.as_ref().map(|a| a.fetched.clone()) {
                        self.apply(&id, fetched).await;
                    }
                }
                Step::Fetch => self.spawn_fetch(&id),
            }
            let idle = self.slots.get(&id).is_some_and(|slot| {
                slot.wanted.is_none() && slot.applied.is_none() && slot.fetch.is_none()
            });
            if idle {
                self.slots.remove(&id);
            }
        }
    }

    fn spawn_fetch(&mut self, id: &ComponentId) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        let Some(spec) = slot.wanted.as_ref().map(|w| w.spec.clone()) else {
            return;
        };
        slot.cancel_fetch();
        let digest = spec.digest.clone();
        let (source, engine, artifacts, tx) = (
            self.source.clone(),
            self.engine.clone(),
            self.artifacts.clone(),
            self.done_tx.clone(),
        );
        let task_id = id.clone();
        tracing::info!(component = %id, %digest, "fetching");
        let task = tokio::spawn(async move {
            let result = fetch_and_compile(&*source, &engine, &artifacts, &spec).await;
            let _ = tx.send(Done::Fetched {
                id: task_id,
                digest: spec.digest,
                result,
            });
        });
        slot.fetch = Some((digest, task.abort_handle()));
    }

    async fn on_done(&mut self, done: Done) {
        match done {
            Done::Fetched { id, digest, result } => {
                let Some(slot) = self.slots.get_mut(&id) else {
                    return;
                };
                if slot.fetch.as_ref().is_none_or(|(d, _)| *d != digest) {
                    return; // cancelled meanwhile
                }
                slot.fetch = None;
                match result {
                    Ok(fetched) => {
                        let still_wanted = slot.wanted_run().is_some_and(|w| w.digest == digest);
                        if still_wanted {
                            self.apply(&id, fetched).await;
                        }
                    }
                    Err(failure) => self.failed(&id, digest, failure),
                }
            }
            Done::Wrote {
                key,
                status,
                at,
                result,
            } => {
                let Some(book) = self.books.get_mut(&key) else {
                    return;
                };
                book.in_flight = false;
                match result {
                    Ok(()) => {
                        book.write.wrote(*status, at, &self.config.writes);
                        book.retry_at = None;
                    }
                    Err(WriteError::Gone) => {}
                    Err(WriteError::Other(e)) => {
                        tracing::warn!(placement = %key, error = %e, "cannot write Placement status; retrying");
                        book.retry_at = Some(Instant::now() + Duration::from_secs(2));
                    }
                }
            }
        }
    }

    /// Records a failed fetch or compile of `digest` and when to retry.
    fn failed(&mut self, id: &ComponentId, digest: Digest, failure: Failure) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        let failures = match &slot.failed {
            Some(f) if f.digest == digest => f.failures.saturating_add(1),
            _ => 1,
        };
        let cap = if failure.reason == Reason::CompileFailed {
            self.config.compile_retry_cap
        } else {
            self.config.fetch_retry_cap
        };
        let wait = placements::retry_delay(failures, cap);
        tracing::warn!(component = %id, %digest, reason = %failure.reason, error = %failure.message, failures, retry_in = ?wait, "component not started");
        slot.failed = Some(FetchFailure {
            digest,
            failure,
            failures,
            retry_at: Instant::now() + wait,
        });
    }

    /// Starts the component, or moves it in place to the wanted spec with `fetched` (already
    /// verified and compiled).
    async fn apply(&mut self, id: &ComponentId, fetched: Fetched) {
        let Some(slot) = self.slots.get(id) else {
            return;
        };
        let (Some(wanted), Some(Ok(prepared))) = (&slot.wanted, &slot.prepared) else {
            return;
        };
        let run = RunSpec::of(&wanted.spec);
        let dev_mode = wanted.spec.dev_mode;
        let refs = ObjectRefs {
            component_uid: wanted.spec.component.uid.clone(),
            placement: wanted.key.name.clone(),
            placement_uid: None,
        };
        let identity =
            ComponentIdentity::with_refs(id, fetched.wasm_digest.as_str(), Some(refs.clone()));
        let spec = ComponentSpec {
            id: id.clone(),
            digest: fetched.wasm_digest.clone(),
            wasm: fetched.wasm.clone(),
            grant: prepared.grant.clone(),
            quotas: prepared.quotas.clone(),
            env: prepared.env.clone(),
            k8s: Some(refs),
            http: prepared.http.clone(),
        };
        let running = slot.applied.as_ref().map(|a| a.status.clone());
        let result = match &running {
            Some(_) => self.supervisor.update(spec).await,
            None => self.supervisor.add(spec).await,
        };
        let status = match (result, running) {
            (Ok(_), Some(status)) => Ok(status),
            (Ok(_), None) => self.supervisor.status(id).await.ok_or_else(|| {
                Error::Internal(format!("component {id} started but has no status"))
            }),
            (Err(e), _) => Err(e),
        };
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        match status {
            Ok(status) => {
                if slot.applied.is_none() {
                    slot.has_run = false;
                }
                if dev_mode {
                    tracing::warn!(component = %id, digest = %run.digest, node = %self.config.node, reason = %Reason::DevModeBypass, "dev-mode component started: it runs only because dev mode is on for its namespace");
                    self.supervisor
                        .audit()
                        .component_event(&identity, AuditKind::DevModeBypass);
                }
                tracing::info!(component = %id, digest = %run.digest, instances = run.instances, "component runs its Placement");
                slot.applied = Some(Applied {
                    run,
                    fetched,
                    status,
                    identity,
                });
                slot.failed = None;
                slot.watch_until = Some(Instant::now() + self.config.fast_sample_for);
            }
            Err(e) => {
                let reason = match e {
                    Error::DigestMismatch { .. } | Error::Fetch { .. } => Reason::FetchFailed,
                    Error::StartFailed { .. } => Reason::StartFailed,
                    Error::World(_) => Reason::InvalidSpec,
                    _ => Reason::CompileFailed,
                };
                let digest = run.digest.clone();
                self.failed(
                    id,
                    digest.clone(),
                    Failure {
                        reason,
                        message: format!("cannot start {digest}: {e}"),
                    },
                );
            }
        }
    }

    /// Stops a component; its instances finish their current message in the background.
    async fn stop(&mut self, id: &ComponentId, applied: &Applied, why: AuditKind) {
        if let Some(stopped) = retire(&self.supervisor, id, applied, why).await {
            tokio::spawn(stopped);
            tracing::info!(component = %id, reason = ?why, "component stopped: no Placement wants it");
        }
    }

    /// Recomputes the statuses: all of them (`full`), or those of components sampled fast.
    fn refresh(&mut self, full: bool, now: Instant) {
        let mut fresh: Vec<(PlacementKey, PlacementStatus)> = Vec::new();
        for slot in self.slots.values_mut() {
            let watched = slot.watch_until.is_some_and(|t| t > now);
            if slot.watch_until.is_some_and(|t| t <= now) {
                slot.watch_until = None;
            }
            if !full && !watched {
                continue;
            }
            let Some(wanted) = &slot.wanted else { continue };
            let running = slot.applied.as_ref().map(|a| {
                let state = a.status.state();
                let handled = a.status.handled.load(std::sync::atomic::Ordering::Relaxed)
                    + a.status.failed.load(std::sync::atomic::Ordering::Relaxed);
                slot.has_run |= state == crate::actor::ActorState::Running || handled > 0;
                let crash_looping = a.status.is_crash_looping();
                Running {
                    digest: a.run.digest.clone(),
                    instances: a.run.instances,
                    current: slot.prepared.as_ref().is_some_and(Result::is_ok)
                        && a.run.matches(&wanted.spec),
                    ready: status::is_ready(state, slot.has_run, crash_looping),
                    crash_looping,
                    restarts: a.status.restarts.load(std::sync::atomic::Ordering::Relaxed),
                }
            });
            let invalid;
            let failure = match &slot.prepared {
                Some(Err(message)) => {
                    invalid = Failure {
                        reason: Reason::InvalidSpec,
                        message: format!("the Placement cannot run: {message}"),
                    };
                    Some(&invalid)
                }
                _ => slot
                    .failed
                    .as_ref()
                    .filter(|f| f.digest == wanted.spec.digest)
                    .map(|f| &f.failure),
            };
            let notes = match &slot.prepared {
                Some(Ok(p)) => p.notes.as_slice(),
                _ => &[],
            };
            let previous = self.books.get(&wanted.key).and_then(|b| b.current.as_ref());
            let computed = status::placement_status(
                Observed {
                    generation: wanted.generation,
                    wanted: &wanted.spec.digest,
                    running: running.as_ref(),
                    failure,
                    notes,
                },
                previous,
            );
            fresh.push((wanted.key.clone(), computed));
        }
        if full {
            for (key, why) in &self.ignored {
                let Some(book) = self.books.get(key) else {
                    continue;
                };
                fresh.push((
                    key.clone(),
                    status::ignored_status(book.generation, why, book.current.as_ref()),
                ));
            }
        }
        for (key, computed) in fresh {
            if let Some(book) = self.books.get_mut(&key) {
                book.due = Some(status::when_to_write(
                    &book.write,
                    &computed,
                    now,
                    &self.config.writes,
                ));
                book.current = Some(computed);
            }
        }
    }

    /// Starts the status writes that are due.
    fn flush_writes(&mut self, now: Instant) {
        for (key, book) in &mut self.books {
            if book.in_flight || book.retry_at.is_some_and(|r| r > now) {
                continue;
            }
            let (Some(due), Some(current)) = (book.due, &book.current) else {
                continue;
            };
            if due > now {
                continue;
            }
            book.in_flight = true;
            book.due = None;
            let (client, key, status, tx, slots) = (
                self.client.clone(),
                key.clone(),
                current.clone(),
                self.done_tx.clone(),
                self.write_slots.clone(),
            );
            tokio::spawn(async move {
                let _permit = slots.acquire_owned().await;
                let result = write_status(client, &key, &status).await;
                let _ = tx.send(Done::Wrote {
                    key,
                    status: Box::new(status),
                    at: Instant::now(),
                    result,
                });
            });
        }
    }

    /// Stops every component this loop started and marks their Placements not ready.
    async fn stop_all(&mut self) {
        let mut waits = Vec::new();
        for (id, slot) in &mut self.slots {
            slot.cancel_fetch();
            if let Some(applied) = slot.applied.take()
                && let Some(stopped) =
                    retire(&self.supervisor, id, &applied, AuditKind::Stopped).await
            {
                waits.push(stopped);
            }
        }
        futures::future::join_all(waits).await;
        let writes = self.slots.values().filter_map(|slot| {
            let wanted = slot.wanted.as_ref()?;
            let book = self.books.get(&wanted.key)?;
            let last = book.current.as_ref()?;
            let status = status::stopped_status(&self.config.node, last, wanted.generation);
            let (client, key) = (self.client.clone(), wanted.key.clone());
            Some(async move {
                let _ = write_status(client, &key, &status).await;
            })
        });
        let all = futures::future::join_all(writes);
        if tokio::time::timeout(Duration::from_secs(3), all)
            .await
            .is_err()
        {
            tracing::warn!("marking Placements not ready timed out");
        }
    }
}

/// Fetches (or reuses) the bytes a Placement pins and compiles them, in the background. The
/// engine keeps the compiled component, so the supervisor's start or update that follows
/// only swaps (the running revision is untouched until then).
async fn fetch_and_compile<S: ArtifactSource>(
    source: &S,
    engine: &AgentEngine,
    artifacts: &Artifacts,
    spec: &PlacementSpec,
) -> Result<Fetched, Failure> {
    let held = artifacts
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&spec.digest)
        .and_then(|(wasm, wasm_digest)| {
            wasm.upgrade().map(|wasm| Fetched {
                wasm,
                wasm_digest: wasm_digest.clone(),
            })
        });
    let fetched = match held {
        Some(f) => f,
        None => {
            let f = source.fetch(spec).await.map_err(|e| Failure {
                reason: Reason::FetchFailed,
                message: format!("cannot fetch {}: {e}", spec.digest),
            })?;
            let mut held = artifacts.lock().unwrap_or_else(PoisonError::into_inner);
            held.retain(|_, (wasm, _)| wasm.strong_count() > 0);
            held.insert(
                spec.digest.clone(),
                (Arc::downgrade(&f.wasm), f.wasm_digest.clone()),
            );
            f
        }
    };
    match engine
        .prepare_world(&fetched.wasm_digest, &fetched.wasm, spec.http.is_some())
        .await
    {
        Ok(_) => Ok(fetched),
        Err(e @ Error::DigestMismatch { .. }) => Err(Failure {
            reason: Reason::FetchFailed,
            message: format!("cannot fetch {}: {e}", spec.digest),
        }),
        // The bytes are fine; the spec asks for a world they do not export.
        Err(e @ Error::World(_)) => Err(Failure {
            reason: Reason::InvalidSpec,
            message: format!("cannot run {}: {e}", spec.digest),
        }),
        Err(e) => Err(Failure {
            reason: Reason::CompileFailed,
            message: format!("cannot compile {}: {e}", spec.digest),
        }),
    }
}

/// Writes a Placement's status by server-side apply on the status subresource.
async fn write_status(
    client: Client,
    key: &PlacementKey,
    status: &PlacementStatus,
) -> Result<(), WriteError> {
    let api: Api<Placement> = Api::namespaced(client, &key.namespace);
    let patch = serde_json::json!({
        "apiVersion": format!("{}/{}", airssys_crds::GROUP, airssys_crds::VERSION),
        "kind": "Placement",
        "status": status,
    });
    match api
        .patch_status(
            &key.name,
            &PatchParams::apply(AGENT_FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(WriteError::Gone),
        Err(e) => Err(WriteError::Other(e.to_string())),
    }
}
