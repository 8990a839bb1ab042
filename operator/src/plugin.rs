//! `kubectl wasm`: the pure parts of the plugin (which components wait, the approval or denial
//! entry to write, how it merges into an existing `TrustSource`, what `explain` says) and the
//! few API calls it makes. The binary (`src/bin/kubectl-wasm.rs`) parses flags and prints.

use std::fmt::Write as _;

use airssys_crds::condition::find;
use airssys_crds::trust_source::{ComponentRef, Decision, DigestEntry};
use airssys_crds::{CapabilitySet, ConditionStatus, ConditionType, TrustSource, TrustSourceSpec};
use airssys_crds::{WasmComponent, WasmComponentSpec};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt as _};

use crate::events::Reason;

/// The field manager the plugin's writes are recorded under.
pub const FIELD_MANAGER: &str = "kubectl-wasm";

/// Everything the plugin can fail at, each saying what to do next.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("expected NAMESPACE/NAME, got {0:?}")]
    Target(String),
    #[error(
        "WasmComponent {namespace}/{name} has no resolved digest yet; wait until the operator \
         has resolved its artifact (kubectl wasm explain {namespace}/{name})"
    )]
    NotResolved { namespace: String, name: String },
    #[error("WasmComponent {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
    #[error("WasmComponent {component}: its capabilities do not parse: {source}")]
    Capabilities {
        component: String,
        #[source]
        source: airssys_crds::capability::CapabilityError,
    },
    #[error("TrustSource {name} decides {found}, not {wanted}; choose another --source")]
    WrongDecision {
        name: String,
        found: Decision,
        wanted: Decision,
    },
    #[error("could not tell who you are; pass --approved-by")]
    UnknownApprover,
    #[error("TrustSource {name} kept changing while it was updated; try again")]
    Conflict { name: String },
    #[error("printing YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Splits `NAMESPACE/NAME`.
pub fn parse_target(raw: &str) -> Result<(String, String), PluginError> {
    match raw.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => Err(PluginError::Target(raw.to_owned())),
    }
}

/// The default source for approvals in `namespace`.
pub fn approvals_source_name(namespace: &str) -> String {
    format!("approvals-{namespace}")
}

/// The default source for denials in `namespace`.
pub fn denials_source_name(namespace: &str) -> String {
    format!("denied-{namespace}")
}

fn component_id(c: &WasmComponent) -> (String, String) {
    (c.namespace().unwrap_or_default(), c.name_any())
}

fn resolved_digest(c: &WasmComponent) -> Result<String, PluginError> {
    let (namespace, name) = component_id(c);
    c.status
        .as_ref()
        .and_then(|s| s.resolved_digest.clone())
        .ok_or(PluginError::NotResolved { namespace, name })
}

/// The approval for `c`: bound to its resolved digest, to it alone, and to exactly the
/// capabilities it requests (a wider request later sends it back to PendingApproval).
pub fn approval_entry(
    c: &WasmComponent,
    approved_by: &str,
    reason: Option<&str>,
) -> Result<DigestEntry, PluginError> {
    let digest = resolved_digest(c)?;
    let (namespace, name) = component_id(c);
    Ok(DigestEntry {
        digest,
        components: vec![ComponentRef { namespace, name }],
        capabilities: Some(c.spec.capabilities.clone()),
        approved_by: Some(approved_by.to_owned()),
        reason: reason.map(str::to_owned),
    })
}

/// The denial for `c`: its resolved digest (a deny pins bytes, whoever runs them).
pub fn denial_entry(
    c: &WasmComponent,
    denied_by: Option<&str>,
    reason: Option<&str>,
) -> Result<DigestEntry, PluginError> {
    Ok(DigestEntry {
        digest: resolved_digest(c)?,
        components: Vec::new(),
        capabilities: None,
        approved_by: denied_by.map(str::to_owned),
        reason: reason.map(str::to_owned),
    })
}

fn empty_spec(decision: Decision) -> TrustSourceSpec {
    TrustSourceSpec {
        decision,
        registries: Vec::new(),
        keys: Vec::new(),
        identities: Vec::new(),
        trust_root: None,
        digests: Vec::new(),
        namespace_selector: None,
        capability_ceiling: None,
        minimum_signatures: None,
    }
}

