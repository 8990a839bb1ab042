//! The `WasmComponent` controller: validate the spec, resolve the artifact to a digest, check
//! that the registry serves the bytes the digest names (once per digest and generation), verify
//! its signatures, decide trust, and write `Verified`/`Approved` with Events for transitions.
//!
//! Promises kept here:
//! - every decision is made by [`crate::trust::decide`] on facts gathered here, including the
//!   integrity of the bytes and the signatures that did not verify (reported, ignored);
//! - a network failure never needs the registry for the (digest, capability set) binding: the
//!   component is decided again on the digest last resolved, with its current request and
//!   namespace labels, so a wider request is `PendingApproval` at once and a narrower one keeps
//!   its approval;
//! - the operator owns its status fields: every write sets all of them (`resolvedDigest`,
//!   `approvedDigest`, `trustLevel`, `matchedSources`, `Verified`, `Approved`), clearing what
//!   does not hold, whoever wrote it; `Scheduled` and the other conditions belong to other
//!   writers and are never touched (server-side apply with only the owned fields);
//! - an approval that stops holding is reported as a revocation (Warning Event).

use std::sync::Arc;

use airssys_crds::component::{TrustLevel, WasmComponent, WasmComponentStatus};
use airssys_crds::condition::{self, Condition, ConditionStatus, ConditionType};
use airssys_crds::{Digest, artifact::OciArtifact};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalized, finalizer};
use kube::{Resource as _, ResourceExt as _};
use serde::Serialize;
use tracing::{info, instrument, warn};

use super::written::Writer;
use super::{FIELD_MANAGER, FINALIZER, StatusApply};
use crate::artifact::{
    ErrorClass, PullSecretError, SignatureLayer, config_map_bytes, config_map_digest, cosign,
    pull_credentials,
};
use crate::events::{EventReason, Reason};
use crate::trust::{ComponentFacts, TrustDecision, summarize};
use crate::{ArtifactError, Context, Error, metrics};

const CONTROLLER: &str = "wasmcomponent";
/// The most source names `status.matchedSources` lists (the message counts the rest).
const MATCHED_LIMIT: usize = 32;

