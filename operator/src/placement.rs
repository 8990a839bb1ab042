//! Where an approved component's replicas run (DESIGN §2 step 3), as a pure function:
//! (component, nodes, its current Placements) → [`PlacementPlan`]. No I/O: the placement
//! controller gathers Nodes, agent Leases and Placements, calls [`place`] and applies the plan.
//!
//! Rules, in order:
//! 1. **Eligible nodes** have a live agent Lease, every label of `nodeSelector`, and tolerate
//!    every `NoExecute` and `NoSchedule` taint (Kubernetes toleration semantics, see
//!    [`tolerates`]). A node with an untolerated `NoSchedule` taint keeps the replicas it
//!    already runs but takes no more (as for Pods: `NoSchedule` stops new work, `NoExecute`
//!    evicts). `PreferNoSchedule` only orders equal choices. The kubelet-health taints
//!    (`not-ready`, `unreachable`) are not read: the agent's Lease is the liveness signal.
//! 2. **Capacity.** A node's room is what its agent reports minus what other components hold,
//!    divided by one replica's [`Footprint`] (instance slots and memory).
//! 3. **Spread.** Replicas fill nodes level by level (water-filling): no node that has room
//!    holds two fewer than another. `min(replicas, total room)` are placed; the rest are
//!    reported in a [`Shortfall`] whose message says why and what to do.
//! 4. **Stability.** Where spreading leaves a choice (which nodes get one more), nodes that
//!    already run that many keep them, then nodes without a `PreferNoSchedule` taint, then the
//!    nodes other components load least (instance slots), then by name. So scaling up never moves a replica, and a lost node moves only its own.
//! 5. **One Placement per (component, node)**; `spec.instances` counts replicas on the node.
//!    A spec change (digest, grant, limits, generation) updates Placements in place: the agent
//!    replaces instances rolling. `replicas: 0` deletes them all.
//!
//! The output is sorted, so two operators compute the same plan from the same inputs.

use std::collections::BTreeMap;

use airssys_crds::component::{
    ConfigEntry, PlacementPolicy, TaintEffect, Toleration, TolerationOperator,
};
use airssys_crds::limits::{MAX_CONCURRENT_MESSAGES, ResolvedLimits};
use airssys_crds::placement::{ComponentRef, MAX_INSTANCES};
use airssys_crds::{Artifact, Capabilities, Digest, Limits, PlacementSpec};
use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::api::core::v1::{Node, Taint};
use sha2::{Digest as _, Sha256};

/// The taint the node controller puts on a cordoned node.
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// The kubelet-health taints (Kubernetes puts `not-ready` on every new Node until its kubelet
/// reports, and `unreachable` when it stops). Placement does not read them: whether a node can
/// run instances is what its *agent's* Lease says (rule 1), as a DaemonSet's pods tolerate
/// them; a node that is really cut off cannot renew that Lease either.
pub const KUBELET_HEALTH_TAINTS: [&str; 2] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
];

/// Longest [`Shortfall::message`]; conditions stay readable and bounded.
pub const MAX_MESSAGE_LEN: usize = 1024;

/// A share of a node: what one replica takes, what a node has, or what others hold.
/// A zero field does not limit (a replica that needs no memory fits any memory).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Slots of the agent's instance pool.
    pub instances: u32,
    /// Bytes of linear memory, reserved at the limit.
    pub memory_bytes: u64,
}

impl Footprint {
    /// What one replica reserves on its node: it runs up to `maxConcurrentMessages` instances
    /// (as the agent clamps it), each up to its memory limit.
    pub fn of_replica(limits: &ResolvedLimits) -> Self {
        let instances = limits
            .max_concurrent_messages
            .clamp(1, MAX_CONCURRENT_MESSAGES);
        Self {
            instances,
            memory_bytes: limits.memory_bytes.saturating_mul(u64::from(instances)),
        }
    }

    /// What a Placement (of any component) reserves on its node, for [`NodeView::committed`].
    /// Limits that do not resolve (the operator writes only resolved ones) count as the
    /// defaults.
    pub fn of_placement(spec: &PlacementSpec) -> Self {
        let limits = spec.limits.resolve().unwrap_or_default();
        Self::of_replica(&limits).times(u32::try_from(spec.instances).unwrap_or(0))
    }

    /// `times` of this footprint.
    pub fn times(self, times: u32) -> Self {
        Self {
            instances: self.instances.saturating_mul(times),
            memory_bytes: self.memory_bytes.saturating_mul(u64::from(times)),
        }
    }

    /// Both fields added.
    pub fn plus(self, other: Self) -> Self {
        Self {
            instances: self.instances.saturating_add(other.instances),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
        }
    }

    /// Both fields subtracted, never below zero.
    fn minus(self, other: Self) -> Self {
        Self {
            instances: self.instances.saturating_sub(other.instances),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
        }
    }

    /// How many of `each` fit in `self`, at most [`MAX_INSTANCES`].
    fn fits(self, each: Self) -> u32 {
        let cap = max_instances();
        // A zero need does not limit.
        let axis = |have: u64, need: u64| {
            have.checked_div(need)
                .map_or(cap, |n| u32::try_from(n).unwrap_or(u32::MAX).min(cap))
        };
        axis(u64::from(self.instances), u64::from(each.instances))
            .min(axis(self.memory_bytes, each.memory_bytes))
    }
}

fn max_instances() -> u32 {
    u32::try_from(MAX_INSTANCES).unwrap_or(0)
}

/// A node taint, with the effect parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTaint {
    pub key: String,
    pub value: Option<String>,
    pub effect: TaintEffect,
}

impl From<&Taint> for NodeTaint {
    /// An effect Kubernetes does not define is taken as `NoSchedule`: a taint nobody
    /// understands keeps new replicas away rather than being ignored.
    fn from(t: &Taint) -> Self {
        let effect = match t.effect.as_str() {
            "NoExecute" => TaintEffect::NoExecute,
            "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
            _ => TaintEffect::NoSchedule,
        };
        Self {
            key: t.key.clone(),
            value: t.value.clone().filter(|v| !v.is_empty()),
            effect,
        }
    }
}

impl std::fmt::Display for NodeTaint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key)?;
        if let Some(v) = &self.value {
            write!(f, "={v}")?;
        }
        write!(f, ":{}", effect_name(self.effect))
    }
}

fn effect_name(effect: TaintEffect) -> &'static str {
    match effect {
        TaintEffect::NoSchedule => "NoSchedule",
        TaintEffect::PreferNoSchedule => "PreferNoSchedule",
        TaintEffect::NoExecute => "NoExecute",
    }
}

/// One candidate node as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<NodeTaint>,
    /// Whether the node's agent Lease is live (see [`is_lease_live`]).
    pub agent_live: bool,
    /// What the node's agent reports it can run.
    pub capacity: Footprint,
    /// What other components' Placements on the node reserve (this component's own are not
    /// counted: they are what is being decided).
    pub committed: Footprint,
}

impl NodeView {
    /// The view of a `Node` object. A cordoned node (`spec.unschedulable`) counts as tainted
    /// `node.kubernetes.io/unschedulable:NoSchedule` even where no node controller adds the
    /// taint (a bare control plane in development and tests). The [`KUBELET_HEALTH_TAINTS`]
    /// are left out: the agent's Lease is the liveness placement goes by.
    pub fn from_node(
        node: &Node,
        agent_live: bool,
        capacity: Footprint,
        committed: Footprint,
    ) -> Self {
        let spec = node.spec.as_ref();
        let mut taints: Vec<NodeTaint> = spec
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .filter(|t| !KUBELET_HEALTH_TAINTS.contains(&t.key.as_str()))
            .map(NodeTaint::from)
            .collect();
        let cordoned = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        if cordoned && !taints.iter().any(|t| t.key == UNSCHEDULABLE_TAINT) {
            taints.push(NodeTaint {
                key: UNSCHEDULABLE_TAINT.to_owned(),
                value: None,
                effect: TaintEffect::NoSchedule,
            });
        }
        Self {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints,
            agent_live,
            capacity,
            committed,
        }
    }
}

/// Whether an agent's Lease was renewed within its duration at `now`. A Lease without a renew
/// time or a duration is not live (fail closed). A renew time ahead of `now` (clock skew) is
/// live.
pub fn is_lease_live(lease: &LeaseSpec, now: jiff::Timestamp) -> bool {
    let (Some(renewed), Some(duration)) = (
        lease.renew_time.as_ref().or(lease.acquire_time.as_ref()),
        lease.lease_duration_seconds,
    ) else {
        return false;
    };
    duration > 0 && now.duration_since(renewed.0) < jiff::SignedDuration::from_secs(duration.into())
}

