//! The placement controller: runs each approved `WasmComponent` on the nodes' agents by writing
//! one `Placement` per (component, node), and sums the Placements back into the component's
//! status.
//!
//! Per component:
//! 1. [`crate::approval::verdict`] says whether it may run, from the status *and* this
//!    operator's own decision in memory: place, hold (change nothing) or remove.
//! 2. To place: the candidate nodes are the `Node` objects with their agent's Lease (live or
//!    not, capacity from its annotations) and what other components' Placements reserve on
//!    them; [`crate::placement::place`] plans; creates and updates are server-side applied
//!    (owned by the component, `controller: true`), then deletes are sent.
//!    To remove: every Placement of the component is deleted in one request.
//! 3. [`crate::summary::summarize`] gives `replicas`, `readyReplicas`, `nodes` and the
//!    `Scheduled`/`Ready`/`Degraded` conditions.
//!
//! Status ownership: this controller applies only those fields, with its own field manager
//! [`FIELD_MANAGER`], so it never touches `Verified`/`Approved` and the digests, which the
//! component controller applies with [`super::FIELD_MANAGER`]; conditions are a list-map keyed
//! by `type`, so both write their own entries of one list without a read-modify-write race.
//! It writes only when something other than a timestamp changed, so a new leader taking over
//! from the same cluster state writes nothing (no flapping).
//!
//! Planning is serialized through the [`Ledger`] (what was last planned per component, ahead
//! of the watch), so two components never both take a node's last room; the API writes run
//! concurrently.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use airssys_crds::agent::{ADDRESS_ANNOTATION, AgentCapacity};
use airssys_crds::component::{NodeSummary, WasmComponent};
use airssys_crds::condition::{self, Condition, ConditionType};
use airssys_crds::http::PlacementHttp;
use airssys_crds::placement::{ComponentRef, REVOKED_ANNOTATION};
use airssys_crds::{Capabilities, Digest, Placement, PlacementSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource as _, ResourceExt as _};
use serde::Serialize;
use tracing::{debug, info, instrument, warn};

use super::written::Writer;
use super::{StatusApply, service};
use crate::approval::{Evidence, Verdict, verdict};
use crate::events::{EventReason, Reason};
use crate::http::{self, Serving};
use crate::placement::{
    ExistingPlacement, Footprint, NodeShare, NodeView, PlacementChange, PlacementContent,
    PlacementPlan, PlacementRequest, is_lease_live, pin, place,
};
use crate::summary::{Input, Report, Scheduling, Summary, summarize};
use crate::{Context, Error, metrics};

const CONTROLLER: &str = "placement";
/// Field manager of the status fields this controller owns (not the component controller's).
pub const FIELD_MANAGER: &str = "airssys-operator-placement";
/// Field manager of the Placements themselves.
pub const PLACEMENT_MANAGER: &str = "airssys-operator";
/// Look again this soon while replicas are unplaced (capacity may free up elsewhere).
const SHORTFALL_RETRY: Duration = Duration::from_secs(5);
/// Look again this soon while holding (the decision on a new generation is due).
const HOLD_RETRY: Duration = Duration::from_secs(2);
/// How long after writing a component's Placements its summary may wait for the agents'
/// first report, so a quick start is one status write (`Scheduled` with `Ready`), not two.
const FIRST_REPORT_GRACE: Duration = Duration::from_secs(1);
/// Resync of a settled component.
const RESYNC: Duration = Duration::from_secs(300);
/// The most bytes of the reason a revoked Placement carries.
const REVOKED_NOTE_LIMIT: usize = 512;

/// What placement last planned for each component (by uid): the footprint it reserves per
/// node. It stands in for the component's Placements in the store until the watch catches up
/// with the writes, so capacity is never counted twice or missed.
#[derive(Debug, Default)]
pub struct Ledger {
    planned: HashMap<String, BTreeMap<String, Footprint>>,
    /// The HTTP port of each HTTP component (by uid), ahead of the Placements that carry it.
    ports: HashMap<String, u16>,
    /// When each component's Placements were last created or changed.
    placed_at: HashMap<String, Instant>,
}

