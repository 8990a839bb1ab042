//! Pure decisions about this node's Placements: which ones it runs ([`select`]), what the
//! supervisor is asked to run for one ([`prepare`]), and a component's next step ([`decide`]).
//! No I/O: the node loop feeds them what the watcher, the supervisor and the fetch tasks
//! report, and carries the steps out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use airssys_crds::artifact::Digest;
use airssys_crds::capability::{Capabilities, CapabilitySet};
use airssys_crds::component::ConfigEntry;
use airssys_crds::http::PlacementHttp;
use airssys_crds::limits::Limits;
use airssys_crds::placement::{Placement, PlacementSpec, REVOKED_ANNOTATION};

use crate::http_server::HttpSettings;
use crate::id::ComponentId;
use crate::limits::Quotas;

/// A Placement object's namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlacementKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PlacementKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A Placement this node runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub key: PlacementKey,
    /// `metadata.generation`, reported back as `observedGeneration`.
    pub generation: Option<i64>,
    pub spec: PlacementSpec,
}

/// A Placement of this node that is not run; its status says why.
#[derive(Debug, Clone, PartialEq)]
pub struct Ignored {
    pub key: PlacementKey,
    pub generation: Option<i64>,
    pub reason: String,
}

/// What this node runs, by component, and the Placements it does not.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    pub wanted: BTreeMap<ComponentId, Wanted>,
    pub ignored: Vec<Ignored>,
    /// Components whose Placement here the operator marked revoked (see
    /// [`REVOKED_ANNOTATION`]) and no other Placement wants.
    pub revoked: BTreeSet<ComponentId>,
}

/// Chooses what to run from the Placements the watcher holds. A component is identified by
/// (Placement namespace, `spec.component.name`).
///
/// - Placements of other nodes are not looked at (the field selector already filters them;
///   this is the second lock), nor are Placements being deleted.
/// - A Placement marked revoked does not run; its component is in [`Selection::revoked`]
///   unless another of its Placements runs.
/// - Two Placements for the same component on this node (the operator writes one): the
///   newer one (creation time, then name) runs, the other is [`Ignored`] and says so.
pub fn select<'a>(node: &str, placements: impl IntoIterator<Item = &'a Placement>) -> Selection {
    let mut by_component: BTreeMap<ComponentId, Vec<&Placement>> = BTreeMap::new();
    let mut revoked_ids = BTreeSet::new();
    for p in placements {
        let (Some(namespace), Some(_)) = (&p.metadata.namespace, &p.metadata.name) else {
            continue;
        };
        if p.spec.node_name != node || p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let id = ComponentId::new(namespace, &p.spec.component.name);
        let revoked = p
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(REVOKED_ANNOTATION));
        if revoked {
            revoked_ids.insert(id);
            continue;
        }
        by_component.entry(id).or_default().push(p);
    }
    let mut selection = Selection::default();
    revoked_ids.retain(|id| !by_component.contains_key(id));
    selection.revoked = revoked_ids;
    for (id, mut group) in by_component {
        // Oldest first; the last one wins.
        group.sort_by(|a, b| {
            let created = |p: &Placement| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            created(a)
                .cmp(&created(b))
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        });
        let Some(winner) = group.pop() else { continue };
        let winner_key = key_of(winner);
        for loser in group {
            selection.ignored.push(Ignored {
                key: key_of(loser),
                generation: loser.metadata.generation,
                reason: format!(
                    "Placement {} for component {id} is newer and runs on this node instead; \
                     a component has one Placement per node, so this one is ignored until it \
                     is removed",
                    winner_key.name
                ),
            });
        }
        selection.wanted.insert(
            id,
            Wanted {
                key: winner_key,
                generation: winner.metadata.generation,
                spec: winner.spec.clone(),
            },
        );
    }
    selection
}

fn key_of(p: &Placement) -> PlacementKey {
    PlacementKey {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone().unwrap_or_default(),
    }
}

