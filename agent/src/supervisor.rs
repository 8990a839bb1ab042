//! Supervision: restart with exponential backoff, crash-loop detection, and the set of
//! actors running on this node (add, update to a new digest, remove while running).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use airssys_crds::artifact::Digest;
use airssys_crds::capability::CapabilitySet;
use tokio::sync::{Mutex, mpsc, watch};

use crate::actor::{ActorStatus, ComponentActor, Control};
use crate::audit::{AuditSink, ComponentIdentity, ObjectRefs};
use crate::broker::{Broker, BrokerError, Mailbox};
use crate::context::ComponentContext;
use crate::engine::{AgentEngine, CompileSource, Prepared, Runnable};
use crate::error::Error;
use crate::grant::GrantTable;
use crate::http_server::{HttpRevision, HttpServer, HttpSettings};
use crate::id::ComponentId;
use crate::instance::{LiveInstance, Revision, stop_instance};
use crate::limits::{Quotas, RateLimiter};
use crate::restart::RestartPolicy;
use crate::storage::KvStore;

/// What the agent is asked to run: one component revision.
#[derive(Debug, Clone)]
pub struct ComponentSpec {
    pub id: ComponentId,
    /// `sha256:<hex>` the bytes must hash to.
    pub digest: Digest,
    pub wasm: Arc<[u8]>,
    /// The grant: request ∩ approval, already intersected.
    pub grant: CapabilitySet,
    pub quotas: Quotas,
    /// Values of the env keys the grant exposes.
    pub env: Vec<(String, String)>,
    /// The Kubernetes objects its audit Events name (node mode); `None`: no Events.
    pub k8s: Option<ObjectRefs>,
    /// Serve it over HTTP (it must export `wasi:http/incoming-handler`); `None`: an actor
    /// (it must export the airssys lifecycle).
    pub http: Option<HttpSettings>,
}

struct ActorEntry {
    status: Arc<ActorStatus>,
    digest: Digest,
    running: Running,
}

/// How a component runs: an actor draining its mailbox, or an HTTP server.
enum Running {
    Actor {
        control: watch::Sender<Control>,
        task: tokio::task::JoinHandle<()>,
        mailbox: Mailbox,
    },
    Http(HttpServer),
}