pub async fn reconcile(component: Arc<WasmComponent>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer: metrics::ReconcileTimer = ctx.metrics.reconcile(CONTROLLER);
    let ns = component.namespace().unwrap_or_default();
    let api: Api<WasmComponent> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, component, |event| async {
        match event {
            Finalized::Apply(c) => apply(&c, &ctx).await,
            Finalized::Cleanup(c) => cleanup(&c, &ctx),
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

pub fn error_policy(component: Arc<WasmComponent>, error: &Error, ctx: Arc<Context>) -> Action {
    super::retry_after_error(&ctx, CONTROLLER, &key(&component), error)
}

fn key(c: &WasmComponent) -> String {
    format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any())
}

fn cleanup(c: &WasmComponent, ctx: &Context) -> Result<Action, Error> {
    forget(ctx, &c.namespace().unwrap_or_default(), &c.name_any())?;
    Ok(Action::await_change())
}

/// Why the artifact could not be resolved, classed as [`ArtifactError::class`] does.
#[derive(Debug)]
struct Failure {
    class: ErrorClass,
    message: String,
}

impl From<ArtifactError> for Failure {
    fn from(e: ArtifactError) -> Self {
        Self {
            class: e.class(),
            message: e.to_string(),
        }
    }
}

impl Failure {
    /// Reading `what` (an object the spec names) failed; `fix` says what to do when it does
    /// not exist. One line: never kube's debug dump of the API status.
    fn kube(what: &str, fix: &str, e: &kube::Error) -> Self {
        match e {
            kube::Error::Api(s) if s.code == 404 => Self {
                class: ErrorClass::NeedsAction,
                message: format!("{what} was not found: {fix}"),
            },
            kube::Error::Api(s) if s.code == 403 => Self {
                class: ErrorClass::NeedsAction,
                message: format!(
                    "the operator may not read {what}: give its ServiceAccount get on it (the chart's ClusterRole grants get on secrets and configmaps)"
                ),
            },
            _ => Self {
                class: ErrorClass::Transient,
                message: format!("reading {what}: {}", crate::kube_message(e)),
            },
        }
    }
}

/// The artifact, resolved.
#[derive(Debug)]
struct Resolved {
    repository: Option<String>,
    digest: Digest,
    layers: Vec<SignatureLayer>,
}

/// What this controller owns in `status`; everything else is left to other writers.
#[derive(Debug, Clone, PartialEq)]
struct Owned {
    observed_generation: Option<i64>,
    resolved_digest: Option<String>,
    approved_digest: Option<String>,
    trust_level: Option<TrustLevel>,
    matched_sources: Vec<String>,
    verified: Option<Condition>,
    approved: Option<Condition>,
}

/// The owned fields as sent. A field that does not hold is left out (the API server refuses
/// `null` for an enum), which removes it where it was ours alone; where another manager set it
/// too, [`finish`] clears it with a merge patch.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct OwnedStatus<'a> {
    observed_generation: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resolved_digest: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    approved_digest: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trust_level: Option<TrustLevel>,
    matched_sources: &'a [String],
    conditions: Vec<&'a Condition>,
}

impl Owned {
    fn from_status(status: &WasmComponentStatus) -> Self {
        Self {
            observed_generation: status.observed_generation,
            resolved_digest: status.resolved_digest.clone(),
            approved_digest: status.approved_digest.clone(),
            trust_level: status.trust_level,
            matched_sources: status.matched_sources.clone(),
            verified: condition::find(&status.conditions, ConditionType::Verified).cloned(),
            approved: condition::find(&status.conditions, ConditionType::Approved).cloned(),
        }
    }

    /// Sets a condition, keeping `lastTransitionTime` while the status holds.
    fn set(&mut self, new: Condition) {
        let slot = match new.type_ {
            ConditionType::Verified => &mut self.verified,
            _ => &mut self.approved,
        };
        let mut list: Vec<Condition> = slot.take().into_iter().collect();
        condition::set(&mut list, new);
        *slot = list.pop();
    }

    fn is_approved(&self) -> bool {
        self.approved.as_ref().is_some_and(Condition::is_true)
    }

    /// Nothing decided: no approval, no level, no sources.
    fn clear_decision(&mut self) {
        self.approved_digest = None;
        self.trust_level = None;
        self.matched_sources.clear();
    }

    fn patch(&self) -> StatusApply<WasmComponent, OwnedStatus<'_>> {
        StatusApply::new(OwnedStatus {
            observed_generation: self.observed_generation,
            resolved_digest: self.resolved_digest.as_deref(),
            approved_digest: self.approved_digest.as_deref(),
            trust_level: self.trust_level,
            matched_sources: &self.matched_sources,
            conditions: self.verified.iter().chain(self.approved.iter()).collect(),
        })
    }

    /// Whether `status` holds exactly the owned values (no stale or foreign ones).
    fn holds_in(&self, status: &WasmComponentStatus) -> bool {
        status.resolved_digest == self.resolved_digest
            && status.approved_digest == self.approved_digest
            && status.trust_level == self.trust_level
            && status.matched_sources == self.matched_sources
    }
}

/// The repository an OCI reference names, without asking the registry.
fn repository_of(c: &WasmComponent) -> Option<String> {
    let oci = c.spec.artifact.oci.as_ref()?;
    let parsed = oci_client::Reference::try_from(oci.reference.as_str()).ok()?;
    Some(format!("{}/{}", parsed.registry(), parsed.repository()))
}