/// The parts of a Placement's spec that change what runs; two equal `RunSpec`s need no
/// change to the actor (`spec.component.generation` alone, say, does not).
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    pub digest: Digest,
    pub grant: Capabilities,
    pub limits: Limits,
    pub instances: i32,
    pub config: Vec<ConfigEntry>,
    pub dev_mode: bool,
    pub http: Option<PlacementHttp>,
}

impl RunSpec {
    /// Whether `spec` asks for exactly this (without building a `RunSpec` of it).
    pub fn matches(&self, spec: &PlacementSpec) -> bool {
        self.digest == spec.digest
            && self.grant == spec.grant
            && self.limits == spec.limits
            && self.instances == spec.instances
            && self.config == spec.config
            && self.dev_mode == spec.dev_mode
            && self.http == spec.http
    }

    pub fn of(spec: &PlacementSpec) -> Self {
        Self {
            digest: spec.digest.clone(),
            grant: spec.grant.clone(),
            limits: spec.limits.clone(),
            instances: spec.instances,
            config: spec.config.clone(),
            dev_mode: spec.dev_mode,
            http: spec.http.clone(),
        }
    }
}

/// What the supervisor runs for a Placement, bytes apart.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub grant: CapabilitySet,
    pub quotas: Quotas,
    /// Literal config values whose names the grant exposes.
    pub env: Vec<(String, String)>,
    /// Config the component asked for but does not get, one sentence each (for `lastError`).
    pub notes: Vec<String>,
    /// Where and how it is served over HTTP (`spec.http`).
    pub http: Option<HttpSettings>,
}

/// Turns a Placement's spec into what its actor runs with, or says why it cannot run
/// (the `InvalidSpec` message: nothing runs then).
///
/// - The grant is `spec.grant` exactly (the operator already intersected request and approval).
/// - The node runs `instances × maxConcurrentMessages` instances sharing the component's
///   one mailbox: each replica adds `maxConcurrentMessages` concurrent messages. Replicas are
///   capped at the pool's `pool_instances` (more could never start).
/// - Env: only literal config values the grant's env capabilities name. A Secret reference
///   is not passed (the agent holds no Secret read) and is reported, as is config the grant
///   does not expose.
/// - HTTP (`spec.http`): served on `advertise` at `targetPort`, with its limits resolved.
pub fn prepare(
    id: &ComponentId,
    spec: &PlacementSpec,
    pool_instances: u32,
    advertise: IpAddr,
) -> Result<Prepared, String> {
    crate::storage::check_component_id(&id.namespace, &id.name)
        .map_err(|e| format!("component {id}: {e}"))?;
    let grant = CapabilitySet::parse(&spec.grant).map_err(|e| format!("grant: {e}"))?;
    let limits = spec.limits.resolve().map_err(|e| format!("limits: {e}"))?;
    let replicas = u32::try_from(spec.instances)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| format!("instances: {} is not a positive count", spec.instances))?;
    let mut quotas = Quotas::from(&limits);
    quotas.replicas = replicas.min(pool_instances.max(1));
    let mut env = Vec::new();
    let mut notes = Vec::new();
    for entry in &spec.config {
        let granted = grant.allows_env(&entry.name);
        match (&entry.value, &entry.secret_key_ref, granted) {
            (Some(value), None, true) => env.push((entry.name.clone(), value.clone())),
            (_, Some(secret), true) => notes.push(format!(
                "config {} comes from Secret {}/{} key {}: Secret references are not supported \
                 by the agent yet, so it is not set",
                entry.name, id.namespace, secret.name, secret.key
            )),
            (_, _, false) => notes.push(format!(
                "config {} is not set: the grant has no env capability for it",
                entry.name
            )),
            (None, None, true) => notes.push(format!(
                "config {} has neither a value nor a Secret reference, so it is not set",
                entry.name
            )),
        }
    }
    let http = match &spec.http {
        None => None,
        Some(http) if http.target_port == 0 => {
            return Err("http.targetPort: 0 is not a port".to_owned());
        }
        Some(http) => Some(HttpSettings {
            listen: SocketAddr::new(advertise, http.target_port),
            limits: http.spec.limits().map_err(|e| e.to_string())?,
            spec: http.spec.clone(),
        }),
    };
    Ok(Prepared {
        grant,
        quotas,
        env,
        notes,
        http,
    })
}