/// The node's running components.
pub struct Supervisor {
    engine: AgentEngine,
    broker: Broker,
    storage: Arc<KvStore>,
    audit: AuditSink,
    fs_root: PathBuf,
    policy: RestartPolicy,
    actors: Mutex<HashMap<ComponentId, ActorEntry>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("engine", &self.engine)
            .field("fs_root", &self.fs_root)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// `fs_root` holds each component's granted directories, side by side in
    /// `<fs_root>/<ns>/<name>/` (`/data/inbox` is `data%2Finbox`, see `host::filesystem`).
    pub fn new(
        engine: AgentEngine,
        storage: Arc<KvStore>,
        audit: AuditSink,
        fs_root: impl Into<PathBuf>,
        policy: RestartPolicy,
    ) -> Self {
        Self {
            engine,
            broker: Broker::new(),
            storage,
            audit,
            fs_root: fs_root.into(),
            policy,
            actors: Mutex::new(HashMap::new()),
        }
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    pub fn engine(&self) -> &AgentEngine {
        &self.engine
    }

    /// Where the node's audit records go (node mode records Started/Stopped/Revoked here).
    pub fn audit(&self) -> &AuditSink {
        &self.audit
    }

    pub fn storage(&self) -> &Arc<KvStore> {
        &self.storage
    }

    /// The host directory backing `guest_path` for `id` (created on start).
    pub fn host_dir(&self, id: &ComponentId, guest_path: &str) -> PathBuf {
        crate::host::filesystem::host_dir(&self.component_fs_root(id), guest_path)
    }

    fn component_fs_root(&self, id: &ComponentId) -> PathBuf {
        self.fs_root.join(&id.namespace).join(&id.name)
    }

    fn context(&self, spec: &ComponentSpec, mailbox: Mailbox) -> Arc<ComponentContext> {
        Arc::new(ComponentContext {
            id: spec.id.clone(),
            component_key: spec.id.to_string(),
            digest: spec.digest.clone(),
            grants: mailbox.grants.clone(),
            quotas: spec.quotas.clone(),
            broker: self.broker.clone(),
            storage: self.storage.clone(),
            audit: self.audit.clone(),
            mailbox,
            fs_root: self.component_fs_root(&spec.id),
            env: spec.env.clone(),
            epoch_tick: self.engine.config().epoch_tick,
            cpu_ticks: spec.quotas.cpu_ticks(self.engine.config().epoch_tick),
            rate: std::sync::Mutex::new(RateLimiter::new(spec.quotas.messages_per_second)),
            instance: AtomicU64::new(0),
            identity: ComponentIdentity::with_refs(
                &spec.id,
                spec.digest.as_str(),
                spec.k8s.clone(),
            ),
        })
    }

    /// Compiles (or loads) `spec` and builds the context its instances run in, without
    /// starting an actor: for benches and tools that drive [`crate::instance::LiveInstance`] directly.
    /// Messages to the returned revision's own mailbox go to `mailbox`.
    pub async fn revision(
        &self,
        spec: &ComponentSpec,
    ) -> Result<(Revision, mpsc::Receiver<crate::broker::Envelope>), Error> {
        let (pre, _) = self.engine.prepare(&spec.digest, &spec.wasm).await?;
        let grants = Arc::new(GrantTable::compile(&spec.grant));
        let capacity = usize::try_from(spec.quotas.mailbox_capacity.max(1)).unwrap_or(1);
        let (tx, rx) = mpsc::channel(capacity);
        let ctx = self.context(spec, Mailbox { tx, grants });
        self.storage
            .set_quota(&spec.id.to_string(), spec.quotas.storage_bytes);
        Ok((Revision::new(ctx, pre), rx))
    }

    /// Starts a component that is not running yet: as an actor, or (with `spec.http`) as an
    /// HTTP server, as its exports allow.
    pub async fn add(&self, spec: ComponentSpec) -> Result<CompileSource, Error> {
        let mut actors = self.actors.lock().await;
        if actors.contains_key(&spec.id) {
            return Err(Error::AlreadyRunning(spec.id.to_string()));
        }
        let (runnable, source) = self
            .engine
            .prepare_world(&spec.digest, &spec.wasm, spec.http.is_some())
            .await?;
        let entry = self.start(&spec, runnable).await?;
        tracing::info!(component = %spec.id, digest = %spec.digest, ?source, "component added");
        actors.insert(spec.id.clone(), entry);
        Ok(source)
    }

    /// Starts `spec` as what `runnable` is.
    async fn start(&self, spec: &ComponentSpec, runnable: Runnable) -> Result<ActorEntry, Error> {
        let grants = Arc::new(GrantTable::compile(&spec.grant));
        let status = Arc::new(ActorStatus::default());
        match (runnable, &spec.http) {
            (Runnable::Http(pre), Some(settings)) => {
                let ctx = self.context(spec, Self::no_mailbox(grants));
                self.storage
                    .set_quota(&spec.id.to_string(), spec.quotas.storage_bytes);
                let revision = HttpRevision::new(ctx, pre, settings.clone());
                let server =
                    HttpServer::start(self.engine.clone(), revision, status.clone()).await?;
                Ok(ActorEntry {
                    status,
                    digest: spec.digest.clone(),
                    running: Running::Http(server),
                })
            }
            (Runnable::Component(pre), _) => {
                let capacity = usize::try_from(spec.quotas.mailbox_capacity.max(1)).unwrap_or(1);
                let (tx, rx) = mpsc::channel(capacity);
                let mailbox = Mailbox { tx, grants };
                let ctx = self.context(spec, mailbox.clone());
                self.storage
                    .set_quota(&spec.id.to_string(), spec.quotas.storage_bytes);
                let revision = Revision::new(ctx, pre);
                let (control_tx, control_rx) = watch::channel(Control::Run(revision.clone()));
                let actor = ComponentActor::new(
                    revision,
                    self.engine.clone(),
                    rx,
                    control_rx,
                    status.clone(),
                    self.policy,
                );
                self.broker.register(&spec.id, mailbox.clone());
                let task = tokio::spawn(actor.run());
                Ok(ActorEntry {
                    status,
                    digest: spec.digest.clone(),
                    running: Running::Actor {
                        control: control_tx,
                        task,
                        mailbox,
                    },
                })
            }
            (Runnable::Http(_), None) => Err(Error::Internal(
                "an HTTP component selected without spec.http".into(),
            )),
        }
    }

    /// An HTTP component's context has no mailbox anyone can reach: it is not registered
    /// with the broker, and what is sent to this one is dropped.
    fn no_mailbox(grants: Arc<GrantTable>) -> Mailbox {
        let (tx, _) = mpsc::channel(1);
        Mailbox { tx, grants }
    }

    /// Moves a running component to a new revision (digest, grant, quotas).
    ///
    /// An actor moves start before stop: one instance of the new revision is started first
    /// (its `init` must pass) while the old revision keeps serving; only then does the
    /// component move to it. If that start fails, nothing changes (the old revision, its grant
    /// and its subscriptions stay) and the error says why. Queued messages are kept and handled
    /// by the new revision; the mailbox capacity stays as it was. An HTTP component's new
    /// requests run the new revision while those in flight finish. A component that changes
    /// between actor and HTTP is stopped and started again.
    pub async fn update(&self, spec: ComponentSpec) -> Result<CompileSource, Error> {
        let (runnable, source) = self
            .engine
            .prepare_world(&spec.digest, &spec.wasm, spec.http.is_some())
            .await?;
        let mut actors = self.actors.lock().await;
        let entry = actors
            .get_mut(&spec.id)
            .ok_or_else(|| Error::UnknownComponent(spec.id.to_string()))?;
        let grants = Arc::new(GrantTable::compile(&spec.grant));
        match (&mut entry.running, runnable, &spec.http) {
            (Running::Http(server), Runnable::Http(pre), Some(settings)) => {
                let ctx = self.context(&spec, Self::no_mailbox(grants));
                self.storage
                    .set_quota(&spec.id.to_string(), spec.quotas.storage_bytes);
                server
                    .update(HttpRevision::new(ctx, pre, settings.clone()))
                    .await?;
                entry.digest = spec.digest.clone();
            }
            (Running::Actor { mailbox, .. }, Runnable::Component(pre), _) => {
                let old_mailbox = mailbox.clone();
                let status = entry.status.clone();
                drop(actors);
                self.update_actor(&spec, pre, grants, old_mailbox, status)
                    .await?;
                tracing::info!(component = %spec.id, digest = %spec.digest, ?source, "component updated");
                return Ok(source);
            }
            (_, runnable, _) => {
                // Actor ↔ HTTP: stop the old one (in the background), start the new one.
                let Some(old) = actors.remove(&spec.id) else {
                    return Err(Error::UnknownComponent(spec.id.to_string()));
                };
                tokio::spawn(self.retire(&spec.id, old));
                let entry = self.start(&spec, runnable).await?;
                actors.insert(spec.id.clone(), entry);
            }
        }
        self.engine.retain(&digests_in_use(&actors));
        tracing::info!(component = %spec.id, digest = %spec.digest, ?source, "component updated");
        Ok(source)
    }

    /// The actor half of [`Supervisor::update`]: start one instance of the new revision, then
    /// hand it over. Runs without the supervisor's lock while `init` runs (it may take up to
    /// the component's timeout, and other components must not wait on it).
    async fn update_actor(
        &self,
        spec: &ComponentSpec,
        pre: Prepared,
        grants: Arc<GrantTable>,
        old_mailbox: Mailbox,
        status: Arc<ActorStatus>,
    ) -> Result<(), Error> {
        let new_mailbox = Mailbox {
            tx: old_mailbox.tx.clone(),
            grants,
        };
        let revision = Revision::new(self.context(spec, new_mailbox.clone()), pre);
        // Subscriptions belong to a revision: the new one's `init` subscribes afresh. (A
        // restart of the same revision keeps them; its `init` subscribes again, which is
        // idempotent, and no publish is missed meanwhile.)
        let saved = self.broker.take_subscriptions(&spec.id);
        let started = match LiveInstance::start(&revision, &self.engine).await {
            Ok(started) => started,
            Err(kill) => {
                self.broker.restore_subscriptions(saved, &old_mailbox);
                tracing::warn!(component = %spec.id, digest = %spec.digest, reason = %kill, "new revision did not start; the old one keeps running");
                return Err(Error::StartFailed {
                    component: spec.id.to_string(),
                    digest: spec.digest.to_string(),
                    reason: kill.to_string(),
                });
            }
        };
        let mut actors = self.actors.lock().await;
        let current = actors
            .get_mut(&spec.id)
            .filter(|entry| Arc::ptr_eq(&entry.status, &status));
        let Some(ActorEntry {
            running: Running::Actor {
                control, mailbox, ..
            },
            digest,
            ..
        }) = current
        else {
            // Removed (or replaced) while the new revision started.
            drop(actors);
            stop_instance(started).await;
            return Err(Error::UnknownComponent(spec.id.to_string()));
        };
        self.storage
            .set_quota(&spec.id.to_string(), spec.quotas.storage_bytes);
        // Every instance sees the new revision after its current message; the first to move
        // takes the instance started above.
        control.send_replace(Control::Run(revision.with_started(started)));
        self.broker.register(&spec.id, new_mailbox.clone());
        *mailbox = new_mailbox;
        *digest = spec.digest.clone();
        self.engine.retain(&digests_in_use(&actors));
        Ok(())
    }

    /// Adds the component, or updates it if it runs with another digest or grant.
    pub async fn apply(&self, spec: ComponentSpec) -> Result<CompileSource, Error> {
        let running = self.actors.lock().await.contains_key(&spec.id);
        if running {
            self.update(spec).await
        } else {
            self.add(spec).await
        }
    }

    /// Stops a component: each instance finishes its current message, `shutdown` is called,
    /// queued messages are dropped (their requesters get no reply).
    pub async fn remove(&self, id: &ComponentId) -> Result<(), Error> {
        self.begin_remove(id).await?.await;
        Ok(())
    }

    /// The first half of [`Supervisor::remove`]: the component is gone from this supervisor
    /// and the broker (it can be added again at once) and its instances are told to stop;
    /// the returned future waits until they have. Node mode runs that wait in the background
    /// so one slow message does not hold up the other components.
    pub async fn begin_remove(
        &self,
        id: &ComponentId,
    ) -> Result<impl Future<Output = ()> + Send + 'static, Error> {
        let entry = {
            let mut actors = self.actors.lock().await;
            let entry = actors
                .remove(id)
                .ok_or_else(|| Error::UnknownComponent(id.to_string()))?;
            self.engine.retain(&digests_in_use(&actors));
            entry
        };
        Ok(self.retire(id, entry))
    }