impl Ledger {
    /// What components other than `except` reserve, per node: their plans where known, else
    /// their Placements (not being deleted) as stored.
    fn committed(&self, except: &str, placements: &[Arc<Placement>]) -> HashMap<String, Footprint> {
        let mut committed: HashMap<String, Footprint> = HashMap::new();
        for p in placements {
            let owner = p.spec.component.uid.as_str();
            if owner == except
                || self.planned.contains_key(owner)
                || p.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            let slot = committed.entry(p.spec.node_name.clone()).or_default();
            *slot = slot.plus(Footprint::of_placement(&p.spec));
        }
        for (owner, nodes) in &self.planned {
            if owner == except {
                continue;
            }
            for (node, footprint) in nodes {
                let slot = committed.entry(node.clone()).or_default();
                *slot = slot.plus(*footprint);
            }
        }
        committed
    }

    fn plan(&mut self, uid: &str, nodes: BTreeMap<String, Footprint>) {
        self.planned.insert(uid.to_owned(), nodes);
    }

    /// Drops a plan whose writes may not have happened: the store is the truth again.
    fn forget(&mut self, uid: &str) {
        self.planned.remove(uid);
    }

    fn has_plan(&self, uid: &str) -> bool {
        self.planned.get(uid).is_some_and(|nodes| !nodes.is_empty())
    }

    /// Forgets components that no longer exist.
    pub(crate) fn retain(&mut self, live: impl Fn(&str) -> bool) {
        self.planned.retain(|uid, _| live(uid));
        self.ports.retain(|uid, _| live(uid));
        self.placed_at.retain(|uid, _| live(uid));
    }

    /// How much longer the summary of component `uid` may wait for its agents' first report:
    /// what is left of [`FIRST_REPORT_GRACE`] since its Placements were written.
    fn first_report_wait(&self, uid: &str, now: Instant) -> Option<Duration> {
        let placed = self.placed_at.get(uid)?;
        FIRST_REPORT_GRACE
            .checked_sub(now.saturating_duration_since(*placed))
            .filter(|left| !left.is_zero())
    }

    /// The HTTP port of component `uid`: the one it has (in this ledger, else on its
    /// Placements), else the lowest free one in `range`; `None` when the range is full.
    fn port(
        &mut self,
        uid: &str,
        range: &std::ops::RangeInclusive<u16>,
        placements: &[Arc<Placement>],
    ) -> Option<u16> {
        let mut own = self.ports.get(uid).copied();
        let mut taken = BTreeSet::new();
        for p in placements {
            let Some(h) = &p.spec.http else { continue };
            if p.spec.component.uid == uid {
                own = own.or(Some(h.target_port));
            } else {
                taken.insert(h.target_port);
            }
        }
        taken.extend(
            self.ports
                .iter()
                .filter(|(owner, _)| owner.as_str() != uid)
                .map(|(_, port)| *port),
        );
        let port = http::choose_port(range, own, &taken)?;
        self.ports.insert(uid.to_owned(), port);
        Some(port)
    }

    /// The port component `uid` holds, if any (in this ledger, else on its Placements).
    fn held_port(&self, uid: &str, placements: &[Arc<Placement>]) -> Option<u16> {
        self.ports.get(uid).copied().or_else(|| {
            placements
                .iter()
                .filter(|p| p.spec.component.uid == uid)
                .find_map(|p| p.spec.http.as_ref().map(|h| h.target_port))
        })
    }

    fn release_port(&mut self, uid: &str) {
        self.ports.remove(uid);
    }
}