#[instrument(skip_all, fields(namespace = %c.namespace().unwrap_or_default(), component = %c.name_any()))]
async fn apply(c: &WasmComponent, ctx: &Context) -> Result<Action, Error> {
    let ns = c.namespace().unwrap_or_default();
    let name = c.name_any();
    let generation = c.metadata.generation;
    // Our own fields as the API server holds them: from our last write when the watch's copy
    // predates it.
    let status = ctx.written.overlay(
        &c.uid().unwrap_or_default(),
        Writer::Decision,
        c.status.clone().unwrap_or_default(),
        c.resource_version().as_deref(),
    );
    let before = Owned::from_status(&status);
    let mut after = before.clone();
    after.observed_generation = generation;
    let recheck = ctx.config.recheck;

    // 1. The spec.
    let request = match c.spec.validate() {
        Ok(valid) => valid.capabilities,
        Err(e) => {
            forget(ctx, &ns, &name)?;
            let msg = format!(
                "The spec does not parse: {e}. Fix the WasmComponent; nothing runs until then."
            );
            after.set(Condition::new(
                ConditionType::Verified,
                ConditionStatus::False,
                Reason::InvalidSpec,
                msg.clone(),
                generation,
            ));
            after.set(Condition::new(
                ConditionType::Approved,
                ConditionStatus::False,
                Reason::InvalidSpec,
                msg,
                generation,
            ));
            after.clear_decision();
            finish(c, ctx, &before, &after, &[]).await?;
            return Ok(Action::await_change());
        }
    };
    let labels = ctx.namespace_labels(&ns).await?;

    // 2. The artifact. Its bytes are streamed through a hash when this digest was not already
    // verified at this generation, so rechecks of an unchanged component only re-resolve.
    let observed = before.observed_generation;
    let verified_digest = before
        .resolved_digest
        .as_deref()
        .and_then(|d| Digest::parse(d).ok())
        .filter(|_| {
            observed == generation && before.verified.as_ref().is_some_and(Condition::is_true)
        });
    let resolved = match resolve(c, ctx, verified_digest.as_ref()).await {
        Ok(r) => r,
        Err(failure) if failure.class == ErrorClass::Integrity => {
            // The bytes are not what their digest says: decided as such, and the index forgets
            // the last resolution (it must not stand in for a tampered artifact).
            forget(ctx, &ns, &name)?;
            let facts = ComponentFacts {
                namespace: ns.clone(),
                name: name.clone(),
                namespace_labels: labels,
                repository: repository_of(c),
                digest: None,
                signers: Vec::new(),
                unverifiable: Vec::new(),
                integrity: Some(failure.message),
                request,
            };
            let decision = ctx
                .index
                .read()
                .map_err(|_| Error::IndexPoisoned)?
                .decide(&facts, ctx.policy());
            after.resolved_digest = None;
            after.set(Condition::new(
                ConditionType::Verified,
                ConditionStatus::False,
                Reason::VerificationFailed,
                decision.message.clone(),
                generation,
            ));
            apply_decision(&mut after, &decision, None, generation);
            finish(c, ctx, &before, &after, &[]).await?;
            ctx.succeeded(&key(c));
            return Ok(Action::requeue(recheck));
        }
        Err(failure) => return unreachable(c, ctx, before, after, failure, request, labels).await,
    };

    // 3. Signatures, against every accepted source's keys. Those that do not verify are
    // facts for the decision (reported, not counted), never a verdict of their own.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let verification = {
        let index = ctx.index.read().map_err(|_| Error::IndexPoisoned)?;
        index.with_material(|m| cosign::verify(&resolved.digest, &resolved.layers, m, now))
    };
    let unverifiable: Vec<String> = verification
        .broken
        .iter()
        .chain(&verification.problems)
        .cloned()
        .collect();

    // 4. The decision.
    let facts = ComponentFacts {
        namespace_labels: labels,
        repository: resolved.repository.clone(),
        signers: verification.signers.clone(),
        unverifiable: unverifiable.clone(),
        ..ComponentFacts::new(&ns, &name, resolved.digest.clone(), request)
    };
    let (decision, previous) = {
        let mut index = ctx.index.write().map_err(|_| Error::IndexPoisoned)?;
        let decision = index.decide(&facts, ctx.policy());
        let previous = index.record(facts, decision.clone());
        (decision, previous)
    };
    ctx.coverage_changed(previous.as_ref(), Some(&decision));

    let mut verified_msg = format!(
        "Resolved to {}; {} verified signer(s).",
        resolved.digest,
        verification.signers.len()
    );
    if !unverifiable.is_empty() {
        verified_msg.push_str(&format!(
            " Ignored {} signature(s) that do not verify: {}.",
            unverifiable.len(),
            summarize(&unverifiable)
        ));
    }
    after.set(Condition::new(
        ConditionType::Verified,
        ConditionStatus::True,
        Reason::ArtifactVerified,
        verified_msg,
        generation,
    ));
    after.resolved_digest = Some(resolved.digest.to_string());
    apply_decision(&mut after, &decision, Some(&resolved.digest), generation);
    finish(c, ctx, &before, &after, &verification.broken).await?;
    ctx.succeeded(&key(c));
    Ok(Action::requeue(recheck))
}