/// Where a component's bytes stand, as the node loop knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchState<'a> {
    /// A fetch (and compile) in flight, for this Placement digest.
    pub in_flight: Option<&'a Digest>,
    /// The last fetch or compile of this digest failed, and whether its retry is due.
    pub failed: Option<(&'a Digest, bool)>,
}

/// A component's next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// It runs what is wanted (or nothing is wanted and nothing runs); a fetch in flight for
    /// another digest is cancelled.
    Keep,
    /// Stop the actor: no Placement wants it, or the wanted spec cannot run. Cancel fetches.
    Stop,
    /// Same digest, other grant, limits, replicas or config: update the actor in place with
    /// the bytes it runs (no fetch).
    Reconfigure,
    /// Fetch and compile the wanted digest (cancelling a fetch of another one); the running
    /// revision, if any, keeps running meanwhile.
    Fetch,
    /// The wanted digest is being fetched, or its retry is not due yet.
    Wait,
}

/// The next step for one component, from what is wanted (`None`: no Placement, or one whose
/// spec cannot run), what runs, and where its bytes are.
pub fn decide(wanted: Option<&RunSpec>, running: Option<&RunSpec>, fetch: FetchState<'_>) -> Step {
    let Some(wanted) = wanted else {
        return if running.is_some() || fetch.in_flight.is_some() {
            Step::Stop
        } else {
            Step::Keep
        };
    };
    let retry_not_due = matches!(fetch.failed, Some((digest, false)) if digest == &wanted.digest);
    match running {
        Some(running) if running == wanted => Step::Keep,
        _ if retry_not_due => Step::Wait,
        Some(running) if running.digest == wanted.digest => Step::Reconfigure,
        _ if fetch.in_flight == Some(&wanted.digest) => Step::Wait,
        _ => Step::Fetch,
    }
}