pub async fn reconcile(component: Arc<WasmComponent>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.view_ready.load(Ordering::Acquire) {
        // Planning on a partial view could delete what runs (no Leases yet = no live agent).
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let _timer: metrics::ReconcileTimer = ctx.metrics.reconcile(CONTROLLER);
    let action = apply(&component, &ctx).await?;
    ctx.succeeded(&key(&component));
    Ok(action)
}

pub fn error_policy(component: Arc<WasmComponent>, error: &Error, ctx: Arc<Context>) -> Action {
    super::retry_after_error(&ctx, CONTROLLER, &key(&component), error)
}

fn key(c: &WasmComponent) -> String {
    format!(
        "placement:{}/{}",
        c.namespace().unwrap_or_default(),
        c.name_any()
    )
}

/// Waits until the Placement, Node and Lease stores have had their first list. Only
/// [`watch_nodes`] waits (a store's readiness wakes one waiter only); reconciles read
/// the context's `view_ready`.
async fn stores_ready(ctx: &Context) -> bool {
    let s = &ctx.stores;
    s.placements.wait_until_ready().await.is_ok()
        && s.nodes.wait_until_ready().await.is_ok()
        && s.leases.wait_until_ready().await.is_ok()
}

/// The verdict on `c` from its status and this operator's own last decision in memory.
fn decide(c: &WasmComponent, ctx: &Context) -> Result<Verdict, Error> {
    let ns = c.namespace().unwrap_or_default();
    let valid = c.spec.validate().ok();
    let index = ctx.index.read().map_err(|_| Error::IndexPoisoned)?;
    let facts = index.last_facts(&ns, &c.name_any());
    let decision = facts.map(|f| index.decide(f, ctx.policy()));
    Ok(verdict(&Evidence {
        generation: c.metadata.generation,
        deleting: c.metadata.deletion_timestamp.is_some(),
        status: c.status.as_ref(),
        request: valid.as_ref().map(|v| &v.capabilities),
        facts,
        decision: decision.as_ref(),
    }))
}

#[instrument(skip_all, fields(namespace = %c.namespace().unwrap_or_default(), component = %c.name_any()))]
async fn apply(c: &WasmComponent, ctx: &Context) -> Result<Action, Error> {
    let ns = c.namespace().unwrap_or_default();
    let name = c.name_any();
    let uid = c.uid().unwrap_or_default();
    let verdict = decide(c, ctx)?;
    debug!(?verdict, "verdict");
    let all = ctx.stores.placements.state();
    let ours: Vec<&Arc<Placement>> = all
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()) && p.spec.component.name == name)
        .collect();
    let existing: Vec<ExistingPlacement> = ours
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| ExistingPlacement {
            name: p.name_any(),
            spec: p.spec.clone(),
        })
        .collect();
    let api: Api<Placement> = Api::namespaced(ctx.client.clone(), &ns);

    let (shares, shortfall, approved_digest, action) = match &verdict {
        Verdict::Remove(why) => {
            let planned = {
                let mut ledger = ctx.ledger.lock().unwrap_or_else(PoisonError::into_inner);
                let planned = ledger.has_plan(&uid);
                ledger.plan(&uid, BTreeMap::new());
                planned
            };
            ctx.ledger
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .release_port(&uid);
            if !existing.is_empty() || planned {
                // A component being deleted is not revoked: its instances just stop.
                if c.metadata.deletion_timestamp.is_none() {
                    mark_revoked(&api, &existing, why).await?;
                }
                remove_all(&api, &name).await?;
                info!(placements = existing.len(), why = %why, "removed every Placement");
            }
            (Vec::new(), None, None, RESYNC)
        }
        Verdict::Hold(why) => {
            debug!(why = %why, "holding: nothing changes");
            let digest = c
                .status
                .as_ref()
                .and_then(|s| s.approved_digest.as_deref())
                .and_then(|d| Digest::parse(d).ok());
            (running_shares(&existing), None, digest, HOLD_RETRY)
        }
        Verdict::Place {
            digest,
            grant,
            dev_mode,
        } => {
            let Ok(valid) = c.spec.validate() else {
                // The verdict checked it; a spec cannot change under us.
                return Ok(Action::requeue(HOLD_RETRY));
            };
            let http = {
                let mut ledger = ctx.ledger.lock().unwrap_or_else(PoisonError::into_inner);
                match &c.spec.http {
                    Some(spec) => {
                        let Some(port) = ledger.port(&uid, &ctx.config.http_ports, &all) else {
                            warn!(range = ?ctx.config.http_ports, "no free port for an HTTP component in --http-port-range; not placed");
                            return Ok(Action::requeue(SHORTFALL_RETRY));
                        };
                        Some(PlacementHttp::new(spec, port))
                    }
                    None => {
                        ledger.release_port(&uid);
                        None
                    }
                }
            };
            let request = PlacementRequest {
                namespace: ns.clone(),
                component: ComponentRef {
                    name: name.clone(),
                    uid: uid.clone(),
                    generation: c.metadata.generation.unwrap_or(0),
                },
                replicas: u32::try_from(c.spec.replicas).unwrap_or(0),
                policy: c.spec.placement.clone(),
                footprint: Footprint::of_replica(&valid.limits),
                content: PlacementContent {
                    digest: digest.clone(),
                    artifact: pin(&c.spec.artifact, digest),
                    grant: Capabilities::from(grant),
                    limits: c.spec.limits.clone(),
                    config: c.spec.config.clone(),
                    dev_mode: *dev_mode,
                    http,
                },
            };
            let plan = {
                let mut ledger = ctx.ledger.lock().unwrap_or_else(PoisonError::into_inner);
                let views = node_views(ctx, &ledger.committed(&uid, &all));
                let plan = place(&request, &views, &existing);
                let reserved = plan
                    .shares
                    .iter()
                    .map(|s| (s.node.clone(), request.footprint.times(s.instances)))
                    .collect();
                ledger.plan(&uid, reserved);
                plan
            };
            if let Err(e) = write_plan(&api, c, &plan).await {
                ctx.ledger
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .forget(&uid);
                return Err(e);
            }
            if !plan.changes.is_empty() {
                ctx.ledger
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .placed_at
                    .insert(uid.clone(), Instant::now());
            }
            let retry = if plan.shortfall.is_some() {
                SHORTFALL_RETRY
            } else {
                RESYNC
            };
            (
                plan.shares.clone(),
                plan.shortfall.map(|s| s.message),
                Some(digest.clone()),
                retry,
            )
        }
    };

    let scheduling = match &verdict {
        Verdict::Remove(why) => Scheduling::NotApproved(why),
        Verdict::Hold(why) => Scheduling::Held(why),
        Verdict::Place { .. } => Scheduling::Planned {
            shortfall: shortfall.as_deref(),
        },
    };
    let reports: Vec<Report<'_>> = ours
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| Report {
            node: &p.spec.node_name,
            status: p.status.as_ref(),
        })
        .collect();
    // Our own fields as the API server holds them: from our last write when the watch's copy
    // predates it (else the same status would be written, and its Event published, again).
    let status = ctx.written.overlay(
        &uid,
        Writer::Placement,
        c.status.clone().unwrap_or_default(),
        c.resource_version().as_deref(),
    );
    let summary = summarize(&Input {
        generation: c.metadata.generation,
        requested: u32::try_from(c.spec.replicas).unwrap_or(0),
        scheduling,
        shares: &shares,
        approved_digest: approved_digest.as_ref(),
        reports: &reports,
        previous: &status.conditions,
    });
    // A component not decided yet (no `Approved` condition: the verdict is `Remove`) has
    // nothing to report: the decision comes within moments and is what triggers this
    // controller next (a write now would only be replaced then).
    let undecided = existing.is_empty()
        && condition::find(&status.conditions, ConditionType::Scheduled).is_none()
        && condition::find(&status.conditions, ConditionType::Approved).is_none();
    // Just placed and no report yet: the agents' first report comes within moments and is
    // written with the placement, in one write; a later reconcile writes it anyway.
    let first_report_wait = if summary.awaits_first_report {
        ctx.ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .first_report_wait(&uid, Instant::now())
    } else {
        None
    };
    if let Some(wait) = first_report_wait {
        debug!(
            ?wait,
            "waiting for the agents' first report before writing the summary"
        );
    }
    if !undecided
        && first_report_wait.is_none()
        && summary.differs_from(
            status.replicas,
            status.ready_replicas,
            &status.nodes,
            &status.conditions,
        )
    {
        write_status(c, ctx, &placed_status(&summary)).await?;
        report_transition(c, ctx, &status.conditions, &summary).await;
    }
    let wanted = match (&verdict, &c.spec.http, approved_digest.as_ref()) {
        (Verdict::Place { .. } | Verdict::Hold(_), Some(spec), Some(approved)) => {
            let port = ctx
                .ledger
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .held_port(&uid, &all);
            port.map(|target_port| {
                let serving: Vec<Serving<'_>> = ours
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .map(|p| Serving {
                        spec: &p.spec,
                        status: p.status.as_ref(),
                    })
                    .collect();
                let addresses = agent_addresses(&ctx.stores.leases.state(), jiff::Timestamp::now());
                service::Wanted {
                    port: spec.port,
                    target_port,
                    endpoints: http::ready_endpoints(&serving, target_port, approved, &addresses),
                }
            })
        }
        _ => None,
    };
    service::sync(ctx, c, wanted).await?;
    Ok(Action::requeue(
        first_report_wait.map_or(action, |w| w.min(action)),
    ))
}