    /// Tells a component's instances to stop (an HTTP component drains); the future waits
    /// until they have.
    fn retire(
        &self,
        id: &ComponentId,
        entry: ActorEntry,
    ) -> impl Future<Output = ()> + Send + 'static {
        let id = id.clone();
        let stopped: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = match entry.running {
            Running::Actor { control, task, .. } => {
                self.broker.unregister(&id);
                control.send_replace(Control::Stop);
                let id = id.clone();
                Box::pin(async move {
                    if let Err(e) = task.await {
                        tracing::warn!(component = %id, error = %e, "actor task ended abnormally");
                    }
                })
            }
            Running::Http(server) => Box::pin(server.stop()),
        };
        async move {
            stopped.await;
            tracing::info!(component = %id, "component removed");
        }
    }

    /// Stops every component.
    pub async fn shutdown(&self) {
        let ids: Vec<ComponentId> = self.actors.lock().await.keys().cloned().collect();
        for id in ids {
            let _ = self.remove(&id).await;
        }
    }

    pub async fn status(&self, id: &ComponentId) -> Option<Arc<ActorStatus>> {
        self.actors.lock().await.get(id).map(|e| e.status.clone())
    }

    pub async fn digest(&self, id: &ComponentId) -> Option<Digest> {
        self.actors.lock().await.get(id).map(|e| e.digest.clone())
    }

    /// An HTTP component's request path without the network (`None`: not running, or not
    /// HTTP).
    pub async fn http_handle(&self, id: &ComponentId) -> Option<crate::http_server::HttpHandle> {
        match &self.actors.lock().await.get(id)?.running {
            Running::Http(server) => Some(server.handle()),
            Running::Actor { .. } => None,
        }
    }

    /// The address an HTTP component is served on (`None`: not running, or not HTTP).
    pub async fn http_address(&self, id: &ComponentId) -> Option<std::net::SocketAddr> {
        match &self.actors.lock().await.get(id)?.running {
            Running::Http(server) => Some(server.address()),
            Running::Actor { .. } => None,
        }
    }

    pub async fn components(&self) -> Vec<ComponentId> {
        let mut ids: Vec<_> = self.actors.lock().await.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// A request from the agent itself (CLI, tests): waits for mailbox room and the reply.
    pub async fn request(
        &self,
        id: &ComponentId,
        payload: impl Into<Arc<[u8]>>,
        timeout: Duration,
    ) -> Result<Vec<u8>, BrokerError> {
        self.broker
            .request(None, &id.namespace, &id.name, payload.into(), timeout)
            .await
    }

    /// A one-way message from the agent itself, waiting for mailbox room.
    pub async fn send(
        &self,
        id: &ComponentId,
        payload: impl Into<Arc<[u8]>>,
    ) -> Result<(), BrokerError> {
        self.broker
            .send_wait(&id.namespace, &id.name, payload.into())
            .await
    }
}

/// The digests the running components use: the compiled components the engine keeps.
fn digests_in_use(actors: &HashMap<ComponentId, ActorEntry>) -> HashSet<Digest> {
    actors.values().map(|e| e.digest.clone()).collect()
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Actor tasks hold only clones of shared handles; abort them so a dropped
        // supervisor leaves nothing running.
        let actors = std::mem::take(self.actors.get_mut());
        for (_, entry) in actors {
            if let Running::Actor { task, .. } = entry.running {
                task.abort();
            }
        }
    }
}