/// The artifact could not be reached: not a verdict on it. The component is decided again on
/// what its artifact last resolved to (the index's record, else the digest in the status this
/// operator wrote), with its current request and namespace labels: the (digest, capability
/// set) binding needs no registry. With nothing to decide on, nothing is approved.
async fn unreachable(
    c: &WasmComponent,
    ctx: &Context,
    before: Owned,
    mut after: Owned,
    failure: Failure,
    request: airssys_crds::CapabilitySet,
    labels: std::collections::BTreeMap<String, String>,
) -> Result<Action, Error> {
    let ns = c.namespace().unwrap_or_default();
    let name = c.name_any();
    let generation = c.metadata.generation;
    let (status, reason) = match failure.class {
        ErrorClass::Transient => (ConditionStatus::Unknown, Reason::ArtifactUnreachable),
        _ => (ConditionStatus::False, Reason::ArtifactUnavailable),
    };
    let last = {
        let index = ctx.index.read().map_err(|_| Error::IndexPoisoned)?;
        index.last_facts(&ns, &name).cloned()
    };
    // After a restart the index has no record: the status's digest (of the same artifact
    // reference) is decided on, without signers, which only approvals and pinned or registry
    // sources can vouch for.
    let last = last.or_else(|| {
        let digest = Digest::parse(before.resolved_digest.as_deref()?).ok()?;
        Some(ComponentFacts {
            repository: repository_of(c),
            ..ComponentFacts::new(&ns, &name, digest, airssys_crds::CapabilitySet::default())
        })
    });
    let kept = match last {
        Some(mut facts) => {
            facts.request = request;
            facts.namespace_labels = labels;
            let digest = facts.digest.clone();
            let (decision, previous) = {
                let mut index = ctx.index.write().map_err(|_| Error::IndexPoisoned)?;
                let decision = index.decide(&facts, ctx.policy());
                let previous = index.record(facts, decision.clone());
                (decision, previous)
            };
            ctx.coverage_changed(previous.as_ref(), Some(&decision));
            apply_decision(&mut after, &decision, digest.as_ref(), generation);
            match &digest {
                Some(d) if decision.approved => {
                    format!("the approval of the last resolved digest {d} holds meanwhile")
                }
                Some(d) => format!("decided on the last resolved digest {d}: not approved"),
                None => "nothing is approved meanwhile".to_owned(),
            }
        }
        None => {
            after.set(Condition::new(
                ConditionType::Approved,
                ConditionStatus::Unknown,
                reason,
                format!("Not evaluated yet: {}", failure.message),
                generation,
            ));
            after.clear_decision();
            "nothing is approved meanwhile".to_owned()
        }
    };
    let msg = format!("{}; retrying with backoff, {kept}.", failure.message);
    after.set(Condition::new(
        ConditionType::Verified,
        status,
        reason,
        msg,
        generation,
    ));
    finish(c, ctx, &before, &after, &[]).await?;
    let delay = ctx.backoff(&key(c));
    warn!(error = %failure.message, ?delay, "artifact not available; retrying");
    Ok(Action::requeue(delay))
}

fn forget(ctx: &Context, ns: &str, name: &str) -> Result<(), Error> {
    let previous = ctx
        .index
        .write()
        .map_err(|_| Error::IndexPoisoned)?
        .forget(ns, name);
    ctx.coverage_changed(previous.as_ref(), None);
    Ok(())
}

/// Writes a decision into the owned status fields: all of them, so nothing stale survives.
fn apply_decision(
    after: &mut Owned,
    decision: &TrustDecision,
    digest: Option<&Digest>,
    generation: Option<i64>,
) {
    let mut message = decision.message.clone();
    if decision.matched_sources.len() > MATCHED_LIMIT {
        message.push_str(&format!(
            " ({} matching sources; status.matchedSources lists the first {MATCHED_LIMIT}.)",
            decision.matched_sources.len()
        ));
    }
    after.set(Condition::new(
        ConditionType::Approved,
        ConditionStatus::from(decision.approved),
        decision.reason,
        message,
        generation,
    ));
    after.trust_level = Some(decision.level);
    after.matched_sources = decision
        .matched_sources
        .iter()
        .take(MATCHED_LIMIT)
        .cloned()
        .collect();
    after.approved_digest = digest
        .filter(|_| decision.approved)
        .map(ToString::to_string);
}