/// Replicas per node of the Placements that exist (while holding).
fn running_shares(existing: &[ExistingPlacement]) -> Vec<NodeShare> {
    let mut by_node: BTreeMap<&str, u32> = BTreeMap::new();
    for p in existing {
        let slot = by_node.entry(&p.spec.node_name).or_default();
        *slot = slot.saturating_add(u32::try_from(p.spec.instances).unwrap_or(0));
    }
    by_node
        .into_iter()
        .map(|(node, instances)| NodeShare {
            node: node.to_owned(),
            instances,
        })
        .collect()
}

/// The candidate nodes: every `Node`, with its agent's Lease (the live one, if several name the
/// node), the capacity announced on it, and `committed` (what others reserve there).
pub(crate) fn node_views(ctx: &Context, committed: &HashMap<String, Footprint>) -> Vec<NodeView> {
    let agents = agents(&ctx.stores.leases.state(), jiff::Timestamp::now());
    ctx.stores
        .nodes
        .state()
        .iter()
        .map(|node| {
            let name = node.name_any();
            let (live, capacity) = agents.get(&name).copied().unwrap_or_default();
            NodeView::from_node(
                node,
                live,
                capacity,
                committed.get(&name).copied().unwrap_or_default(),
            )
        })
        .collect()
}

/// Per node (the Lease's `holderIdentity`): whether its agent is live and what it offers.
fn agents(leases: &[Arc<Lease>], now: jiff::Timestamp) -> HashMap<String, (bool, Footprint)> {
    let mut agents: HashMap<String, (bool, Footprint)> = HashMap::new();
    for lease in leases {
        let Some(spec) = lease.spec.as_ref() else {
            continue;
        };
        let Some(node) = spec.holder_identity.as_deref().filter(|n| !n.is_empty()) else {
            continue;
        };
        let live = is_lease_live(spec, now);
        let capacity = AgentCapacity::from_annotations(lease.metadata.annotations.as_ref());
        let footprint = Footprint {
            instances: capacity.instances,
            memory_bytes: capacity.memory_bytes,
        };
        let slot = agents.entry(node.to_owned()).or_default();
        if live || !slot.0 {
            *slot = (live, footprint);
        }
    }
    agents
}