/// `existing` (or a new source called `name` deciding `decision`) with `entry` added. An
/// entry for the same digest that names the same component is replaced; the component is
/// taken out of a shared entry for that digest, so exactly one entry speaks for it.
pub fn merge_entry(
    existing: Option<TrustSource>,
    name: &str,
    decision: Decision,
    entry: DigestEntry,
) -> Result<TrustSource, PluginError> {
    let mut source = existing.unwrap_or_else(|| TrustSource::new(name, empty_spec(decision)));
    if source.spec.decision != decision {
        return Err(PluginError::WrongDecision {
            name: source.name_any(),
            found: source.spec.decision,
            wanted: decision,
        });
    }
    let digests = std::mem::take(&mut source.spec.digests);
    for mut old in digests {
        if old.digest == entry.digest {
            if entry.components.is_empty() {
                // A plain pin of the same digest is superseded by the new one.
                if old.components.is_empty() {
                    continue;
                }
            } else if !old.components.is_empty() {
                old.components.retain(|c| !entry.components.contains(c));
                if old.components.is_empty() {
                    continue;
                }
            }
        }
        source.spec.digests.push(old);
    }
    source.spec.digests.push(entry);
    Ok(source)
}

/// The source as a person commits it: no server-set metadata, no status.
pub fn manifest(source: &TrustSource) -> TrustSource {
    let mut clean = TrustSource::new(&source.name_any(), source.spec.clone());
    clean.metadata.labels = source.metadata.labels.clone();
    clean.metadata.annotations = source.metadata.annotations.clone().map(|mut a| {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
        a
    });
    clean
}

/// `manifest(source)` as YAML.
pub fn to_yaml(source: &TrustSource) -> Result<String, PluginError> {
    Ok(serde_yaml::to_string(&manifest(source))?)
}

/// One line of `kubectl wasm pending`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRow {
    pub namespace: String,
    pub name: String,
    pub digest: String,
    pub requested: String,
    pub reason: String,
    pub age: String,
}

/// Whether `c` waits for a person: Approved=False for PendingApproval or RequestExceedsCeiling.
pub fn is_pending(c: &WasmComponent) -> bool {
    pending_reason(c).is_some()
}

fn pending_reason(c: &WasmComponent) -> Option<&str> {
    let status = c.status.as_ref()?;
    let cond = find(&status.conditions, ConditionType::Approved)?;
    let waiting = [
        Reason::PendingApproval.to_string(),
        Reason::RequestExceedsCeiling.to_string(),
    ];
    (cond.status == ConditionStatus::False && waiting.contains(&cond.reason))
        .then_some(cond.reason.as_str())
}

/// The request as one line, in the grammar's own words.
pub fn requested_summary(spec: &WasmComponentSpec) -> String {
    match CapabilitySet::parse(&spec.capabilities) {
        Ok(set) => set.to_string(),
        Err(e) => format!("invalid: {e}"),
    }
}

/// `sha256:` and the first 12 hex digits, as image tools shorten digests.
pub fn short_digest(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.get(..12).unwrap_or(hex).to_owned()
}