/// How long to wait before fetching again after `failures` failures in a row: 1 s doubling to
/// `cap` (fetch failures are often transient; a compile failure will fail again, so its
/// caller passes a longer cap and it costs little).
pub fn retry_delay(failures: u32, cap: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exp).min(cap)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

    use super::*;
    use airssys_crds::component::SecretKeyRef;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn digest(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    fn placement(ns: &str, name: &str, node: &str, component: &str, created: i64) -> Placement {
        let spec: PlacementSpec = serde_json::from_value(serde_json::json!({
            "nodeName": node,
            "component": {"name": component, "uid": "u", "generation": 1},
            "digest": digest('a').as_str(),
            "artifact": {"https": {"url": "https://example.com/x.wasm", "digest": digest('a').as_str()}},
            "instances": 2,
        }))
        .unwrap();
        let mut p = Placement::new(name, spec);
        p.metadata.namespace = Some(ns.to_owned());
        p.metadata.generation = Some(1);
        p.metadata.creation_timestamp = Some(Time(
            jiff::Timestamp::from_second(1_700_000_000 + created).unwrap(),
        ));
        p
    }

    #[test]
    fn select_runs_one_placement_per_component_of_this_node() {
        struct Row {
            rule: &'static str,
            placements: Vec<Placement>,
            wanted: Vec<(&'static str, &'static str)>,
            ignored: Vec<&'static str>,
            revoked: Vec<&'static str>,
        }
        let deleting = {
            let mut p = placement("ns", "p-gone", "node-a", "gone", 0);
            p.metadata.deletion_timestamp = p.metadata.creation_timestamp.clone();
            p
        };
        let revoked = |name: &str, component: &str| {
            let mut p = placement("ns", name, "node-a", component, 0);
            p.metadata.annotations =
                Some([(REVOKED_ANNOTATION.to_owned(), "source deleted".to_owned())].into());
            p
        };
        let rows = vec![
            Row {
                rule: "a Placement of this node runs, keyed by (namespace, component)",
                placements: vec![placement("ns", "p1", "node-a", "echo", 0)],
                wanted: vec![("ns/echo", "p1")],
                ignored: vec![],
                revoked: vec![],
            },
            Row {
                rule: "a Placement of another node is not looked at",
                placements: vec![placement("ns", "p1", "node-b", "echo", 0)],
                wanted: vec![],
                ignored: vec![],
                revoked: vec![],
            },
            Row {
                rule: "a Placement being deleted is not run",
                placements: vec![deleting],
                wanted: vec![],
                ignored: vec![],
                revoked: vec![],
            },
            Row {
                rule: "the same component name in two namespaces is two components",
                placements: vec![
                    placement("ns1", "p1", "node-a", "echo", 0),
                    placement("ns2", "p1", "node-a", "echo", 0),
                ],
                wanted: vec![("ns1/echo", "p1"), ("ns2/echo", "p1")],
                ignored: vec![],
                revoked: vec![],
            },
            Row {
                rule: "two Placements for one component: the newer runs, the older is ignored",
                placements: vec![
                    placement("ns", "p-new", "node-a", "echo", 10),
                    placement("ns", "p-old", "node-a", "echo", 0),
                ],
                wanted: vec![("ns/echo", "p-new")],
                ignored: vec!["p-old"],
                revoked: vec![],
            },
            Row {
                rule: "created in the same second: the name breaks the tie",
                placements: vec![
                    placement("ns", "p-b", "node-a", "echo", 0),
                    placement("ns", "p-a", "node-a", "echo", 0),
                ],
                wanted: vec![("ns/echo", "p-b")],
                ignored: vec!["p-a"],
                revoked: vec![],
            },
            Row {
                rule: "a Placement marked revoked does not run and its component is revoked",
                placements: vec![
                    revoked("p1", "echo"),
                    placement("ns", "p2", "node-a", "kv", 0),
                ],
                wanted: vec![("ns/kv", "p2")],
                ignored: vec![],
                revoked: vec!["ns/echo"],
            },
            Row {
                rule: "a component another Placement still runs here is not revoked",
                placements: vec![
                    revoked("p-old", "echo"),
                    placement("ns", "p-new", "node-a", "echo", 5),
                ],
                wanted: vec![("ns/echo", "p-new")],
                ignored: vec![],
                revoked: vec![],
            },
            Row {
                rule: "a revoked Placement of another node is not looked at",
                placements: vec![{
                    let mut p = revoked("p1", "echo");
                    p.spec.node_name = "node-b".into();
                    p
                }],
                wanted: vec![],
                ignored: vec![],
                revoked: vec![],
            },
        ];
        for row in rows {
            let s = select("node-a", &row.placements);
            let wanted: Vec<(String, String)> = s
                .wanted
                .iter()
                .map(|(id, w)| (id.to_string(), w.key.name.clone()))
                .collect();
            let expected: Vec<(String, String)> = row
                .wanted
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            assert_eq!(wanted, expected, "{}", row.rule);
            let ignored: Vec<&str> = s.ignored.iter().map(|i| i.key.name.as_str()).collect();
            assert_eq!(ignored, row.ignored, "{}", row.rule);
            let revoked: Vec<String> = s.revoked.iter().map(ToString::to_string).collect();
            assert_eq!(revoked, row.revoked, "{}", row.rule);
            for i in &s.ignored {
                assert!(i.reason.contains("newer"), "{}: {}", row.rule, i.reason);
            }
        }
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn spec_with(f: impl FnOnce(&mut PlacementSpec)) -> PlacementSpec {
        let mut spec = placement("ns", "p", "node-a", "echo", 0).spec;
        f(&mut spec);
        spec
    }

    fn config(name: &str, value: Option<&str>, secret: bool) -> ConfigEntry {
        ConfigEntry {
            name: name.to_owned(),
            value: value.map(str::to_owned),
            secret_key_ref: secret.then(|| SecretKeyRef {
                name: "creds".to_owned(),
                key: "token".to_owned(),
            }),
        }
    }

    #[test]
    fn prepare_turns_a_spec_into_what_the_actor_runs_with() {
        let id = ComponentId::new("ns", "echo");
        let env_grant: Capabilities = serde_json::from_value(
            serde_json::json!({"env": [{"name": "MODE"}, {"name": "TOKEN"}]}),
        )
        .unwrap();

        // Replicas multiply the per-replica concurrency.
        let spec = spec_with(|s| {
            s.instances = 3;
            s.limits.max_concurrent_messages = Some(4);
        });
        let p = prepare(&id, &spec, 1000, LOCAL).unwrap();
        assert_eq!(p.quotas.replicas, 3);
        assert_eq!(
            p.quotas.instances(),
            12,
            "instances × maxConcurrentMessages"
        );
        assert!(p.env.is_empty() && p.notes.is_empty());

        // Replicas are capped at the pool.
        let p = prepare(&id, &spec_with(|s| s.instances = 50), 8, LOCAL).unwrap();
        assert_eq!(p.quotas.replicas, 8);

        // Env: granted literals pass; a Secret reference and ungranted config are reported.
        let spec = spec_with(|s| {
            s.grant = env_grant.clone();
            s.config = vec![
                config("MODE", Some("fast"), false),
                config("TOKEN", None, true),
                config("OTHER", Some("x"), false),
            ];
        });
        let p = prepare(&id, &spec, 1000, LOCAL).unwrap();
        assert_eq!(p.env, vec![("MODE".to_owned(), "fast".to_owned())]);
        assert_eq!(p.notes.len(), 2, "{:?}", p.notes);
        assert!(p.notes[0].contains("Secret") && p.notes[0].contains("not supported"));
        assert!(p.notes[1].contains("OTHER") && p.notes[1].contains("no env capability"));

        // What cannot run says why.
        let cases: Vec<(&str, PlacementSpec)> = vec![
            (
                "grant",
                spec_with(|s| {
                    s.grant = serde_json::from_value(serde_json::json!({
                        "filesystem": [{"path": "/data/../etc", "access": ["read"]}]
                    }))
                    .unwrap();
                }),
            ),
            (
                "limits",
                spec_with(|s| s.limits.memory = Some("lots".to_owned())),
            ),
            ("instances", spec_with(|s| s.instances = 0)),
            (
                "http.requestTimeout",
                spec_with(|s| {
                    s.http = Some(PlacementHttp::new(
                        &airssys_crds::http::HttpSpec {
                            request_timeout: Some("forever".to_owned()),
                            ..Default::default()
                        },
                        31000,
                    ));
                }),
            ),
            (
                "http.targetPort",
                spec_with(|s| {
                    s.http = Some(PlacementHttp::new(&Default::default(), 0));
                }),
            ),
        ];
        for (field, spec) in cases {
            let err = prepare(&id, &spec, 1000, LOCAL).unwrap_err();
            assert!(err.starts_with(field), "{field}: {err}");
        }
        let bad_id = ComponentId::new("ns", "Not_A_Name");
        assert!(prepare(&bad_id, &spec_with(|_| {}), 1000, LOCAL).is_err());
    }

    #[test]
    fn an_http_placement_is_served_on_the_advertised_address_at_its_target_port() {
        let id = ComponentId::new("ns", "web");
        let http = airssys_crds::http::HttpSpec {
            path_prefix: Some("/api".to_owned()),
            max_concurrent_requests: Some(8),
            ..Default::default()
        };
        let spec = spec_with(|s| s.http = Some(PlacementHttp::new(&http, 31000)));
        let advertised: IpAddr = "10.0.0.7".parse().unwrap();
        let p = prepare(&id, &spec, 1000, advertised).unwrap();
        let served = p.http.expect("served over HTTP");
        assert_eq!(served.listen, SocketAddr::new(advertised, 31000));
        assert_eq!(served.limits.max_concurrent_requests, 8);
        assert_eq!(served.spec, http);
        assert!(
            prepare(&id, &spec_with(|_| {}), 1000, advertised)
                .unwrap()
                .http
                .is_none()
        );
        // A new target port or route is a change to what runs.
        let a = RunSpec::of(&spec);
        assert!(a.matches(&spec));
        assert!(!a.matches(&spec_with(
            |s| s.http = Some(PlacementHttp::new(&http, 31001))
        )));
        assert!(!a.matches(&spec_with(|s| s.http = None)));
    }

    #[test]
    fn decide_converges_one_component() {
        let a = RunSpec::of(&spec_with(|_| {}));
        let a_scaled = RunSpec::of(&spec_with(|s| s.instances = 5));
        assert!(a.matches(&spec_with(|_| {})));
        assert!(!a.matches(&spec_with(|s| s.instances = 5)));
        assert!(
            a.matches(&spec_with(|s| s.component.generation = 9)),
            "not a change"
        );
        let b = RunSpec::of(&spec_with(|s| s.digest = digest('b')));
        let (da, db) = (digest('a'), digest('b'));
        let idle = FetchState {
            in_flight: None,
            failed: None,
        };
        let fetching = |d| FetchState {
            in_flight: Some(d),
            failed: None,
        };
        let failed = |d, due| FetchState {
            in_flight: None,
            failed: Some((d, due)),
        };
        #[allow(clippy::type_complexity)]
        let rows: Vec<(
            &str,
            Option<&RunSpec>,
            Option<&RunSpec>,
            FetchState<'_>,
            Step,
        )> = vec![
            ("nothing wanted, nothing runs", None, None, idle, Step::Keep),
            (
                "new Placement: fetch its digest",
                Some(&a),
                None,
                idle,
                Step::Fetch,
            ),
            (
                "fetch in flight: wait",
                Some(&a),
                None,
                fetching(&da),
                Step::Wait,
            ),
            ("runs what is wanted", Some(&a), Some(&a), idle, Step::Keep),
            (
                "runs what is wanted; a stale fetch is cancelled by Keep",
                Some(&a),
                Some(&a),
                fetching(&db),
                Step::Keep,
            ),
            (
                "same digest, other replicas: reconfigure in place, no fetch",
                Some(&a_scaled),
                Some(&a),
                idle,
                Step::Reconfigure,
            ),
            (
                "new digest: fetch it while the old runs",
                Some(&b),
                Some(&a),
                idle,
                Step::Fetch,
            ),
            (
                "new digest already in flight: wait",
                Some(&b),
                Some(&a),
                fetching(&db),
                Step::Wait,
            ),
            (
                "digest changed again during a fetch: fetch the newest",
                Some(&b),
                None,
                fetching(&da),
                Step::Fetch,
            ),
            (
                "failed, retry not due: wait",
                Some(&a),
                None,
                failed(&da, false),
                Step::Wait,
            ),
            (
                "failed, retry due: fetch",
                Some(&a),
                None,
                failed(&da, true),
                Step::Fetch,
            ),
            (
                "an old digest's failure does not hold the new one back",
                Some(&b),
                None,
                failed(&da, false),
                Step::Fetch,
            ),
            (
                "a reconfigure that failed waits for its retry",
                Some(&a_scaled),
                Some(&a),
                failed(&da, false),
                Step::Wait,
            ),
            (
                "a reconfigure that failed is retried when due",
                Some(&a_scaled),
                Some(&a),
                failed(&da, true),
                Step::Reconfigure,
            ),
            ("Placement gone: stop", None, Some(&a), idle, Step::Stop),
            (
                "Placement gone during a fetch: cancel",
                None,
                None,
                fetching(&da),
                Step::Stop,
            ),
        ];
        for (rule, wanted, running, fetch, step) in rows {
            assert_eq!(decide(wanted, running, fetch), step, "{rule}");
        }
    }

    #[test]
    fn retries_back_off_to_a_cap() {
        let cap = Duration::from_secs(60);
        let delays: Vec<u64> = (1..=9).map(|n| retry_delay(n, cap).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(retry_delay(u32::MAX, cap), cap);
        assert_eq!(retry_delay(0, cap), Duration::from_secs(1));
    }
}