/// Per node: the address its live agent serves HTTP components on (the Lease's
/// [`ADDRESS_ANNOTATION`]); nodes whose agent is not live, or announced no valid address, are
/// absent.
fn agent_addresses(leases: &[Arc<Lease>], now: jiff::Timestamp) -> BTreeMap<String, IpAddr> {
    let mut addresses = BTreeMap::new();
    for lease in leases {
        let Some(spec) = lease.spec.as_ref().filter(|s| is_lease_live(s, now)) else {
            continue;
        };
        let Some(node) = spec.holder_identity.as_deref().filter(|n| !n.is_empty()) else {
            continue;
        };
        let address = lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ADDRESS_ANNOTATION))
            .and_then(|a| a.parse::<IpAddr>().ok());
        if let Some(address) = address {
            addresses.insert(node.to_owned(), address);
        }
    }
    addresses
}

/// A Placement as applied: only metadata that is ours and the spec, so the agent's status and
/// anyone else's labels stay theirs.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PlacementApply<'a> {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: &'a PlacementSpec,
}

fn owner(c: &WasmComponent) -> OwnerReference {
    OwnerReference {
        api_version: WasmComponent::api_version(&()).into_owned(),
        kind: WasmComponent::kind(&()).into_owned(),
        name: c.name_any(),
        uid: c.uid().unwrap_or_default(),
        controller: Some(true),
        // The component's foreground deletion waits for its Placements.
        block_owner_deletion: Some(true),
    }
}

