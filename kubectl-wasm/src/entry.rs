//! What `approve` and `deny` write: the digest entry for a component, merged into a
//! `TrustSource`, and the source as a person commits it. Pure; the API calls are in
//! [`crate::cluster`].

use airssys_crds::trust_source::{ComponentRef, Decision, DigestEntry};
use airssys_crds::{TrustSource, TrustSourceSpec, WasmComponent};
use kube::ResourceExt as _;

use crate::Error;

/// Splits `NAMESPACE/NAME`.
pub fn parse_target(raw: &str) -> Result<(String, String), Error> {
    match raw.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => Err(Error::Target(raw.to_owned())),
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

pub(crate) fn component_id(c: &WasmComponent) -> (String, String) {
    (c.namespace().unwrap_or_default(), c.name_any())
}

fn resolved_digest(c: &WasmComponent) -> Result<String, Error> {
    let (namespace, name) = component_id(c);
    c.status
        .as_ref()
        .and_then(|s| s.resolved_digest.clone())
        .ok_or(Error::NotResolved { namespace, name })
}

/// The approval for `c`: bound to its resolved digest, to it alone, and to exactly the
/// capabilities it requests (a wider request later sends it back to PendingApproval).
pub fn approval_entry(
    c: &WasmComponent,
    approved_by: &str,
    reason: Option<&str>,
) -> Result<DigestEntry, Error> {
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

/// The denial for `c`: its resolved digest (a deny pins bytes, whoever runs them). It names
/// no approver: the entry type has only `approvedBy`, which would misreport a denial as an
/// approval in the audit trail.
pub fn denial_entry(c: &WasmComponent, reason: Option<&str>) -> Result<DigestEntry, Error> {
    Ok(DigestEntry {
        digest: resolved_digest(c)?,
        components: Vec::new(),
        capabilities: None,
        approved_by: None,
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
) -> Result<TrustSource, Error> {
    let mut source = existing.unwrap_or_else(|| TrustSource::new(name, empty_spec(decision)));
    if source.spec.decision != decision {
        return Err(Error::WrongDecision {
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
pub fn to_yaml(source: &TrustSource) -> Result<String, Error> {
    Ok(serde_yaml::to_string(&manifest(source))?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;
    use crate::testing::{component, digest};

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
    fn a_denial_pins_the_digest_for_everyone_and_names_no_approver() {
        let c = component("ns", "kv", "{ env: [{ name: A }] }", Some(&digest('a')));
        let e = denial_entry(&c, Some("exfiltrates")).unwrap();
        assert_eq!(e.digest, digest('a'));
        assert!(e.components.is_empty() && e.capabilities.is_none());
        assert_eq!(e.approved_by, None, "a denial is not an approval");
        assert_eq!(e.reason.as_deref(), Some("exfiltrates"));
    }

    #[test]
    fn an_unresolved_component_cannot_be_approved_or_denied() {
        let c = component("ns", "kv", "{}", None);
        let err = approval_entry(&c, "alice", None).unwrap_err();
        assert!(err.to_string().contains("no resolved digest yet"), "{err}");
        assert!(denial_entry(&c, None).is_err());
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
        let deny =
            merge_entry(None, "src", Decision::Deny, denial_entry(&c, None).unwrap()).unwrap();
        let err = merge_entry(
            Some(deny),
            "src",
            Decision::Trust,
            approval_entry(&c, "a", None).unwrap(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::WrongDecision { .. }), "{err}");
        assert!(err.to_string().contains("--source"), "{err}");
    }

    #[test]
    fn a_denial_of_the_same_digest_replaces_the_old_one() {
        let c = component("ns", "kv", "{}", Some(&digest('a')));
        let s = merge_entry(
            None,
            "d",
            Decision::Deny,
            denial_entry(&c, Some("one")).unwrap(),
        )
        .unwrap();
        let s = merge_entry(
            Some(s),
            "d",
            Decision::Deny,
            denial_entry(&c, Some("two")).unwrap(),
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
}