/// Age of `since` (RFC 3339) at `now`, as kubectl prints it.
pub fn age(since: &str, now: jiff::Timestamp) -> String {
    let Ok(since) = since.parse::<jiff::Timestamp>() else {
        return "<unknown>".to_owned();
    };
    let secs = now.as_second().saturating_sub(since.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The rows for the components that wait for a person, sorted by namespace and name.
pub fn pending_rows(components: &[WasmComponent], now: jiff::Timestamp) -> Vec<PendingRow> {
    let mut rows: Vec<PendingRow> = components
        .iter()
        .filter_map(|c| {
            let reason = pending_reason(c)?;
            let status = c.status.as_ref()?;
            let since = find(&status.conditions, ConditionType::Approved)
                .map(|cond| cond.last_transition_time.as_str())
                .unwrap_or_default();
            let (namespace, name) = component_id(c);
            Some(PendingRow {
                namespace,
                name,
                digest: status
                    .resolved_digest
                    .as_deref()
                    .map_or_else(|| "<unresolved>".to_owned(), short_digest),
                requested: requested_summary(&c.spec),
                reason: reason.to_owned(),
                age: age(since, now),
            })
        })
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    rows
}

/// A kubectl-style table: columns padded to their widest cell, three spaces apart.
pub fn render_table(rows: &[PendingRow]) -> String {
    let header = ["NAMESPACE", "NAME", "DIGEST", "REASON", "AGE", "REQUESTED"];
    let cells: Vec<[&str; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.namespace.as_str(),
                r.name.as_str(),
                r.digest.as_str(),
                r.reason.as_str(),
                r.age.as_str(),
                r.requested.as_str(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(cells.iter()) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}   ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The command that approves `c` as it stands.
pub fn approve_command(namespace: &str, name: &str) -> String {
    format!("kubectl wasm approve {namespace}/{name} --reason '<why>'")
}

/// Why `c` is or is not approved, for a person.
pub fn explain(c: &WasmComponent) -> String {
    let (namespace, name) = component_id(c);
    let status = c.status.clone().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "WasmComponent {namespace}/{name}");
    let trust = status
        .trust_level
        .map_or_else(|| "<not decided>".to_owned(), |t| t.to_string());
    let _ = writeln!(out, "  Trust level:      {trust}");
    let _ = writeln!(
        out,
        "  Resolved digest:  {}",
        status
            .resolved_digest
            .as_deref()
            .unwrap_or("<not resolved>")
    );
    let _ = writeln!(
        out,
        "  Approved digest:  {}",
        status.approved_digest.as_deref().unwrap_or("<none>")
    );
    let matched = if status.matched_sources.is_empty() {
        "<none>".to_owned()
    } else {
        status.matched_sources.join(", ")
    };
    let _ = writeln!(out, "  Matched sources:  {matched}");
    let _ = writeln!(out, "  Requested:        {}", requested_summary(&c.spec));
    let _ = writeln!(out, "  Conditions:");
    if status.conditions.is_empty() {
        let _ = writeln!(out, "    <none yet: the operator has not reconciled it>");
    }
    for cond in &status.conditions {
        let state = match cond.status {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        };
        let _ = writeln!(
            out,
            "    {}={state} ({}): {}",
            cond.type_, cond.reason, cond.message
        );
    }
    if is_pending(c) {
        let _ = writeln!(out, "It waits for a person's approval. To approve it, run:");
        let _ = writeln!(out, "  {}", approve_command(&namespace, &name));
        let _ = writeln!(
            out,
            "or add `--dry-run -o yaml` to get a TrustSource to commit through a pull request."
        );
    }
    out
}

/// Reads a component, saying which one was missing.
pub async fn get_component(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<WasmComponent, PluginError> {
    Api::<WasmComponent>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
        .ok_or_else(|| PluginError::NotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
}

/// Components in `namespace`, or everywhere when `None`.
pub async fn list_components(
    client: &Client,
    namespace: Option<&str>,
) -> Result<Vec<WasmComponent>, PluginError> {
    let api: Api<WasmComponent> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    Ok(api.list(&ListParams::default()).await?.items)
}

/// The caller's user name as the API server authenticated it (SelfSubjectReview).
pub async fn whoami(client: &Client) -> Result<String, PluginError> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .filter(|u| !u.is_empty())
        .ok_or(PluginError::UnknownApprover)
}

/// The source `name` with `entry` merged in, as it stands on the server now.
pub async fn planned_source(
    client: &Client,
    name: &str,
    decision: Decision,
    entry: DigestEntry,
) -> Result<TrustSource, PluginError> {
    let api: Api<TrustSource> = Api::all(client.clone());
    merge_entry(api.get_opt(name).await?, name, decision, entry)
}

/// Writes `entry` into source `name`: creates it, or replaces it guarded by its
/// resourceVersion (retrying when someone else wrote in between).
pub async fn write_entry(
    client: &Client,
    name: &str,
    decision: Decision,
    entry: DigestEntry,
) -> Result<TrustSource, PluginError> {
    let api: Api<TrustSource> = Api::all(client.clone());
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    for _ in 0..5 {
        let existing = api.get_opt(name).await?;
        let create = existing.is_none();
        let source = merge_entry(existing, name, decision, entry.clone())?;
        let written = if create {
            api.create(&params, &manifest(&source)).await
        } else {
            api.replace(name, &params, &source).await
        };
        match written {
            Ok(s) => return Ok(s),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(PluginError::Conflict {
        name: name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use airssys_crds::Condition;

    fn component(ns: &str, name: &str, caps: &str, digest: Option<&str>) -> WasmComponent {
        let spec: WasmComponentSpec = serde_yaml::from_str(&format!(
            "artifact: {{ oci: {{ reference: 'r.example/x:v1' }} }}\ncapabilities: {caps}\n"
        ))
        .unwrap();
        let mut c = WasmComponent::new(name, spec);
        c.metadata.namespace = Some(ns.to_owned());
        c.status = Some(airssys_crds::WasmComponentStatus {
            resolved_digest: digest.map(str::to_owned),
            ..Default::default()
        });
        c
    }

    fn with_approved(mut c: WasmComponent, status: ConditionStatus, reason: &str) -> WasmComponent {
        let mut cond = Condition::new(ConditionType::Approved, status, reason, "msg", None);
        cond.last_transition_time = "2026-01-01T00:00:00Z".to_owned();
        c.status.get_or_insert_default().conditions.push(cond);
        c
    }

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn targets_are_namespace_slash_name() {
        assert_eq!(
            parse_target("ns/a").unwrap(),
            ("ns".to_owned(), "a".to_owned())
        );
        for bad in ["a", "/a", "ns/", "ns/a/b", ""] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn approval_is_bound_to_digest_component_and_exact_request() {
        let c = component(
            "ns",
            "kv",
            "{ env: [{ name: LOG_LEVEL }] }",
            Some(&digest('a')),
        );
        let e = approval_entry(&c, "alice", Some("PR 42")).unwrap();
        assert_eq!(e.digest, digest('a'));
        assert_eq!(
            e.components,
            vec![ComponentRef {
                namespace: "ns".into(),
                name: "kv".into()
            }]
        );
        assert_eq!(e.capabilities.as_ref(), Some(&c.spec.capabilities));
        assert_eq!(e.approved_by.as_deref(), Some("alice"));
        assert_eq!(e.reason.as_deref(), Some("PR 42"));
    }

    #[test]
    fn an_unresolved_component_cannot_be_approved_or_denied() {
        let c = component("ns", "kv", "{}", None);
        let err = approval_entry(&c, "alice", None).unwrap_err();
        assert!(err.to_string().contains("no resolved digest yet"), "{err}");
        assert!(denial_entry(&c, None, None).is_err());
    }

    #[test]
    fn merging_into_nothing_creates_a_source_with_the_decision() {
        let c = component("ns", "kv", "{}", Some(&digest('a')));
        let s = merge_entry(
            None,
            "approvals-ns",
            Decision::Trust,
            approval_entry(&c, "a", None).unwrap(),
        )
        .unwrap();
        assert_eq!(s.name_any(), "approvals-ns");
        assert_eq!(s.spec.decision, Decision::Trust);
        assert_eq!(s.spec.digests.len(), 1);
    }

    #[test]
    fn merging_keeps_other_entries_and_replaces_this_components_entry() {
        let kv = component("ns", "kv", "{ env: [{ name: A }] }", Some(&digest('a')));
        let other = component("ns", "other", "{}", Some(&digest('b')));
        let s = merge_entry(
            None,
            "src",
            Decision::Trust,
            approval_entry(&other, "a", None).unwrap(),
        )
        .unwrap();
        let s = merge_entry(
            Some(s),
            "src",
            Decision::Trust,
            approval_entry(&kv, "a", Some("first")).unwrap(),
        )
        .unwrap();
        let s = merge_entry(
            Some(s),
            "src",
            Decision::Trust,
            approval_entry(&kv, "a", Some("second")).unwrap(),
        )
        .unwrap();
        assert_eq!(s.spec.digests.len(), 2, "{:?}", s.spec.digests);
        assert_eq!(s.spec.digests[0].digest, digest('b'));
        assert_eq!(s.spec.digests[1].reason.as_deref(), Some("second"));
    }

    #[test]
    fn merging_takes_the_component_out_of_a_shared_entry_for_the_same_digest() {
        let kv = component("ns", "kv", "{}", Some(&digest('a')));
        let mut shared = approval_entry(&kv, "a", None).unwrap();
        shared.components.push(ComponentRef {
            namespace: "ns".into(),
            name: "twin".into(),
        });
        let s = merge_entry(None, "src", Decision::Trust, shared).unwrap();
        let s = merge_entry(
            Some(s),
            "src",
            Decision::Trust,
            approval_entry(&kv, "b", None).unwrap(),
        )
        .unwrap();
        assert_eq!(s.spec.digests.len(), 2);
        assert_eq!(s.spec.digests[0].components[0].name, "twin");
        assert_eq!(s.spec.digests[0].components.len(), 1);
        assert_eq!(s.spec.digests[1].approved_by.as_deref(), Some("b"));
    }

    #[test]
    fn merging_into_a_source_with_another_decision_is_refused() {
        let c = component("ns", "kv", "{}", Some(&digest('a')));
        let deny = merge_entry(
            None,
            "src",
            Decision::Deny,
            denial_entry(&c, None, None).unwrap(),
        )
        .unwrap();
        let err = merge_entry(
            Some(deny),
            "src",
            Decision::Trust,
            approval_entry(&c, "a", None).unwrap(),
        )
        .unwrap_err();
        assert!(matches!(err, PluginError::WrongDecision { .. }), "{err}");
    }

    #[test]
    fn a_denial_of_the_same_digest_replaces_the_old_one() {
        let c = component("ns", "kv", "{}", Some(&digest('a')));
        let s = merge_entry(
            None,
            "d",
            Decision::Deny,
            denial_entry(&c, None, Some("one")).unwrap(),
        )
        .unwrap();
        let s = merge_entry(
            Some(s),
            "d",
            Decision::Deny,
            denial_entry(&c, None, Some("two")).unwrap(),
        )
        .unwrap();
        assert_eq!(s.spec.digests.len(), 1);
        assert_eq!(s.spec.digests[0].reason.as_deref(), Some("two"));
        assert!(s.spec.digests[0].components.is_empty());
    }

    #[test]
    fn the_manifest_drops_server_fields_and_round_trips() {
        let c = component("ns", "kv", "{ env: [{ name: A }] }", Some(&digest('a')));
        let mut s = merge_entry(
            None,
            "src",
            Decision::Trust,
            approval_entry(&c, "a", None).unwrap(),
        )
        .unwrap();
        s.metadata.resource_version = Some("42".into());
        s.metadata.uid = Some("u".into());
        let yaml = to_yaml(&s).unwrap();
        assert!(
            !yaml.contains("resourceVersion") && !yaml.contains("uid"),
            "{yaml}"
        );
        let back: TrustSource = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back.spec, s.spec);
        assert!(yaml.contains("kind: TrustSource"), "{yaml}");
    }

    #[test]
    fn pending_lists_only_components_waiting_for_a_person() {
        let now: jiff::Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        let comps = vec![
            with_approved(
                component("b", "wide", "{ env: [{ name: A }] }", Some(&digest('b'))),
                ConditionStatus::False,
                "RequestExceedsCeiling",
            ),
            with_approved(
                component("a", "kv", "{}", Some(&digest('a'))),
                ConditionStatus::False,
                "PendingApproval",
            ),
            with_approved(
                component("a", "ok", "{}", Some(&digest('c'))),
                ConditionStatus::True,
                "TrustSourceMatched",
            ),
            with_approved(
                component("a", "bad", "{}", Some(&digest('d'))),
                ConditionStatus::False,
                "Denied",
            ),
            component("a", "new", "{}", None),
        ];
        let rows = pending_rows(&comps, now);
        let names: Vec<_> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["kv", "wide"]);
        assert_eq!(rows[0].digest, "aaaaaaaaaaaa");
        assert_eq!(rows[0].age, "5m");
        assert_eq!(rows[0].requested, "none");
        assert!(rows[1].requested.contains('A'), "{}", rows[1].requested);
    }

    #[test]
    fn the_table_aligns_columns_under_a_header() {
        let row = |ns: &str, name: &str| PendingRow {
            namespace: ns.into(),
            name: name.into(),
            digest: "aaaaaaaaaaaa".into(),
            requested: "none".into(),
            reason: "PendingApproval".into(),
            age: "5s".into(),
        };
        let table = render_table(&[row("a", "kv"), row("longer-ns", "x")]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("NAMESPACE   NAME"), "{table}");
        let col = lines[0].find("DIGEST").unwrap();
        assert_eq!(lines[1].find("aaaa"), Some(col), "{table}");
        assert_eq!(lines[2].find("aaaa"), Some(col), "{table}");
        assert!(lines[2].ends_with("none"), "{table}");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now: jiff::Timestamp = "2026-01-03T00:00:00Z".parse().unwrap();
        assert_eq!(age("2026-01-02T23:59:30Z", now), "30s");
        assert_eq!(age("2026-01-02T23:00:00Z", now), "60m");
        assert_eq!(age("2026-01-02T00:00:00Z", now), "24h");
        assert_eq!(age("2026-01-01T00:00:00Z", now), "2d");
        assert_eq!(age("garbage", now), "<unknown>");
    }

    #[test]
    fn explain_gives_the_approve_line_only_when_pending() {
        let pending = with_approved(
            component("ns", "kv", "{}", Some(&digest('a'))),
            ConditionStatus::False,
            "PendingApproval",
        );
        let text = explain(&pending);
        assert!(
            text.contains("Approved=False (PendingApproval): msg"),
            "{text}"
        );
        assert!(text.contains("kubectl wasm approve ns/kv"), "{text}");
        assert!(text.contains(&digest('a')), "{text}");
        let ok = with_approved(
            component("ns", "kv", "{}", Some(&digest('a'))),
            ConditionStatus::True,
            "ManuallyApproved",
        );
        assert!(!explain(&ok).contains("kubectl wasm approve"));
    }
}