fn placement_body<'a>(
    c: &WasmComponent,
    name: &str,
    spec: &'a PlacementSpec,
) -> PlacementApply<'a> {
    PlacementApply {
        api_version: Placement::api_version(&()).into_owned(),
        kind: Placement::kind(&()).into_owned(),
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: c.namespace(),
            owner_references: Some(vec![owner(c)]),
            ..ObjectMeta::default()
        },
        spec,
    }
}

/// Applies a plan: creates and updates first (concurrently), then deletes, so new instances
/// start before old ones go.
async fn write_plan(
    api: &Api<Placement>,
    c: &WasmComponent,
    plan: &PlacementPlan,
) -> Result<(), Error> {
    let params = PatchParams::apply(PLACEMENT_MANAGER).force();
    let writes = plan.changes.iter().filter_map(|change| match change {
        PlacementChange::Create { name, spec } | PlacementChange::Update { name, spec } => {
            let body = placement_body(c, name, spec);
            let params = &params;
            Some(async move {
                api.patch(name, params, &Patch::Apply(&body)).await?;
                debug!(placement = %name, node = %spec.node_name, instances = spec.instances, "applied");
                Ok::<_, Error>(())
            })
        }
        PlacementChange::Delete { .. } => None,
    });
    futures::future::try_join_all(writes).await?;
    let deletes = plan.changes.iter().filter_map(|change| match change {
        PlacementChange::Delete { name, node } => Some(async move {
            match api.delete(name, &DeleteParams::background()).await {
                Ok(_) => {}
                // Already gone (the store was behind).
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(Error::from(e)),
            }
            debug!(placement = %name, node = %node, "deleted");
            Ok(())
        }),
        _ => None,
    });
    futures::future::try_join_all(deletes).await?;
    if !plan.changes.is_empty() {
        info!(
            changes = plan.changes.len(),
            placed = plan.placed(),
            unplaced = plan.shortfall.as_ref().map_or(0, |s| s.unplaced),
            "placement changed"
        );
    }
    Ok(())
}

/// Marks each of `placements` revoked (with why) before they are deleted, so their agents
/// stop them at once and record `Revoked`, not the `Stopped` of a scale-in or move.
async fn mark_revoked(
    api: &Api<Placement>,
    placements: &[ExistingPlacement],
    why: &str,
) -> Result<(), Error> {
    let why = condition::bounded(why.to_owned(), REVOKED_NOTE_LIMIT);
    let patch = serde_json::json!({ "metadata": { "annotations": { REVOKED_ANNOTATION: why } } });
    let marks = placements.iter().map(|p| {
        let patch = &patch;
        async move {
            match api
                .patch(&p.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(Error::from(e)),
            }
        }
    });
    futures::future::try_join_all(marks).await?;
    Ok(())
}

/// Deletes every Placement of component `name` in one request (field selector on
/// `spec.component.name`): revocation reaches every node at once.
async fn remove_all(api: &Api<Placement>, name: &str) -> Result<(), Error> {
    let selector = ListParams::default().fields(&format!("spec.component.name={name}"));
    api.delete_collection(&DeleteParams::background(), &selector)
        .await?;
    Ok(())
}

/// The status fields this controller owns, as applied.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PlacedStatus<'a> {
    replicas: i32,
    ready_replicas: i32,
    nodes: &'a [NodeSummary],
    conditions: &'a [Condition],
}

fn placed_status(summary: &Summary) -> StatusApply<WasmComponent, PlacedStatus<'_>> {
    StatusApply::new(PlacedStatus {
        replicas: summary.replicas,
        ready_replicas: summary.ready_replicas,
        nodes: &summary.nodes,
        conditions: &summary.conditions,
    })
}