/// Whether `toleration` tolerates `taint`, as Kubernetes decides it: an effect, if given, must
/// match; a key, if given, must match; `Exists` matches any value, `Equal` (the default) the
/// same value. An empty key tolerates every taint only with `Exists` (Kubernetes rejects an
/// empty key with `Equal`; here it tolerates nothing).
pub fn tolerates(toleration: &Toleration, taint: &NodeTaint) -> bool {
    if toleration.effect.is_some_and(|e| e != taint.effect) {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    let exists = toleration.operator == Some(TolerationOperator::Exists);
    if key.is_empty() {
        return exists;
    }
    if key != taint.key {
        return false;
    }
    exists || toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
}

/// Whether every label of `selector` is on the node with the same value.
pub fn matches_selector(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// What every Placement of a component carries, whatever its node.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementContent {
    /// The approved digest.
    pub digest: Digest,
    pub artifact: Artifact,
    /// Request ∩ approval, in API shape (`Capabilities::from(&CapabilitySet)`).
    pub grant: Capabilities,
    pub limits: Limits,
    pub config: Vec<ConfigEntry>,
    pub dev_mode: bool,
    /// `spec.http` with the component's port, for an HTTP component.
    pub http: Option<airssys_crds::http::PlacementHttp>,
}

/// The artifact as a Placement carries it: pinned to the approved `digest`, so nothing reading
/// the Placement can follow a tag to other bytes. An OCI reference becomes
/// `registry/repository@digest`; a ConfigMap artifact gets the digest; an HTTPS artifact
/// already names it.
pub fn pin(artifact: &Artifact, digest: &Digest) -> Artifact {
    let mut pinned = artifact.clone();
    if let Some(oci) = pinned.oci.as_mut()
        && let Ok(parsed) = oci_client::Reference::try_from(oci.reference.as_str())
    {
        oci.reference = format!("{}/{}@{digest}", parsed.registry(), parsed.repository());
    }
    if let Some(cm) = pinned.config_map.as_mut() {
        cm.digest = Some(digest.to_string());
    }
    pinned
}

/// An approved component to place.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementRequest {
    /// Its namespace (where its Placements live).
    pub namespace: String,
    /// Name, uid and the generation the approval belongs to.
    pub component: ComponentRef,
    pub replicas: u32,
    pub policy: PlacementPolicy,
    /// What one replica reserves on a node ([`Footprint::of_replica`]).
    pub footprint: Footprint,
    pub content: PlacementContent,
}

impl PlacementRequest {
    /// The spec of this component's Placement on `node` with `instances` replicas.
    pub fn spec(&self, node: &str, instances: u32) -> PlacementSpec {
        let c = &self.content;
        PlacementSpec {
            node_name: node.to_owned(),
            component: self.component.clone(),
            digest: c.digest.clone(),
            artifact: c.artifact.clone(),
            grant: c.grant.clone(),
            limits: c.limits.clone(),
            instances: i32::try_from(instances)
                .unwrap_or(MAX_INSTANCES)
                .min(MAX_INSTANCES),
            config: c.config.clone(),
            dev_mode: c.dev_mode,
            http: c.http.clone(),
        }
    }
}

/// A Placement of the component as it is in the cluster (not being deleted).
#[derive(Debug, Clone, PartialEq)]
pub struct ExistingPlacement {
    /// `metadata.name`.
    pub name: String,
    pub spec: PlacementSpec,
}

/// Replicas on one node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeShare {
    pub node: String,
    pub instances: u32,
}

/// One write to the cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum PlacementChange {
    /// A new Placement (server-side apply creates it; the name is [`placement_name`]).
    Create { name: String, spec: PlacementSpec },
    /// An existing Placement whose spec differs from the desired one.
    Update { name: String, spec: PlacementSpec },
    /// A Placement that should not exist: its node lost its share, the node is gone, or it
    /// duplicates another on the same node.
    Delete { name: String, node: String },
}

/// Replicas that could not be placed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    pub unplaced: u32,
    /// For the `Scheduled=False` condition: the causes by node count, and what to do. At most
    /// [`MAX_MESSAGE_LEN`] bytes.
    pub message: String,
}

/// What the cluster should hold for one component.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementPlan {
    /// Nodes with at least one replica, sorted by node name.
    pub shares: Vec<NodeShare>,
    /// Creates, then updates (each by node name), then deletes (by Placement name): applied in
    /// this order, new instances start before old ones are removed.
    pub changes: Vec<PlacementChange>,
    /// `None` when every replica is placed.
    pub shortfall: Option<Shortfall>,
}

impl PlacementPlan {
    /// Replicas placed.
    pub fn placed(&self) -> u32 {
        self.shares.iter().map(|s| s.instances).sum()
    }
}

/// The name of a component's Placement on a node: readable, a valid object name (at most 253
/// characters), and distinct for every (component, node) pair thanks to a hash of both.
pub fn placement_name(component: &str, node: &str) -> String {
    let hash = Sha256::new()
        .chain_update(component.as_bytes())
        .chain_update([0])
        .chain_update(node.as_bytes())
        .finalize();
    let suffix = hex::encode(&hash[..5]);
    let mut prefix = format!("{component}-{node}");
    let mut end = prefix.len().min(253 - 1 - suffix.len());
    while !prefix.is_char_boundary(end) {
        end -= 1;
    }
    prefix.truncate(end);
    let trimmed = prefix.trim_end_matches(['-', '.']);
    format!("{trimmed}-{suffix}")
}

/// Why a node takes no more replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Limit {
    NoAgent,
    Selector,
    /// An untolerated `NoExecute` or `NoSchedule` taint (the first, in the node's order).
    Taint(String),
    /// Not even one replica fits the node's whole capacity.
    TooSmall,
    /// Other components and this one's replicas fill it.
    Full,
}

/// A node's standing for this component.
#[derive(Debug, Clone)]
struct Candidate<'a> {
    node: &'a NodeView,
    /// Replicas it may hold (0 for an excluded node).
    room: u32,
    /// Why it holds no more than `room`, when the shares reach it.
    limit: Limit,
    /// Replicas of the component it runs now.
    running: u32,
    /// No untolerated `PreferNoSchedule` taint.
    preferred: bool,
}

fn assess<'a>(req: &PlacementRequest, node: &'a NodeView, running: u32) -> Candidate<'a> {
    let tolerations = &req.policy.tolerations;
    let untolerated = |effect: TaintEffect| {
        node.taints
            .iter()
            .find(|t| t.effect == effect && !tolerations.iter().any(|tol| tolerates(tol, t)))
    };
    let mut c = Candidate {
        node,
        room: 0,
        limit: Limit::Full,
        running,
        preferred: untolerated(TaintEffect::PreferNoSchedule).is_none(),
    };
    if !node.agent_live {
        c.limit = Limit::NoAgent;
        return c;
    }
    if !matches_selector(&req.policy.node_selector, &node.labels) {
        c.limit = Limit::Selector;
        return c;
    }
    if let Some(t) = untolerated(TaintEffect::NoExecute) {
        c.limit = Limit::Taint(t.to_string());
        return c;
    }
    if node.capacity.fits(req.footprint) == 0 {
        c.limit = Limit::TooSmall;
        return c;
    }
    c.room = node.capacity.minus(node.committed).fits(req.footprint);
    if let Some(t) = untolerated(TaintEffect::NoSchedule) {
        // Keeps what it runs, takes nothing new.
        if running < c.room {
            c.room = running;
            c.limit = Limit::Taint(t.to_string());
        }
    }
    c
}