/// Writes the status (when it changed, or holds values this controller did not write) and
/// publishes an Event per transition, plus one Warning per newly seen set of signatures that
/// do not verify (`broken`).
async fn finish(
    c: &WasmComponent,
    ctx: &Context,
    before: &Owned,
    after: &Owned,
    broken: &[String],
) -> Result<(), Error> {
    if before != after {
        // A field another manager also set survives our apply; take it back.
        super::write_component_status(
            ctx,
            c,
            Writer::Decision,
            FIELD_MANAGER,
            &after.patch(),
            |held| {
                (!after.holds_in(held)).then(|| {
                    serde_json::json!({ "status": {
                        "resolvedDigest": after.resolved_digest,
                        "approvedDigest": after.approved_digest,
                        "trustLevel": after.trust_level,
                        "matchedSources": after.matched_sources,
                    }})
                })
            },
        )
        .await?;
    }
    let regarding = c.object_ref(&());
    let transition = |c: &Option<Condition>| c.as_ref().map(|c| (c.status, c.reason.clone()));

    if transition(&before.verified) != transition(&after.verified)
        && let Some(cond) = &after.verified
        && cond.status != ConditionStatus::True
        && let Some(event) = cond.reason().and_then(EventReason::for_condition)
        // The Approved transition below reports these with the same reason.
        && !matches!(
            cond.reason(),
            Some(Reason::VerificationFailed | Reason::InvalidSpec)
        )
    {
        ctx.publish(&regarding, event, "Verify", cond.message.clone())
            .await;
    }
    let message_of = |c: &Option<Condition>| c.as_ref().map(|c| c.message.clone());
    if !broken.is_empty() && message_of(&before.verified) != message_of(&after.verified) {
        ctx.publish(
            &regarding,
            EventReason::SignatureUnverifiable,
            "Verify",
            format!(
                "Ignored {} signature(s) that do not verify (corrupted, tampered or made for another artifact); only verified signatures count: {}",
                broken.len(),
                summarize(broken)
            ),
        )
        .await;
    }

    if transition(&before.approved) != transition(&after.approved)
        && let Some(cond) = &after.approved
    {
        ctx.metrics.decision(&cond.reason);
        info!(approved = %cond.status, reason = %cond.reason, "decision changed");
        if let Some(event) = cond.reason().and_then(EventReason::for_condition)
            && cond.status != ConditionStatus::Unknown
        {
            ctx.publish(&regarding, event, "Approve", cond.message.clone())
                .await;
        }
        if before.is_approved() && !after.is_approved() {
            let note = format!(
                "Approval of {} revoked ({}): {}",
                before.approved_digest.as_deref().unwrap_or("the artifact"),
                cond.reason,
                cond.message
            );
            ctx.publish(&regarding, EventReason::ApprovalRevoked, "Revoke", note)
                .await;
        }
    }
    Ok(())
}

/// Resolves the artifact to a digest and fetches its signatures (OCI only). An OCI layer is
/// downloaded and hashed unless `verified_digest` is the digest it resolves to.
async fn resolve(
    c: &WasmComponent,
    ctx: &Context,
    verified_digest: Option<&Digest>,
) -> Result<Resolved, Failure> {
    let ns = c.namespace().unwrap_or_default();
    let artifact = &c.spec.artifact;
    if let Some(oci) = &artifact.oci {
        return resolve_oci(oci, &ns, ctx, verified_digest).await;
    }
    if let Some(https) = &artifact.https {
        let raw = https.digest.as_deref().unwrap_or_default();
        let expected = Digest::parse(raw).map_err(|e| Failure {
            class: ErrorClass::NeedsAction,
            message: e.to_string(),
        })?;
        ctx.resolver.fetch_https(&https.url, &expected).await?;
        return Ok(Resolved {
            repository: None,
            digest: expected,
            layers: Vec::new(),
        });
    }
    if let Some(cm) = &artifact.config_map {
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
        let map = api.get(&cm.name).await.map_err(|e| {
            Failure::kube(
                &format!("ConfigMap {} in namespace {ns}", cm.name),
                "create it there, or fix spec.artifact.configMap.name",
                &e,
            )
        })?;
        let bytes = config_map_bytes(&map, &cm.key);
        let expected = cm
            .digest
            .as_deref()
            .map(Digest::parse)
            .transpose()
            .map_err(|e| Failure {
                class: ErrorClass::NeedsAction,
                message: e.to_string(),
            })?;
        let digest = config_map_digest(&bytes, expected.as_ref())?;
        return Ok(Resolved {
            repository: None,
            digest,
            layers: Vec::new(),
        });
    }
    Err(Failure {
        class: ErrorClass::NeedsAction,
        message: "the artifact names no source (oci, https or configMap)".to_owned(),
    })
}