async fn write_status(
    c: &WasmComponent,
    ctx: &Context,
    body: &StatusApply<WasmComponent, PlacedStatus<'_>>,
) -> Result<(), Error> {
    // Entries another manager added to `nodes` survive an apply (they are theirs); the list
    // must say only what the Placements say, so it is replaced.
    let nodes = body.status().nodes;
    super::write_component_status(ctx, c, Writer::Placement, FIELD_MANAGER, body, |held| {
        (held.nodes.as_slice() != nodes)
            .then(|| serde_json::json!({ "status": { "nodes": nodes } }))
    })
    .await
}

/// Publishes an Event when `Scheduled` takes a new state (not for `NotApproved`: the component
/// controller already reported the decision, and the agents report each stop).
async fn report_transition(
    c: &WasmComponent,
    ctx: &Context,
    before: &[Condition],
    summary: &Summary,
) {
    let state = |conditions: &[Condition]| {
        airssys_crds::condition::find(conditions, ConditionType::Scheduled)
            .map(|s| (s.status, s.reason.clone()))
    };
    let Some(now) = airssys_crds::condition::find(&summary.conditions, ConditionType::Scheduled)
    else {
        return;
    };
    if state(before) == state(&summary.conditions) {
        return;
    }
    let Some(reason) = now.reason().filter(|r| *r != Reason::NotApproved) else {
        return;
    };
    if let Some(event) = EventReason::for_condition(reason) {
        ctx.publish(&c.object_ref(&()), event, "Place", now.message.clone())
            .await;
    }
}