/// The largest level `l` with Σ min(room, l) ≤ `target`.
fn level(rooms: &[u32], target: u64) -> u32 {
    let filled = |l: u32| rooms.iter().map(|&r| u64::from(r.min(l))).sum::<u64>();
    let (mut lo, mut hi) = (0u32, rooms.iter().copied().max().unwrap_or(0));
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if filled(mid) <= target {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// Plans where `req`'s replicas run. `nodes` are all candidate nodes (any order, names unique);
/// `current` are the component's Placements (others are ignored).
pub fn place(
    req: &PlacementRequest,
    nodes: &[NodeView],
    current: &[ExistingPlacement],
) -> PlacementPlan {
    let mut nodes: Vec<&NodeView> = nodes.iter().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes.dedup_by(|a, b| a.name == b.name);

    let mut ours: Vec<&ExistingPlacement> = current
        .iter()
        .filter(|p| p.spec.component.name == req.component.name)
        .collect();
    ours.sort_by(|a, b| (&a.spec.node_name, &a.name).cmp(&(&b.spec.node_name, &b.name)));
    let mut by_node: BTreeMap<&str, Vec<&ExistingPlacement>> = BTreeMap::new();
    for p in &ours {
        by_node
            .entry(p.spec.node_name.as_str())
            .or_default()
            .push(p);
    }
    let running = |node: &str| -> u32 {
        by_node
            .get(node)
            .into_iter()
            .flatten()
            .fold(0u32, |sum, p| {
                sum.saturating_add(u32::try_from(p.spec.instances).unwrap_or(0))
            })
    };

    let candidates: Vec<Candidate<'_>> = nodes
        .iter()
        .map(|n| assess(req, n, running(&n.name)))
        .collect();
    let replicas = req.replicas.min(max_instances());
    let rooms: Vec<u32> = candidates.iter().map(|c| c.room).collect();
    let total_room: u64 = rooms.iter().map(|&r| u64::from(r)).sum();
    let target = u64::from(replicas).min(total_room);
    let lvl = level(&rooms, target);
    let mut shares: Vec<u32> = rooms.iter().map(|&r| r.min(lvl)).collect();
    let base: u64 = shares.iter().map(|&s| u64::from(s)).sum();
    let extra = usize::try_from(target - base).unwrap_or(usize::MAX);
    // Who gets one more: those already running more than the level, then preferred nodes,
    // then the least loaded by other components (so many small components spread over the
    // nodes instead of piling onto the first by name), then by name (candidates are in name
    // order; the sort is stable).
    let mut open: Vec<usize> = (0..candidates.len()).filter(|&i| rooms[i] > lvl).collect();
    open.sort_by_key(|&i| {
        let c = &candidates[i];
        (c.running <= lvl, !c.preferred, c.node.committed.instances)
    });
    for &i in open.iter().take(extra) {
        shares[i] += 1;
    }

    let mut creates = Vec::new();
    let mut updates = Vec::new();
    let mut deletes = Vec::new();
    let mut seen: Vec<&str> = Vec::with_capacity(candidates.len());
    for (c, &share) in candidates.iter().zip(&shares) {
        let node = c.node.name.as_str();
        seen.push(node);
        let existing = by_node.get(node).map(Vec::as_slice).unwrap_or_default();
        let canonical = placement_name(&req.component.name, node);
        // Keep the canonically named one if there are several; the rest are duplicates.
        let keep = existing
            .iter()
            .position(|p| p.name == canonical)
            .or((!existing.is_empty()).then_some(0));
        for (i, p) in existing.iter().enumerate() {
            if share == 0 || Some(i) != keep {
                deletes.push(PlacementChange::Delete {
                    name: p.name.clone(),
                    node: node.to_owned(),
                });
            }
        }
        if share == 0 {
            continue;
        }
        let spec = req.spec(node, share);
        match keep.map(|i| existing[i]) {
            Some(p) if p.spec == spec => {}
            Some(p) => updates.push(PlacementChange::Update {
                name: p.name.clone(),
                spec,
            }),
            None => creates.push(PlacementChange::Create {
                name: canonical,
                spec,
            }),
        }
    }
    for (node, placements) in &by_node {
        if seen.binary_search(node).is_err() {
            deletes.extend(placements.iter().map(|p| PlacementChange::Delete {
                name: p.name.clone(),
                node: (*node).to_owned(),
            }));
        }
    }
    deletes.sort_by(|a, b| change_name(a).cmp(change_name(b)));

    let placed = u32::try_from(target).unwrap_or(u32::MAX);
    let shortfall = (placed < req.replicas).then(|| Shortfall {
        unplaced: req.replicas - placed,
        message: explain(req, &candidates, &shares, placed),
    });
    PlacementPlan {
        shares: candidates
            .iter()
            .zip(&shares)
            .filter(|&(_, &s)| s > 0)
            .map(|(c, &s)| NodeShare {
                node: c.node.name.clone(),
                instances: s,
            })
            .collect(),
        changes: creates.into_iter().chain(updates).chain(deletes).collect(),
        shortfall,
    }
}

fn change_name(change: &PlacementChange) -> &str {
    match change {
        PlacementChange::Create { name, .. }
        | PlacementChange::Update { name, .. }
        | PlacementChange::Delete { name, .. } => name,
    }
}

/// "3 nodes have" / "1 node has".
fn nodes(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 node {one}")
    } else {
        format!("{n} nodes {many}")
    }
}

/// The `Scheduled=False` message: why each node took no more, counted, and what to do.
fn explain(
    req: &PlacementRequest,
    candidates: &[Candidate<'_>],
    shares: &[u32],
    placed: u32,
) -> String {
    let mut causes = Vec::new();
    let mut advice = Vec::new();
    if candidates.is_empty() {
        causes.push("no node runs an agent".to_owned());
        advice.push("check that the agent DaemonSet runs");
    }
    // Every candidate is at its room here (placed = total room), so its limit is the cause.
    let limits: Vec<&Limit> = candidates
        .iter()
        .zip(shares)
        .filter(|&(c, &s)| s >= c.room)
        .map(|(c, _)| &c.limit)
        .collect();
    let count = |f: fn(&Limit) -> bool| limits.iter().filter(|l| f(l)).count();
    let no_agent = count(|l| matches!(l, Limit::NoAgent));
    if no_agent > 0 {
        causes.push(nodes(
            no_agent,
            "has no live agent Lease",
            "have no live agent Lease",
        ));
        advice.push("check the agent on those nodes");
    }
    let selector = count(|l| matches!(l, Limit::Selector));
    if selector > 0 {
        let wanted: Vec<String> = req
            .policy
            .node_selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        causes.push(format!(
            "{} nodeSelector {}",
            nodes(selector, "does not match", "do not match"),
            bounded(&wanted.join(","), 200)
        ));
        advice.push("label nodes to match spec.placement.nodeSelector");
    }
    let mut taints: BTreeMap<&str, usize> = BTreeMap::new();
    for l in &limits {
        if let Limit::Taint(t) = l {
            *taints.entry(t.as_str()).or_default() += 1;
        }
    }
    for (taint, n) in taints.iter().take(3) {
        causes.push(format!(
            "{} taint {} without toleration",
            nodes(*n, "has", "have"),
            bounded(taint, 200)
        ));
    }
    if taints.len() > 3 {
        causes.push(format!(
            "{} more taints without toleration",
            taints.len() - 3
        ));
    }
    if !taints.is_empty() {
        advice.push("add tolerations to spec.placement.tolerations");
    }
    let small = count(|l| matches!(l, Limit::TooSmall));
    if small > 0 {
        causes.push(format!(
            "{} for one replica ({} instance slots, {} MiB of memory)",
            nodes(small, "is too small", "are too small"),
            req.footprint.instances,
            req.footprint.memory_bytes.div_ceil(1 << 20)
        ));
        advice.push("lower spec.limits.memory or maxConcurrentMessages");
    }
    let full = count(|l| matches!(l, Limit::Full));
    if full > 0 {
        causes.push(nodes(full, "is full", "are full"));
        advice.push("add agent nodes or capacity");
    }
    advice.push("lower spec.replicas");
    let mut message = format!(
        "{} of {} replicas unplaced: {}. To place them: {}",
        req.replicas - placed,
        req.replicas,
        causes.join("; "),
        advice.join(", or ")
    );
    message.push('.');
    bounded(&message, MAX_MESSAGE_LEN)
}

/// `text` cut to at most `max` bytes on a character boundary, marked with `...` when cut.
fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

    use super::*;
    use airssys_crds::artifact::OciArtifact;
    use airssys_crds::capability::EnvCapability;

    const MIB: u64 = 1 << 20;

    fn digest(n: u8) -> Digest {
        Digest::from_sha256(&[n; 32])
    }

    /// Test toleration grammar: `key=value[:Effect]` (Equal), `exists [key][:Effect]`
    /// (Exists), `=value` (Equal with an empty key).
    fn toleration(raw: &str) -> Toleration {
        let (rest, exists) = match raw.strip_prefix("exists") {
            Some(rest) => (rest.trim(), true),
            None => (raw, false),
        };
        let (body, effect) = match rest.split_once(':') {
            Some((body, effect)) => (body, Some(effect_of(effect))),
            None => (rest, None),
        };
        let (key, value) = match body.split_once('=') {
            Some((k, v)) => (k, Some(v.to_owned())),
            None => (body, None),
        };
        Toleration {
            key: (!key.is_empty()).then(|| key.to_owned()),
            operator: Some(if exists {
                TolerationOperator::Exists
            } else {
                TolerationOperator::Equal
            }),
            value,
            effect,
        }
    }

    fn effect_of(raw: &str) -> TaintEffect {
        match raw {
            "NoSchedule" => TaintEffect::NoSchedule,
            "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
            "NoExecute" => TaintEffect::NoExecute,
            other => panic!("effect {other:?}"),
        }
    }

    /// Test taint grammar: `key[=value]:Effect`.
    fn taint(raw: &str) -> NodeTaint {
        let (body, effect) = raw.split_once(':').expect("taint needs an effect");
        let (key, value) = match body.split_once('=') {
            Some((k, v)) => (k, Some(v.to_owned())),
            None => (body, None),
        };
        NodeTaint {
            key: key.to_owned(),
            value,
            effect: effect_of(effect),
        }
    }

    #[test]
    fn tolerates_spec() {
        let rows = [
            (
                "Equal: same key and value tolerates",
                "gpu=a100",
                "gpu=a100:NoSchedule",
                true,
            ),
            (
                "Equal: a different value does not",
                "gpu=a100",
                "gpu=h100:NoSchedule",
                false,
            ),
            (
                "Equal: a different key does not",
                "tpu=a100",
                "gpu=a100:NoSchedule",
                false,
            ),
            (
                "Equal with an empty value matches a taint without value",
                "gpu=",
                "gpu:NoSchedule",
                true,
            ),
            (
                "Equal with a value does not match a taint without value",
                "gpu=x",
                "gpu:NoSchedule",
                false,
            ),
            (
                "Exists tolerates any value of its key",
                "exists gpu",
                "gpu=h100:NoExecute",
                true,
            ),
            (
                "Exists does not tolerate another key",
                "exists gpu",
                "tpu:NoSchedule",
                false,
            ),
            (
                "empty key with Exists tolerates every taint",
                "exists",
                "anything=x:NoExecute",
                true,
            ),
            (
                "empty key with Exists and an effect tolerates only that effect",
                "exists :NoSchedule",
                "a:NoExecute",
                false,
            ),
            (
                "empty key with Exists and an effect tolerates that effect",
                "exists :NoSchedule",
                "a=b:NoSchedule",
                true,
            ),
            (
                "empty key with Equal tolerates nothing (Kubernetes rejects it)",
                "=x",
                "a=x:NoSchedule",
                false,
            ),
            (
                "effect must match the taint's effect",
                "gpu=a:NoSchedule",
                "gpu=a:NoExecute",
                false,
            ),
            (
                "an effect that matches tolerates",
                "gpu=a:NoExecute",
                "gpu=a:NoExecute",
                true,
            ),
            (
                "no effect matches every effect",
                "gpu=a",
                "gpu=a:PreferNoSchedule",
                true,
            ),
        ];
        for (rule, tol, t, want) in rows {
            assert_eq!(tolerates(&toleration(tol), &taint(t)), want, "{rule}");
        }
        // The operator field defaults to Equal.
        let default_op = Toleration {
            operator: None,
            ..toleration("gpu=a")
        };
        assert!(
            tolerates(&default_op, &taint("gpu=a:NoSchedule")),
            "default operator is Equal"
        );
        assert!(
            !tolerates(&default_op, &taint("gpu=b:NoSchedule")),
            "default operator is Equal"
        );
    }

    /// A node in a row. Capacity is in instance slots and MiB.
    #[derive(Clone)]
    struct N {
        name: &'static str,
        labels: &'static [(&'static str, &'static str)],
        taints: &'static [&'static str],
        live: bool,
        slots: u32,
        mib: u64,
        used_slots: u32,
        used_mib: u64,
    }

    const fn node(name: &'static str) -> N {
        N {
            name,
            labels: &[],
            taints: &[],
            live: true,
            slots: 100,
            mib: 64 * 1024,
            used_slots: 0,
            used_mib: 0,
        }
    }

    impl N {
        fn view(&self) -> NodeView {
            NodeView {
                name: self.name.to_owned(),
                labels: self
                    .labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                taints: self.taints.iter().map(|t| taint(t)).collect(),
                agent_live: self.live,
                capacity: Footprint {
                    instances: self.slots,
                    memory_bytes: self.mib * MIB,
                },
                committed: Footprint {
                    instances: self.used_slots,
                    memory_bytes: self.used_mib * MIB,
                },
            }
        }
    }

    fn request(replicas: u32) -> PlacementRequest {
        PlacementRequest {
            namespace: "team".into(),
            component: ComponentRef {
                name: "echo".into(),
                uid: "uid-1".into(),
                generation: 2,
            },
            replicas,
            policy: PlacementPolicy::default(),
            footprint: Footprint {
                instances: 1,
                memory_bytes: 64 * MIB,
            },
            content: PlacementContent {
                digest: digest(1),
                artifact: Artifact {
                    oci: Some(OciArtifact {
                        reference: "registry.example.com/team/echo:1.0".into(),
                        pull_secrets: Vec::new(),
                        insecure: false,
                    }),
                    https: None,
                    config_map: None,
                },
                grant: Capabilities {
                    env: vec![EnvCapability {
                        name: "GREETING".into(),
                    }],
                    ..Capabilities::default()
                },
                limits: Limits::default(),
                config: Vec::new(),
                dev_mode: false,
                http: None,
            },
        }
    }

    /// An existing Placement in a row: node, instances, and how it differs from the desired
    /// one: "" (not at all), "digest", "grant", "generation", "limits", "old-name" (named
    /// `old-<node>`), "other-component".
    type Current = (&'static str, u32, &'static str);

    fn existing(req: &PlacementRequest, (node, instances, diff): Current) -> ExistingPlacement {
        let mut spec = req.spec(node, instances);
        let mut name = placement_name(&req.component.name, node);
        match diff {
            "" => {}
            "digest" => spec.digest = digest(9),
            "grant" => spec.grant = Capabilities::default(),
            "generation" => spec.component.generation = 1,
            "limits" => spec.limits.memory = Some("128Mi".into()),
            "old-name" => name = format!("old-{node}"),
            "other-component" => {
                spec.component.name = "other".into();
                name = placement_name("other", node);
            }
            other => panic!("diff {other:?}"),
        }
        ExistingPlacement { name, spec }
    }

    /// `create <node> <n>`, `update <node> <n>`, `delete <node>` (canonical name) or
    /// `delete <node> <name>`.
    fn describe(req: &PlacementRequest, change: &PlacementChange) -> String {
        match change {
            PlacementChange::Create { name, spec } => {
                assert_eq!(*name, placement_name(&req.component.name, &spec.node_name));
                format!("create {} {}", spec.node_name, spec.instances)
            }
            PlacementChange::Update { spec, .. } => {
                format!("update {} {}", spec.node_name, spec.instances)
            }
            PlacementChange::Delete { name, node } => {
                if *name == placement_name(&req.component.name, node) {
                    format!("delete {node}")
                } else {
                    format!("delete {node} {name}")
                }
            }
        }
    }

    struct Row {
        rule: &'static str,
        replicas: u32,
        selector: &'static [(&'static str, &'static str)],
        tolerations: &'static [&'static str],
        /// Instance slots and MiB per replica.
        footprint: (u32, u64),
        nodes: Vec<N>,
        current: &'static [Current],
        shares: &'static [(&'static str, u32)],
        changes: &'static [&'static str],
        /// Substrings of the shortfall message; empty when everything is placed.
        unplaced: &'static [&'static str],
    }

    const ROW: Row = Row {
        rule: "",
        replicas: 1,
        selector: &[],
        tolerations: &[],
        footprint: (1, 64),
        nodes: Vec::new(),
        current: &[],
        shares: &[],
        changes: &[],
        unplaced: &[],
    };

    fn abc() -> Vec<N> {
        vec![node("a"), node("b"), node("c")]
    }

    #[test]
    fn placement_spec() {
        let rows = [
            // Spread.
            Row {
                rule: "replicas spread evenly over nodes, extras by node name",
                replicas: 5,
                nodes: abc(),
                shares: &[("a", 2), ("b", 2), ("c", 1)],
                changes: &["create a 2", "create b 2", "create c 1"],
                ..ROW
            },
            Row {
                rule: "one Placement per node: instances count the replicas on it",
                replicas: 3,
                nodes: vec![node("a")],
                shares: &[("a", 3)],
                changes: &["create a 3"],
                ..ROW
            },
            Row {
                rule: "fewer replicas than nodes: one per node, by name",
                replicas: 2,
                nodes: abc(),
                shares: &[("a", 1), ("b", 1)],
                changes: &["create a 1", "create b 1"],
                ..ROW
            },
            Row {
                rule: "fewer replicas than nodes: the nodes least loaded by other components first",
                replicas: 2,
                nodes: vec![
                    N {
                        used_slots: 7,
                        ..node("a")
                    },
                    N {
                        used_slots: 3,
                        ..node("b")
                    },
                    node("c"),
                ],
                shares: &[("b", 1), ("c", 1)],
                changes: &["create b 1", "create c 1"],
                ..ROW
            },
            // Leases.
            Row {
                rule: "only nodes with a live agent lease are used",
                replicas: 4,
                nodes: vec![
                    node("a"),
                    N {
                        live: false,
                        ..node("b")
                    },
                    node("c"),
                ],
                shares: &[("a", 2), ("c", 2)],
                changes: &["create a 2", "create c 2"],
                ..ROW
            },
            Row {
                rule: "no live agent anywhere: nothing placed, says to check the agents",
                replicas: 2,
                nodes: vec![
                    N {
                        live: false,
                        ..node("a")
                    },
                    N {
                        live: false,
                        ..node("b")
                    },
                ],
                unplaced: &[
                    "2 of 2 replicas unplaced",
                    "2 nodes have no live agent Lease",
                    "check the agent",
                ],
                ..ROW
            },
            Row {
                rule: "no nodes at all: says no node runs an agent",
                replicas: 1,
                unplaced: &[
                    "1 of 1 replicas unplaced: no node runs an agent",
                    "DaemonSet",
                ],
                ..ROW
            },
            // Node selector.
            Row {
                rule: "nodeSelector must match all its labels",
                replicas: 2,
                selector: &[("disk", "ssd"), ("zone", "x")],
                nodes: vec![
                    N {
                        labels: &[("disk", "ssd"), ("zone", "x"), ("extra", "1")],
                        ..node("a")
                    },
                    N {
                        labels: &[("disk", "ssd")],
                        ..node("b")
                    },
                    N {
                        labels: &[("disk", "hdd"), ("zone", "x")],
                        ..node("c")
                    },
                ],
                shares: &[("a", 2)],
                changes: &["create a 2"],
                ..ROW
            },
            Row {
                rule: "nodeSelector matching no node: unplaced, the message names the selector",
                replicas: 5,
                selector: &[("disk", "ssd")],
                nodes: abc(),
                unplaced: &[
                    "5 of 5 replicas unplaced",
                    "3 nodes do not match nodeSelector disk=ssd",
                    "label nodes",
                ],
                ..ROW
            },
            // Taints.
            Row {
                rule: "an untolerated NoSchedule taint keeps new replicas off a node",
                replicas: 2,
                nodes: vec![
                    N {
                        taints: &["dedicated=gpu:NoSchedule"],
                        ..node("a")
                    },
                    node("b"),
                ],
                shares: &[("b", 2)],
                changes: &["create b 2"],
                ..ROW
            },
            Row {
                rule: "an untolerated NoSchedule taint keeps the replicas a node runs, adds none",
                replicas: 4,
                nodes: vec![
                    N {
                        taints: &["dedicated=gpu:NoSchedule"],
                        ..node("a")
                    },
                    node("b"),
                ],
                current: &[("a", 1, ""), ("b", 1, "")],
                shares: &[("a", 1), ("b", 3)],
                changes: &["update b 3"],
                ..ROW
            },
            Row {
                rule: "an untolerated NoExecute taint moves the replicas a node runs",
                replicas: 2,
                nodes: vec![
                    N {
                        taints: &["broken:NoExecute"],
                        ..node("a")
                    },
                    node("b"),
                ],
                current: &[("a", 1, ""), ("b", 1, "")],
                shares: &[("b", 2)],
                changes: &["update b 2", "delete a"],
                ..ROW
            },
            Row {
                rule: "a cordoned node keeps its replicas (unschedulable is NoSchedule)",
                replicas: 2,
                nodes: vec![
                    N {
                        taints: &["node.kubernetes.io/unschedulable:NoSchedule"],
                        ..node("a")
                    },
                    node("b"),
                ],
                current: &[("a", 1, ""), ("b", 1, "")],
                shares: &[("a", 1), ("b", 1)],
                ..ROW
            },
            Row {
                rule: "a matching toleration lets a tainted node be used",
                replicas: 2,
                tolerations: &["dedicated=gpu:NoSchedule"],
                nodes: vec![
                    N {
                        taints: &["dedicated=gpu:NoSchedule"],
                        ..node("a")
                    },
                    node("b"),
                ],
                shares: &[("a", 1), ("b", 1)],
                changes: &["create a 1", "create b 1"],
                ..ROW
            },
            Row {
                rule: "every taint of a node must be tolerated",
                replicas: 2,
                tolerations: &["dedicated=gpu"],
                nodes: vec![
                    N {
                        taints: &["dedicated=gpu:NoSchedule", "maintenance:NoExecute"],
                        ..node("a")
                    },
                    node("b"),
                ],
                shares: &[("b", 2)],
                changes: &["create b 2"],
                ..ROW
            },
            Row {
                rule: "an Exists toleration with an empty key tolerates every taint",
                replicas: 2,
                tolerations: &["exists"],
                nodes: vec![
                    N {
                        taints: &["x=1:NoSchedule", "y:NoExecute"],
                        ..node("a")
                    },
                    node("b"),
                ],
                shares: &[("a", 1), ("b", 1)],
                changes: &["create a 1", "create b 1"],
                ..ROW
            },
            Row {
                rule: "a toleration for another effect does not tolerate",
                replicas: 2,
                tolerations: &["dedicated=gpu:NoSchedule"],
                nodes: vec![
                    N {
                        taints: &["dedicated=gpu:NoExecute"],
                        ..node("a")
                    },
                    node("b"),
                ],
                shares: &[("b", 2)],
                changes: &["create b 2"],
                ..ROW
            },
            Row {
                rule: "taints without toleration: the message names each taint and how many nodes",
                replicas: 3,
                nodes: vec![
                    N {
                        taints: &["dedicated=gpu:NoSchedule"],
                        ..node("a")
                    },
                    N {
                        taints: &["dedicated=gpu:NoSchedule"],
                        ..node("b")
                    },
                    N {
                        taints: &["spot:NoExecute"],
                        ..node("c")
                    },
                ],
                unplaced: &[
                    "3 of 3 replicas unplaced",
                    "2 nodes have taint dedicated=gpu:NoSchedule without toleration",
                    "1 node has taint spot:NoExecute without toleration",
                    "add tolerations to spec.placement.tolerations",
                ],
                ..ROW
            },
            Row {
                rule: "PreferNoSchedule is a preference: untainted nodes first",
                replicas: 1,
                nodes: vec![
                    N {
                        taints: &["spot:PreferNoSchedule"],
                        ..node("a")
                    },
                    node("b"),
                ],
                shares: &[("b", 1)],
                changes: &["create b 1"],
                ..ROW
            },
            Row {
                rule: "PreferNoSchedule is only a preference: the node is used when spreading needs it",
                replicas: 3,
                nodes: vec![
                    N {
                        taints: &["spot:PreferNoSchedule"],
                        ..node("a")
                    },
                    node("b"),
                ],
                shares: &[("a", 1), ("b", 2)],
                changes: &["create a 1", "create b 2"],
                ..ROW
            },
            Row {
                rule: "PreferNoSchedule does not move a replica already there",
                replicas: 1,
                nodes: vec![
                    N {
                        taints: &["spot:PreferNoSchedule"],
                        ..node("a")
                    },
                    node("b"),
                ],
                current: &[("a", 1, "")],
                shares: &[("a", 1)],
                ..ROW
            },
            Row {
                rule: "a tolerated PreferNoSchedule taint is no reason to avoid a node",
                replicas: 1,
                tolerations: &["exists spot"],
                nodes: vec![
                    N {
                        taints: &["spot:PreferNoSchedule"],
                        ..node("a")
                    },
                    node("b"),
                ],
                shares: &[("a", 1)],
                changes: &["create a 1"],
                ..ROW
            },
            // Stability.
            Row {
                rule: "scaling 3 to 5 keeps the first 3 where they are",
                replicas: 5,
                nodes: vec![node("a"), node("b"), node("c"), node("d"), node("e")],
                current: &[("c", 1, ""), ("d", 1, ""), ("e", 1, "")],
                shares: &[("a", 1), ("b", 1), ("c", 1), ("d", 1), ("e", 1)],
                changes: &["create a 1", "create b 1"],
                ..ROW
            },
            Row {
                rule: "scaling up on the same nodes only adds instances",
                replicas: 5,
                nodes: abc(),
                current: &[("a", 1, ""), ("b", 1, ""), ("c", 1, "")],
                shares: &[("a", 2), ("b", 2), ("c", 1)],
                changes: &["update a 2", "update b 2"],
                ..ROW
            },
            Row {
                rule: "extras stay on the nodes that already run them",
                replicas: 4,
                nodes: abc(),
                current: &[("a", 1, ""), ("b", 1, ""), ("c", 2, "")],
                shares: &[("a", 1), ("b", 1), ("c", 2)],
                ..ROW
            },
            Row {
                rule: "a node whose lease expired loses only its own replicas",
                replicas: 3,
                nodes: vec![
                    node("a"),
                    node("b"),
                    N {
                        live: false,
                        ..node("c")
                    },
                    node("d"),
                ],
                current: &[("b", 1, ""), ("c", 1, ""), ("d", 1, "")],
                shares: &[("a", 1), ("b", 1), ("d", 1)],
                changes: &["create a 1", "delete c"],
                ..ROW
            },
            Row {
                rule: "a lost node's replicas go to the emptiest nodes",
                replicas: 5,
                nodes: vec![
                    node("a"),
                    node("b"),
                    N {
                        live: false,
                        ..node("c")
                    },
                ],
                current: &[("a", 2, ""), ("b", 2, ""), ("c", 1, "")],
                shares: &[("a", 3), ("b", 2)],
                changes: &["update a 3", "delete c"],
                ..ROW
            },
            Row {
                rule: "a Placement on a node that no longer exists is deleted",
                replicas: 2,
                nodes: vec![node("a"), node("b")],
                current: &[("a", 1, ""), ("gone", 1, "")],
                shares: &[("a", 1), ("b", 1)],
                changes: &["create b 1", "delete gone"],
                ..ROW
            },
            Row {
                rule: "spread wins over stability: a new node takes its share",
                replicas: 3,
                nodes: vec![node("a"), node("b")],
                current: &[("a", 3, "")],
                shares: &[("a", 2), ("b", 1)],
                changes: &["create b 1", "update a 2"],
                ..ROW
            },
            Row {
                rule: "scaling down keeps the spread even",
                replicas: 3,
                nodes: abc(),
                current: &[("a", 2, ""), ("b", 2, ""), ("c", 1, "")],
                shares: &[("a", 1), ("b", 1), ("c", 1)],
                changes: &["update a 1", "update b 1"],
                ..ROW
            },
            Row {
                rule: "scaling down to fewer replicas than nodes deletes the last Placements by node name",
                replicas: 1,
                nodes: abc(),
                current: &[("a", 1, ""), ("b", 1, ""), ("c", 1, "")],
                shares: &[("a", 1)],
                changes: &["delete b", "delete c"],
                ..ROW
            },
            Row {
                rule: "replicas 0 deletes every Placement",
                replicas: 0,
                nodes: abc(),
                current: &[("a", 1, ""), ("b", 1, "digest"), ("gone", 1, "")],
                changes: &["delete a", "delete b", "delete gone"],
                ..ROW
            },
            Row {
                rule: "an unchanged component writes nothing",
                replicas: 2,
                nodes: abc(),
                current: &[("a", 1, ""), ("b", 1, "")],
                shares: &[("a", 1), ("b", 1)],
                ..ROW
            },
            // Content changes.
            Row {
                rule: "a new digest updates every Placement in place",
                replicas: 2,
                nodes: abc(),
                current: &[("a", 1, "digest"), ("b", 1, "digest")],
                shares: &[("a", 1), ("b", 1)],
                changes: &["update a 1", "update b 1"],
                ..ROW
            },
            Row {
                rule: "a new grant updates Placements in place",
                replicas: 1,
                nodes: abc(),
                current: &[("a", 1, "grant")],
                shares: &[("a", 1)],
                changes: &["update a 1"],
                ..ROW
            },
            Row {
                rule: "a new component generation updates Placements in place",
                replicas: 1,
                nodes: abc(),
                current: &[("a", 1, "generation")],
                shares: &[("a", 1)],
                changes: &["update a 1"],
                ..ROW
            },
            Row {
                rule: "changed limits update Placements in place",
                replicas: 1,
                nodes: abc(),
                current: &[("a", 1, "limits")],
                shares: &[("a", 1)],
                changes: &["update a 1"],
                ..ROW
            },
            // Identity.
            Row {
                rule: "two Placements on one node: the canonically named one stays, the other goes",
                replicas: 1,
                nodes: vec![node("a")],
                current: &[("a", 1, "old-name"), ("a", 1, "")],
                shares: &[("a", 1)],
                changes: &["delete a old-a"],
                ..ROW
            },
            Row {
                rule: "a Placement with another name is kept and updated, not replaced",
                replicas: 2,
                nodes: vec![node("a")],
                current: &[("a", 1, "old-name")],
                shares: &[("a", 2)],
                changes: &["update a 2"],
                ..ROW
            },
            Row {
                rule: "other components' Placements are left alone",
                replicas: 1,
                nodes: vec![node("a")],
                current: &[("a", 1, "other-component")],
                shares: &[("a", 1)],
                changes: &["create a 1"],
                ..ROW
            },
            // Capacity.
            Row {
                rule: "instance slots bound a node",
                replicas: 6,
                nodes: vec![
                    N {
                        slots: 2,
                        ..node("a")
                    },
                    node("b"),
                ],
                shares: &[("a", 2), ("b", 4)],
                changes: &["create a 2", "create b 4"],
                ..ROW
            },
            Row {
                rule: "memory bounds a node",
                replicas: 6,
                footprint: (1, 100),
                nodes: vec![
                    N {
                        mib: 250,
                        ..node("a")
                    },
                    node("b"),
                ],
                shares: &[("a", 2), ("b", 4)],
                changes: &["create a 2", "create b 4"],
                ..ROW
            },
            Row {
                rule: "what other components hold counts against capacity",
                replicas: 6,
                nodes: vec![
                    N {
                        slots: 10,
                        used_slots: 9,
                        ..node("a")
                    },
                    N {
                        mib: 1024,
                        used_mib: 960,
                        ..node("b")
                    },
                    node("c"),
                ],
                shares: &[("a", 1), ("b", 1), ("c", 4)],
                changes: &["create a 1", "create b 1", "create c 4"],
                ..ROW
            },
            Row {
                rule: "a replica takes as many slots as its concurrent instances",
                replicas: 4,
                footprint: (4, 64),
                nodes: vec![
                    N {
                        slots: 8,
                        ..node("a")
                    },
                    N {
                        slots: 8,
                        ..node("b")
                    },
                ],
                shares: &[("a", 2), ("b", 2)],
                changes: &["create a 2", "create b 2"],
                ..ROW
            },
            Row {
                rule: "full nodes: the rest is unplaced, says add capacity or lower replicas",
                replicas: 5,
                nodes: vec![
                    N {
                        slots: 1,
                        ..node("a")
                    },
                    N {
                        slots: 2,
                        ..node("b")
                    },
                ],
                shares: &[("a", 1), ("b", 2)],
                changes: &["create a 1", "create b 2"],
                unplaced: &[
                    "2 of 5 replicas unplaced: 2 nodes are full",
                    "add agent nodes or capacity",
                    "lower spec.replicas",
                ],
                ..ROW
            },
            Row {
                rule: "a node too small for one replica says to lower the limits",
                replicas: 1,
                footprint: (1, 2048),
                nodes: vec![N {
                    mib: 1024,
                    ..node("a")
                }],
                unplaced: &[
                    "1 node is too small for one replica",
                    "lower spec.limits.memory",
                ],
                ..ROW
            },
            Row {
                rule: "mixed causes are all counted",
                replicas: 4,
                selector: &[("zone", "x")],
                nodes: vec![
                    N {
                        labels: &[("zone", "x")],
                        slots: 1,
                        ..node("a")
                    },
                    N {
                        live: false,
                        ..node("b")
                    },
                    node("c"),
                    N {
                        labels: &[("zone", "x")],
                        taints: &["t:NoSchedule"],
                        ..node("d")
                    },
                ],
                shares: &[("a", 1)],
                changes: &["create a 1"],
                unplaced: &[
                    "3 of 4 replicas unplaced",
                    "1 node has no live agent Lease",
                    "1 node does not match nodeSelector zone=x",
                    "1 node has taint t:NoSchedule without toleration",
                    "1 node is full",
                ],
                ..ROW
            },
        ];
        for row in rows {
            let rule = row.rule;
            let mut req = request(row.replicas);
            req.policy.node_selector = row
                .selector
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            req.policy.tolerations = row.tolerations.iter().map(|t| toleration(t)).collect();
            req.footprint = Footprint {
                instances: row.footprint.0,
                memory_bytes: row.footprint.1 * MIB,
            };
            let nodes: Vec<NodeView> = row.nodes.iter().map(N::view).collect();
            let current: Vec<ExistingPlacement> =
                row.current.iter().map(|c| existing(&req, *c)).collect();
            let plan = place(&req, &nodes, &current);
            let shares: Vec<(&str, u32)> = plan
                .shares
                .iter()
                .map(|s| (s.node.as_str(), s.instances))
                .collect();
            assert_eq!(shares, row.shares, "{rule}: shares");
            let changes: Vec<String> = plan.changes.iter().map(|c| describe(&req, c)).collect();
            assert_eq!(changes, row.changes, "{rule}: changes");
            match (&plan.shortfall, row.unplaced) {
                (None, []) => {}
                (Some(s), want) if !want.is_empty() => {
                    assert_eq!(
                        s.unplaced,
                        row.replicas - plan.placed(),
                        "{rule}: unplaced count"
                    );
                    for part in want {
                        assert!(
                            s.message.contains(part),
                            "{rule}: {:?} lacks {part:?}",
                            s.message
                        );
                    }
                    assert!(
                        s.message.len() <= MAX_MESSAGE_LEN,
                        "{rule}: bounded message"
                    );
                }
                (got, want) => panic!("{rule}: shortfall {got:?}, expected {want:?}"),
            }
            // Applying the plan and planning again changes nothing: reconciles do not flap.
            let applied = apply(&current, &plan);
            let again = place(&req, &nodes, &applied);
            assert_eq!(again.changes, Vec::new(), "{rule}: a second plan is empty");
            assert_eq!(again.shares, plan.shares, "{rule}: a second plan agrees");
        }
    }

    /// The cluster after `plan`'s changes.
    fn apply(current: &[ExistingPlacement], plan: &PlacementPlan) -> Vec<ExistingPlacement> {
        let mut out: BTreeMap<String, ExistingPlacement> = current
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect();
        for change in &plan.changes {
            match change {
                PlacementChange::Create { name, spec } => {
                    let fresh = ExistingPlacement {
                        name: name.clone(),
                        spec: spec.clone(),
                    };
                    assert!(
                        out.insert(name.clone(), fresh).is_none(),
                        "create of an existing name {name}"
                    );
                }
                PlacementChange::Update { name, spec } => {
                    let p = out.get_mut(name).expect("update of an existing Placement");
                    p.spec = spec.clone();
                }
                PlacementChange::Delete { name, .. } => {
                    assert!(
                        out.remove(name).is_some(),
                        "delete of an existing Placement {name}"
                    );
                }
            }
        }
        out.into_values().collect()
    }

    /// A small deterministic generator (xorshift64*), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[usize::try_from(self.below(items.len() as u64)).unwrap()]
        }
    }

    const TAINTS: &[&str] = &[
        "dedicated=gpu:NoSchedule",
        "spot:PreferNoSchedule",
        "broken:NoExecute",
        "node.kubernetes.io/unschedulable:NoSchedule",
    ];
    const TOLERATIONS: &[&str] = &[
        "dedicated=gpu",
        "exists spot",
        "exists :NoExecute",
        "exists",
    ];

    /// What the test, independently of `place`, says a node may hold.
    fn oracle_room(req: &PlacementRequest, n: &NodeView, running: u32) -> u32 {
        let hard_untolerated = |effect| {
            n.taints.iter().any(|t| {
                t.effect == effect && !req.policy.tolerations.iter().any(|tol| tolerates(tol, t))
            })
        };
        let selected = req
            .policy
            .node_selector
            .iter()
            .all(|(k, v)| n.labels.get(k) == Some(v));
        if !n.agent_live || !selected || hard_untolerated(TaintEffect::NoExecute) {
            return 0;
        }
        let mut room = 0u32;
        let mut used = n.committed;
        loop {
            let next = used.plus(req.footprint);
            let fits = next.instances <= n.capacity.instances
                && next.memory_bytes <= n.capacity.memory_bytes;
            if !fits || room >= max_instances() {
                break;
            }
            used = next;
            room += 1;
        }
        if hard_untolerated(TaintEffect::NoSchedule) {
            room = room.min(running);
        }
        room
    }

    #[test]
    fn generated_clusters_keep_the_invariants() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..3000 {
            let mut req = request(u32::try_from(rng.below(13)).unwrap());
            req.footprint = Footprint {
                instances: u32::try_from(rng.below(3)).unwrap(),
                memory_bytes: rng.below(3) * 64 * MIB,
            };
            if rng.chance(30) {
                req.policy.node_selector.insert("zone".into(), "a".into());
            }
            for _ in 0..rng.below(3) {
                req.policy
                    .tolerations
                    .push(toleration(rng.pick(TOLERATIONS)));
            }
            let names = ["n0", "n1", "n2", "n3", "n4", "n5"];
            let count = usize::try_from(rng.below(7)).unwrap();
            let nodes: Vec<NodeView> = names[..count]
                .iter()
                .map(|name| {
                    let slots = u32::try_from(rng.below(6)).unwrap();
                    let mib = rng.below(6) * 64;
                    let mut labels = BTreeMap::new();
                    labels.insert("zone".to_owned(), rng.pick(&["a", "b"]).to_owned());
                    NodeView {
                        name: (*name).to_owned(),
                        labels,
                        taints: (0..rng.below(2)).map(|_| taint(rng.pick(TAINTS))).collect(),
                        agent_live: rng.chance(85),
                        capacity: Footprint {
                            instances: slots,
                            memory_bytes: mib * MIB,
                        },
                        committed: Footprint {
                            instances: u32::try_from(rng.below(u64::from(slots) + 1)).unwrap(),
                            memory_bytes: rng.below(mib + 1) * MIB,
                        },
                    }
                })
                .collect();
            let diffs = ["", "", "", "digest", "old-name"];
            // Object names are unique in a namespace: a repeated name is dropped.
            let mut current: Vec<ExistingPlacement> = Vec::new();
            for _ in 0..rng.below(5) {
                let node = rng.pick(&["n0", "n1", "n2", "n3", "gone"]);
                let instances = u32::try_from(rng.below(4) + 1).unwrap();
                let p = existing(&req, (node, instances, rng.pick(&diffs)));
                if current.iter().all(|c| c.name != p.name) {
                    current.push(p);
                }
            }
            let ctx = format!("case {case}: {req:?}\nnodes {nodes:?}\ncurrent {current:?}");
            let plan = place(&req, &nodes, &current);

            let running = |node: &str| -> u32 {
                current
                    .iter()
                    .filter(|p| p.spec.node_name == node)
                    .map(|p| u32::try_from(p.spec.instances).unwrap())
                    .sum()
            };
            let share = |node: &str| {
                plan.shares
                    .iter()
                    .find(|s| s.node == node)
                    .map_or(0, |s| s.instances)
            };
            let rooms: Vec<u32> = nodes
                .iter()
                .map(|n| oracle_room(&req, n, running(&n.name)))
                .collect();
            for (n, &room) in nodes.iter().zip(&rooms) {
                let s = share(&n.name);
                // No ineligible node used, no node over capacity.
                assert!(s <= room, "{ctx}\n{} holds {s} > room {room}", n.name);
                if s > 0 {
                    let held = n.committed.plus(req.footprint.times(s));
                    assert!(
                        held.instances <= n.capacity.instances,
                        "{ctx}: slots of {}",
                        n.name
                    );
                    assert!(
                        held.memory_bytes <= n.capacity.memory_bytes,
                        "{ctx}: memory of {}",
                        n.name
                    );
                }
            }
            // Skew at most 1 among nodes that still have room.
            for (a, &room_a) in nodes.iter().zip(&rooms) {
                for b in &nodes {
                    let (sa, sb) = (share(&a.name), share(&b.name));
                    assert!(
                        sa + 1 >= sb || sa == room_a,
                        "{ctx}\nskew: {} {sa} vs {} {sb}",
                        a.name,
                        b.name
                    );
                }
            }
            // Everything that fits is placed.
            let total_room: u32 = rooms.iter().sum();
            assert_eq!(
                plan.placed(),
                req.replicas.min(total_room),
                "{ctx}\n{plan:?}"
            );
            assert_eq!(
                plan.shortfall.is_some(),
                plan.placed() < req.replicas,
                "{ctx}"
            );
            if let Some(s) = &plan.shortfall {
                assert!(
                    s.message.len() <= MAX_MESSAGE_LEN && !s.message.is_empty(),
                    "{ctx}"
                );
            }
            // Sorted shares, nodes listed once.
            assert!(
                plan.shares.windows(2).all(|w| w[0].node < w[1].node),
                "{ctx}"
            );
            // Applying the plan yields exactly one up-to-date Placement per share.
            let applied = apply(&current, &plan);
            let mut ours: Vec<(String, u32)> = applied
                .iter()
                .filter(|p| p.spec.component.name == req.component.name)
                .map(|p| {
                    assert_eq!(
                        p.spec,
                        req.spec(&p.spec.node_name, share(&p.spec.node_name)),
                        "{ctx}"
                    );
                    (
                        p.spec.node_name.clone(),
                        u32::try_from(p.spec.instances).unwrap(),
                    )
                })
                .collect();
            ours.sort();
            let want: Vec<(String, u32)> = plan
                .shares
                .iter()
                .map(|s| (s.node.clone(), s.instances))
                .collect();
            assert_eq!(ours, want, "{ctx}");
            // A second reconcile has nothing to do.
            let again = place(&req, &nodes, &applied);
            assert_eq!(again.changes, Vec::new(), "{ctx}");
            assert_eq!(again.shares, plan.shares, "{ctx}");
            // Input order does not matter: two operators compute the same plan.
            let mut shuffled_nodes = nodes.clone();
            shuffled_nodes.reverse();
            let mut shuffled_current = current.clone();
            shuffled_current.rotate_left(current.len() / 2);
            shuffled_current.reverse();
            assert_eq!(
                place(&req, &shuffled_nodes, &shuffled_current),
                plan,
                "{ctx}"
            );
        }
    }

    #[test]
    fn growing_replicas_never_moves_a_placed_replica() {
        // Scaling up one at a time: each step only adds.
        let nodes: Vec<NodeView> = [
            node("a"),
            N {
                slots: 2,
                ..node("b")
            },
            node("c"),
            node("d"),
        ]
        .iter()
        .map(N::view)
        .collect();
        let mut current = Vec::new();
        let mut before: BTreeMap<String, u32> = BTreeMap::new();
        for replicas in 0..=20 {
            let plan = place(&request(replicas), &nodes, &current);
            for (node, n) in &before {
                let now = plan
                    .shares
                    .iter()
                    .find(|s| s.node == *node)
                    .map_or(0, |s| s.instances);
                assert!(
                    now >= *n,
                    "replicas {replicas}: {node} went from {n} to {now}"
                );
            }
            assert!(
                plan.changes
                    .iter()
                    .all(|c| !matches!(c, PlacementChange::Delete { .. })),
                "replicas {replicas}: nothing deleted"
            );
            before = plan
                .shares
                .iter()
                .map(|s| (s.node.clone(), s.instances))
                .collect();
            current = apply(&current, &plan);
        }
    }

    #[test]
    fn losing_a_node_moves_only_its_replicas() {
        let views: Vec<NodeView> = [node("a"), node("b"), node("c"), node("d"), node("e")]
            .iter()
            .map(N::view)
            .collect();
        let req = request(7);
        // The extras sit on d and e, not where name order would put them.
        let current: Vec<ExistingPlacement> = [
            ("a", 1, ""),
            ("b", 1, ""),
            ("c", 1, ""),
            ("d", 2, ""),
            ("e", 2, ""),
        ]
        .into_iter()
        .map(|c| existing(&req, c))
        .collect();
        assert_eq!(
            place(&req, &views, &current).changes,
            Vec::new(),
            "balanced already"
        );
        for lost in 0..views.len() {
            let mut down = views.clone();
            down[lost].agent_live = false;
            let plan = place(&req, &down, &current);
            let moved: u32 = current
                .iter()
                .map(|p| {
                    let now = plan
                        .shares
                        .iter()
                        .find(|n| n.node == p.spec.node_name)
                        .map_or(0, |n| n.instances);
                    u32::try_from(p.spec.instances).unwrap().saturating_sub(now)
                })
                .sum();
            let had = current
                .iter()
                .find(|p| p.spec.node_name == views[lost].name)
                .map_or(0, |p| u32::try_from(p.spec.instances).unwrap());
            assert_eq!(
                moved, had,
                "losing {} moves only its {had}: {:?}",
                views[lost].name, plan.shares
            );
            assert_eq!(plan.placed(), 7);
        }
    }

    #[test]
    fn lease_liveness() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
        let now: jiff::Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let at = |s: &str| Some(MicroTime(s.parse().unwrap()));
        let lease = |renew, duration| LeaseSpec {
            renew_time: renew,
            lease_duration_seconds: duration,
            ..LeaseSpec::default()
        };
        let rows = [
            (
                "renewed within its duration is live",
                lease(at("2026-01-01T00:00:30Z"), Some(40)),
                true,
            ),
            (
                "renewed longer ago than its duration is expired",
                lease(at("2026-01-01T00:00:19Z"), Some(40)),
                false,
            ),
            (
                "exactly at the duration is expired",
                lease(at("2026-01-01T00:00:20Z"), Some(40)),
                false,
            ),
            (
                "renewed in the future (clock skew) is live",
                lease(at("2026-01-01T00:02:00Z"), Some(40)),
                true,
            ),
            ("no renew time is not live", lease(None, Some(40)), false),
            (
                "no duration is not live",
                lease(at("2026-01-01T00:00:59Z"), None),
                false,
            ),
            (
                "a zero duration is not live",
                lease(at("2026-01-01T00:01:00Z"), Some(0)),
                false,
            ),
        ];
        for (rule, spec, want) in rows {
            assert_eq!(is_lease_live(&spec, now), want, "{rule}");
        }
        let acquired = LeaseSpec {
            acquire_time: at("2026-01-01T00:00:50Z"),
            lease_duration_seconds: Some(40),
            ..LeaseSpec::default()
        };
        assert!(
            is_lease_live(&acquired, now),
            "a just-acquired lease without renewal is live"
        );
    }

    #[test]
    fn artifacts_are_pinned_to_the_approved_digest() {
        let d = digest(3);
        let oci = |reference: &str| Artifact {
            oci: Some(OciArtifact {
                reference: reference.into(),
                pull_secrets: Vec::new(),
                insecure: true,
            }),
            https: None,
            config_map: None,
        };
        let pinned = |a: &Artifact| pin(a, &d).oci.unwrap().reference;
        assert_eq!(
            pinned(&oci("127.0.0.1:5000/team/echo:v1")),
            format!("127.0.0.1:5000/team/echo@{d}"),
            "the tag goes, the digest pins"
        );
        assert_eq!(
            pinned(&oci(&format!("registry.example.com/echo@{}", digest(4)))),
            format!("registry.example.com/echo@{d}"),
            "a reference by another digest is pinned to the approved one"
        );
        assert!(pin(&oci("r.example/x:1"), &d).oci.unwrap().insecure);
    }

    #[test]
    fn placement_names_are_valid_distinct_and_stable() {
        let dns = |s: &str| {
            s.len() <= 253
                && s.split('.').all(|label| {
                    !label.is_empty()
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                })
        };
        let name = placement_name("echo", "node-a");
        assert!(name.starts_with("echo-node-a-"), "{name}");
        assert_eq!(name, placement_name("echo", "node-a"), "stable");
        // Dashes make "a-b" on "c" and "a" on "b-c" read alike; the hash tells them apart.
        assert_ne!(placement_name("a-b", "c"), placement_name("a", "b-c"));
        let long = "x".repeat(200);
        let dotted = format!("{}.{}", "y".repeat(150), "z".repeat(100));
        for (component, node) in [
            ("echo", "node-a"),
            (long.as_str(), long.as_str()),
            (long.as_str(), dotted.as_str()),
            ("a.b", "c"),
        ] {
            let n = placement_name(component, node);
            assert!(dns(&n), "{n:?} is a valid object name");
        }
        assert_ne!(
            placement_name(&long, "n1"),
            placement_name(&long, "n2"),
            "distinct past the cut"
        );
    }

    #[test]
    fn node_view_of_a_node_object() {
        use k8s_openapi::api::core::v1::NodeSpec;
        use kube::api::ObjectMeta;
        let node = |unschedulable, taints: Vec<Taint>| Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                labels: Some([("zone".to_owned(), "a".to_owned())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                unschedulable,
                taints: Some(taints),
                ..NodeSpec::default()
            }),
            status: None,
        };
        let t = |key: &str, value: Option<&str>, effect: &str| Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: effect.into(),
            time_added: None,
        };
        let cap = Footprint {
            instances: 8,
            memory_bytes: MIB,
        };
        let v = NodeView::from_node(
            &node(None, vec![t("gpu", Some("a"), "NoExecute")]),
            true,
            cap,
            Footprint::default(),
        );
        assert_eq!(v.name, "n1");
        assert_eq!(v.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(v.taints, vec![taint("gpu=a:NoExecute")]);
        assert_eq!(v.capacity, cap);
        let cordoned = NodeView::from_node(
            &node(Some(true), Vec::new()),
            true,
            cap,
            Footprint::default(),
        );
        assert_eq!(
            cordoned.taints,
            vec![taint("node.kubernetes.io/unschedulable:NoSchedule")],
            "a cordoned node is tainted unschedulable even without a node controller"
        );
        let both = NodeView::from_node(
            &node(Some(true), vec![t(UNSCHEDULABLE_TAINT, None, "NoSchedule")]),
            true,
            cap,
            Footprint::default(),
        );
        assert_eq!(both.taints.len(), 1, "not added twice");
        let odd = NodeView::from_node(
            &node(None, vec![t("x", Some(""), "Whatever")]),
            true,
            cap,
            Footprint::default(),
        );
        assert_eq!(
            odd.taints,
            vec![taint("x:NoSchedule")],
            "an unknown effect keeps new replicas off"
        );
        let fresh = NodeView::from_node(
            &node(
                None,
                vec![
                    t("node.kubernetes.io/not-ready", None, "NoSchedule"),
                    t("node.kubernetes.io/unreachable", None, "NoExecute"),
                    t("gpu", Some("a"), "NoSchedule"),
                ],
            ),
            true,
            cap,
            Footprint::default(),
        );
        assert_eq!(
            fresh.taints,
            vec![taint("gpu=a:NoSchedule")],
            "kubelet health is not placement's liveness signal: the agent Lease is"
        );
    }

    #[test]
    fn a_replica_reserves_its_concurrent_instances() {
        let limits = ResolvedLimits {
            max_concurrent_messages: 4,
            memory_bytes: 32 * MIB,
            ..ResolvedLimits::default()
        };
        assert_eq!(
            Footprint::of_replica(&limits),
            Footprint {
                instances: 4,
                memory_bytes: 128 * MIB
            }
        );
        let over = ResolvedLimits {
            max_concurrent_messages: 1000,
            ..ResolvedLimits::default()
        };
        let mut spec = request(1).spec("a", 3);
        spec.limits.memory = Some("32Mi".into());
        spec.limits.max_concurrent_messages = Some(2);
        assert_eq!(
            Footprint::of_placement(&spec),
            Footprint {
                instances: 6,
                memory_bytes: 192 * MIB
            },
            "a Placement reserves its instances' footprints"
        );
        assert_eq!(
            Footprint::of_replica(&over).instances,
            MAX_CONCURRENT_MESSAGES,
            "as the agent clamps it"
        );
    }

    #[test]
    fn the_shortfall_message_stays_bounded() {
        let mut req = request(50);
        let selector: BTreeMap<String, String> = (0..40)
            .map(|i| (format!("label-{i}-{}", "k".repeat(40)), "v".repeat(60)))
            .collect();
        req.policy.node_selector = selector;
        let nodes: Vec<NodeView> = (0..30)
            .map(|i| NodeView {
                taints: vec![taint(&format!("{}{i}:NoSchedule", "t".repeat(200)))],
                labels: req.policy.node_selector.clone(),
                ..node("x").view()
            })
            .map(|mut v| {
                v.name = format!("{}-{}", v.taints[0].key, v.name);
                v
            })
            .chain((0..5).map(|i| NodeView {
                name: format!("sel-{i}"),
                ..node("y").view()
            }))
            .collect();
        let plan = place(&req, &nodes, &[]);
        let s = plan.shortfall.expect("nothing fits");
        assert!(
            s.message.len() <= MAX_MESSAGE_LEN,
            "{} bytes",
            s.message.len()
        );
        assert!(
            s.message.starts_with("50 of 50 replicas unplaced"),
            "{}",
            s.message
        );
        assert!(
            s.message.contains("more taints without toleration"),
            "{}",
            s.message
        );
    }
}