async fn resolve_oci(
    oci: &OciArtifact,
    ns: &str,
    ctx: &Context,
    verified_digest: Option<&Digest>,
) -> Result<Resolved, Failure> {
    let registry = oci.reference.split('/').next().unwrap_or_default();
    if oci.insecure && !ctx.config.allows_insecure(registry) {
        return Err(Failure {
            class: ErrorClass::NeedsAction,
            message: format!(
                "registry {registry} may not be used over plain HTTP: the operator allows that only for registries given with --insecure-registry"
            ),
        });
    }
    let credentials = pull_credentials(&ctx.client, ns, oci, registry)
        .await
        .map_err(|e| match e {
            PullSecretError::Read { name, source } => Failure::kube(
                &format!("pull secret {name} in namespace {ns}"),
                "create it there (a kubernetes.io/dockerconfigjson Secret; pull secrets are read from the component's namespace only), or remove it from spec.artifact.oci.pullSecrets",
                &source,
            ),
            PullSecretError::Invalid(e) => Failure::from(e),
        })?;
    let resolver = &ctx.resolver;
    let resolved = resolver
        .resolve_oci(&oci.reference, oci.insecure, credentials.as_ref())
        .await?;
    let layers = resolver
        .fetch_signatures(&resolved, credentials.as_ref())
        .await?;
    if verified_digest != Some(&resolved.digest) {
        // The manifest digest is what approvals bind to; make sure the registry serves the
        // bytes it names before vouching for them.
        resolver
            .verify_oci_layer(&resolved, credentials.as_ref())
            .await?;
    }
    Ok(Resolved {
        repository: Some(resolved.repository),
        digest: resolved.digest,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(type_: ConditionType, status: ConditionStatus, reason: Reason) -> Condition {
        Condition::new(type_, status, reason, "m", Some(1))
    }

    fn decision(approved: bool, reason: Reason, matched: &[&str]) -> TrustDecision {
        TrustDecision {
            level: if approved {
                TrustLevel::Trusted
            } else {
                TrustLevel::Unknown
            },
            approved,
            reason,
            matched_sources: matched.iter().map(|m| (*m).to_owned()).collect(),
            grant: airssys_crds::CapabilitySet::default(),
            message: "why".into(),
        }
    }

    #[test]
    fn status_patch_sets_every_owned_field_and_nothing_else() {
        let owned = Owned {
            observed_generation: Some(3),
            resolved_digest: Some(format!("sha256:{}", "a".repeat(64))),
            approved_digest: None,
            trust_level: Some(TrustLevel::Unknown),
            matched_sources: Vec::new(),
            verified: Some(cond(
                ConditionType::Verified,
                ConditionStatus::True,
                Reason::ArtifactVerified,
            )),
            approved: Some(cond(
                ConditionType::Approved,
                ConditionStatus::False,
                Reason::PendingApproval,
            )),
        };
        let patch = serde_json::to_value(owned.patch()).unwrap();
        let status = patch["status"].as_object().unwrap();
        assert_eq!(patch["kind"], "WasmComponent");
        assert_eq!(patch["apiVersion"], "wasm.airssys.dev/v1alpha1");
        assert_eq!(status["observedGeneration"], 3);
        assert!(
            !status.contains_key("approvedDigest"),
            "a field that does not hold is left out (null is refused for enums)"
        );
        assert_eq!(status["matchedSources"], serde_json::json!([]));
        assert!(
            !status.contains_key("replicas") && !status.contains_key("readyReplicas"),
            "replicas belong to the placement writer"
        );
        let types: Vec<&str> = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["Verified", "Approved"], "Scheduled is never sent");
    }

    #[test]
    fn setting_the_same_status_keeps_the_transition_time() {
        let mut o = Owned::from_status(&WasmComponentStatus::default());
        let mut first = cond(
            ConditionType::Approved,
            ConditionStatus::False,
            Reason::PendingApproval,
        );
        first.last_transition_time = "t0".into();
        o.set(first);
        o.set(cond(
            ConditionType::Approved,
            ConditionStatus::False,
            Reason::RequestExceedsCeiling,
        ));
        let a = o.approved.as_ref().unwrap();
        assert_eq!(
            (a.reason.as_str(), a.last_transition_time.as_str()),
            ("RequestExceedsCeiling", "t0")
        );
        assert!(o.verified.is_none(), "Approved never lands in Verified");
    }

    #[test]
    fn a_decision_overwrites_every_owned_field() {
        let digest = Digest::parse(&format!("sha256:{}", "b".repeat(64))).unwrap();
        // Values someone else wrote into the status.
        let mut o = Owned::from_status(&WasmComponentStatus {
            approved_digest: Some(digest.to_string()),
            matched_sources: vec!["forged".into()],
            trust_level: Some(TrustLevel::Trusted),
            ..WasmComponentStatus::default()
        });
        apply_decision(
            &mut o,
            &decision(false, Reason::PendingApproval, &[]),
            Some(&digest),
            Some(1),
        );
        assert_eq!(o.approved_digest, None);
        assert!(o.matched_sources.is_empty());
        assert_eq!(o.trust_level, Some(TrustLevel::Unknown));
        apply_decision(
            &mut o,
            &decision(true, Reason::ManuallyApproved, &["a"]),
            Some(&digest),
            Some(1),
        );
        assert_eq!(o.approved_digest.as_deref(), Some(digest.as_str()));
        assert!(o.is_approved());
        let many: Vec<String> = (0..100).map(|i| format!("s{i}")).collect();
        let names: Vec<&str> = many.iter().map(String::as_str).collect();
        apply_decision(
            &mut o,
            &decision(true, Reason::TrustSourceMatched, &names),
            Some(&digest),
            Some(1),
        );
        assert_eq!(o.matched_sources.len(), MATCHED_LIMIT);
        assert!(o.approved.unwrap().message.contains("100 matching sources"));
    }

    #[test]
    fn api_failures_read_as_one_line_with_what_to_do() {
        let api = |code, reason: &str, message: &str| {
            kube::Error::Api(
                kube::core::Status::failure(message, reason)
                    .with_code(code)
                    .boxed(),
            )
        };
        let what = "pull secret pull in namespace team";
        let fix = "create it there, or remove it from spec.artifact.oci.pullSecrets";
        // (rule, error, class, message)
        let cases = [
            (
                "missing: the object, and what to do",
                api(404, "NotFound", "secrets \"pull\" not found"),
                ErrorClass::NeedsAction,
                format!("{what} was not found: {fix}"),
            ),
            (
                "forbidden: which permission the operator lacks",
                api(403, "Forbidden", "secrets \"pull\" is forbidden"),
                ErrorClass::NeedsAction,
                format!(
                    "the operator may not read {what}: give its ServiceAccount get on it (the chart's ClusterRole grants get on secrets and configmaps)"
                ),
            ),
            (
                "anything else: the API server's answer, retried",
                api(500, "InternalError", "etcdserver: request timed out"),
                ErrorClass::Transient,
                format!(
                    "reading {what}: the API server answered 500 InternalError: etcdserver: request timed out"
                ),
            ),
        ];
        for (rule, error, class, message) in cases {
            let failure = Failure::kube(what, fix, &error);
            assert_eq!(failure.class, class, "{rule}");
            assert_eq!(failure.message, message, "{rule}");
            for dump in ["Status {", "Some(", "ApiError", "\n"] {
                assert!(
                    !failure.message.contains(dump),
                    "{rule}: {}",
                    failure.message
                );
            }
        }
        assert!(
            !crate::Error::Kube(api(409, "Conflict", "the object was modified"))
                .to_string()
                .contains("Status {"),
            "logs carry no status dump either"
        );
    }
}