/// Components to plan again because the nodes or their agents changed: all of them.
pub(crate) fn all_components(ctx: &Context) -> Vec<ObjectRef<WasmComponent>> {
    ctx.stores
        .components
        .state()
        .iter()
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// How often [`watch_nodes`] looks at the nodes' view.
const VIEW_INTERVAL: Duration = Duration::from_secs(1);

/// Once a second, the view placement depends on (per node: labels, taints, cordon, agent
/// liveness and capacity); when it changed, every component is planned again. Leases are
/// renewed every few seconds, so reacting per event would re-plan everything all the time;
/// and a Lease that expires sends no event at all. Also forgets plans of components that no
/// longer exist.
pub(crate) async fn watch_nodes(
    ctx: Arc<Context>,
    requeue: tokio::sync::mpsc::UnboundedSender<ObjectRef<WasmComponent>>,
) {
    if !stores_ready(&ctx).await {
        // Only when the watches are gone, which ends the operator anyway.
        warn!("the Placement, Node or Lease watch ended before its first list");
        return;
    }
    ctx.view_ready.store(true, Ordering::Release);
    let mut last: Option<Vec<NodeView>> = None;
    let mut tick = tokio::time::interval(VIEW_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let mut view = node_views(&ctx, &HashMap::new());
        view.sort_by(|a, b| a.name.cmp(&b.name));
        if last.as_ref() != Some(&view) {
            let live = view.iter().filter(|n| n.agent_live).count();
            info!(
                nodes = view.len(),
                live_agents = live,
                "the nodes' view changed; planning every component again"
            );
            for component in all_components(&ctx) {
                let _ = requeue.send(component);
            }
            last = Some(view);
        }
        let uids: std::collections::HashSet<String> = ctx
            .stores
            .components
            .state()
            .iter()
            .filter_map(|c| c.uid())
            .collect();
        ctx.ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|uid| uids.contains(uid));
        ctx.written.retain(|uid| uids.contains(uid));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(node: &str, renewed_secs_ago: i64, instances: u32) -> Arc<Lease> {
        let now = jiff::Timestamp::now();
        Arc::new(Lease {
            metadata: ObjectMeta {
                annotations: Some(
                    AgentCapacity {
                        instances,
                        memory_bytes: 1 << 30,
                    }
                    .to_annotations(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(node.to_owned()),
                lease_duration_seconds: Some(40),
                renew_time: Some(MicroTime(
                    now - jiff::SignedDuration::from_secs(renewed_secs_ago),
                )),
                ..LeaseSpec::default()
            }),
        })
    }

    #[test]
    fn the_first_report_is_awaited_only_for_the_grace_after_placing() {
        let mut ledger = Ledger::default();
        let t0 = Instant::now();
        assert_eq!(ledger.first_report_wait("u", t0), None, "never placed");
        ledger.placed_at.insert("u".into(), t0);
        let ms = Duration::from_millis;
        assert_eq!(ledger.first_report_wait("u", t0 + ms(300)), Some(ms(700)));
        assert_eq!(ledger.first_report_wait("u", t0 + FIRST_REPORT_GRACE), None);
        assert_eq!(ledger.first_report_wait("u", t0 + ms(5000)), None);
        ledger.retain(|uid| uid != "u");
        assert_eq!(
            ledger.first_report_wait("u", t0),
            None,
            "forgotten with the component"
        );
    }

    #[test]
    fn agents_come_from_their_leases() {
        let now = jiff::Timestamp::now();
        let got = agents(
            &[
                lease("a", 5, 10),
                lease("b", 60, 20),
                // A stale Lease naming a node does not hide its live one.
                lease("c", 60, 1),
                lease("c", 1, 30),
                lease("", 1, 99),
            ],
            now,
        );
        let view = |n: &str| got.get(n).map(|(live, f)| (*live, f.instances));
        assert_eq!(view("a"), Some((true, 10)));
        assert_eq!(view("b"), Some((false, 20)), "expired");
        assert_eq!(view("c"), Some((true, 30)));
        assert_eq!(got.len(), 3, "a Lease without a holder names no node");
    }

    fn placement(uid: &str, node: &str, instances: i32, deleting: bool) -> Arc<Placement> {
        let spec: PlacementSpec = serde_json::from_value(serde_json::json!({
            "nodeName": node,
            "component": {"name": "c", "uid": uid, "generation": 1},
            "digest": format!("sha256:{}", "a".repeat(64)),
            "artifact": {"oci": {"reference": "r.example/x@sha256:aa"}},
            "instances": instances,
        }))
        .unwrap();
        let mut p = Placement::new("p", spec);
        if deleting {
            p.metadata.deletion_timestamp = Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
            );
        }
        Arc::new(p)
    }

    #[test]
    fn the_ledger_stands_in_for_the_store_until_the_watch_catches_up() {
        let one = Footprint::of_placement(&placement("x", "n", 1, false).spec);
        let stored = vec![
            placement("me", "n", 3, false),
            placement("other", "n", 2, false),
            placement("gone", "n", 5, true),
            placement("planned", "n", 4, false),
        ];
        let mut ledger = Ledger::default();
        ledger.plan("planned", BTreeMap::from([("m".to_owned(), one.times(1))]));
        let got = ledger.committed("me", &stored);
        assert_eq!(
            got.get("n").copied(),
            Some(one.times(2)),
            "own, deleting and planned components' stored Placements do not count"
        );
        assert_eq!(got.get("m").copied(), Some(one), "the plan counts instead");
        ledger.forget("planned");
        assert_eq!(
            ledger.committed("me", &stored).get("n").copied(),
            Some(one.times(6))
        );
        ledger.plan("me", BTreeMap::new());
        assert!(!ledger.has_plan("me"), "an empty plan reserves nothing");
        ledger.retain(|uid| uid != "me");
        assert!(ledger.planned.is_empty());
    }

    #[test]
    fn a_placement_is_applied_with_its_owner_and_without_status() {
        let c: WasmComponent = serde_json::from_value(serde_json::json!({
            "apiVersion": "wasm.airssys.dev/v1alpha1",
            "kind": "WasmComponent",
            "metadata": {"name": "echo", "namespace": "team", "uid": "u-1", "generation": 2},
            "spec": {"artifact": {"oci": {"reference": "r.example/echo:1"}}},
        }))
        .unwrap();
        let p = placement("u-1", "n", 1, false);
        let body = serde_json::to_value(placement_body(&c, "echo-n-1", &p.spec)).unwrap();
        assert_eq!(body["kind"], "Placement");
        assert_eq!(body["metadata"]["namespace"], "team");
        let owner = &body["metadata"]["ownerReferences"][0];
        assert_eq!(owner["uid"], "u-1");
        assert_eq!(owner["kind"], "WasmComponent");
        assert_eq!(owner["controller"], true);
        assert_eq!(owner["blockOwnerDeletion"], true);
        assert!(body.get("status").is_none(), "the agent owns the status");
    }
}
