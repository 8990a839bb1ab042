//! The `WasmComponent` controller: validate the spec, resolve the artifact to a digest, check
//! that the registry serves the bytes the digest names (once per digest and generation), verify
//! its signatures, decide trust, and write `Verified`/`Approved` with Events for transitions.
//!
//! Promises kept here:
//! - a network failure never changes an approval (the previous decision stays, the `Verified`
//!   condition says it is retrying);
//! - an approval that stops holding is reported as a revocation (Warning Event) and
//!   `approvedDigest` is cleared;
//! - `Scheduled` and the other conditions belong to other writers and are never touched
//!   (status goes through server-side apply with only the fields this controller owns).

use std::sync::Arc;

use airssys_crds::component::{TrustLevel, WasmComponent, WasmComponentStatus};
use airssys_crds::condition::{self, Condition, ConditionStatus, ConditionType};
use airssys_crds::{Digest, artifact::OciArtifact};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalized, finalizer};
use kube::{Resource as _, ResourceExt as _};
use serde_json::json;
use tracing::{info, instrument, warn};

use super::{FIELD_MANAGER, FINALIZER, State};
use crate::artifact::credentials::{DOCKER_CONFIG_KEY, credentials_for};
use crate::artifact::{ErrorClass, SignatureLayer, config_map_digest, cosign};
use crate::events::{EventReason, Reason};
use crate::trust::{ComponentFacts, TrustDecision};
use crate::{ArtifactError, Error, metrics};

const CONTROLLER: &str = "wasmcomponent";

pub async fn reconcile(component: Arc<WasmComponent>, state: Arc<State>) -> Result<Action, Error> {
    let _timer: metrics::ReconcileTimer = state.metrics.reconcile(CONTROLLER);
    let ns = component.namespace().unwrap_or_default();
    let api: Api<WasmComponent> = Api::namespaced(state.ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, component, |event| async {
        match event {
            Finalized::Apply(c) => apply(&c, &state).await,
            Finalized::Cleanup(c) => cleanup(&c, &state),
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

pub fn error_policy(component: Arc<WasmComponent>, error: &Error, state: Arc<State>) -> Action {
    super::retry_after_error(&state, CONTROLLER, &key(&component), error)
}

fn key(c: &WasmComponent) -> String {
    format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any())
}

fn cleanup(c: &WasmComponent, state: &State) -> Result<Action, Error> {
    let mut index = state.ctx.index.write().map_err(|_| Error::IndexPoisoned)?;
    index.forget(&c.namespace().unwrap_or_default(), &c.name_any());
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
    fn kube(what: &str, e: &kube::Error) -> Self {
        let class = match e {
            kube::Error::Api(s) if s.code == 404 || s.code == 403 => ErrorClass::NeedsAction,
            _ => ErrorClass::Transient,
        };
        Self {
            class,
            message: format!("{what}: {e}"),
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
    resolved_digest: Option<String>,
    approved_digest: Option<String>,
    trust_level: Option<TrustLevel>,
    matched_sources: Vec<String>,
    verified: Option<Condition>,
    approved: Option<Condition>,
}

impl Owned {
    fn from_status(status: &WasmComponentStatus) -> Self {
        Self {
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

    fn patch(&self, generation: Option<i64>) -> serde_json::Value {
        let mut status = serde_json::Map::new();
        status.insert("observedGeneration".into(), json!(generation));
        if let Some(d) = &self.resolved_digest {
            status.insert("resolvedDigest".into(), json!(d));
        }
        if let Some(d) = &self.approved_digest {
            status.insert("approvedDigest".into(), json!(d));
        }
        if let Some(t) = self.trust_level {
            status.insert("trustLevel".into(), json!(t));
        }
        if !self.matched_sources.is_empty() {
            status.insert("matchedSources".into(), json!(self.matched_sources));
        }
        let conditions: Vec<&Condition> =
            self.verified.iter().chain(self.approved.iter()).collect();
        status.insert("conditions".into(), json!(conditions));
        json!({
            "apiVersion": WasmComponent::api_version(&()),
            "kind": WasmComponent::kind(&()),
            "status": status,
        })
    }
}

#[instrument(skip_all, fields(namespace = %c.namespace().unwrap_or_default(), component = %c.name_any()))]
async fn apply(c: &WasmComponent, state: &State) -> Result<Action, Error> {
    let ns = c.namespace().unwrap_or_default();
    let name = c.name_any();
    let generation = c.metadata.generation;
    let before = Owned::from_status(&c.status.clone().unwrap_or_default());
    let mut after = before.clone();
    let recheck = state.ctx.config.recheck;

    // 1. The spec.
    let request = match c.spec.validate() {
        Ok(valid) => valid.capabilities,
        Err(e) => {
            forget(state, &ns, &name)?;
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
            after.approved_digest = None;
            after.trust_level = None;
            after.matched_sources.clear();
            finish(c, state, &before, &after, generation).await?;
            return Ok(Action::await_change());
        }
    };

    // 2. The artifact. Its bytes are streamed through a hash when this digest was not already
    // verified at this generation, so rechecks of an unchanged component only re-resolve.
    let observed = c.status.as_ref().and_then(|s| s.observed_generation);
    let verified_digest = before.resolved_digest.as_deref().filter(|_| {
        observed == generation && before.verified.as_ref().is_some_and(Condition::is_true)
    });
    let resolved = match resolve(c, state, verified_digest).await {
        Ok(r) => r,
        Err(failure) if failure.class == ErrorClass::Integrity => {
            after.resolved_digest = None;
            return verification_failed(c, state, &before, after, &failure.message).await;
        }
        Err(failure) => {
            // Not a verdict on the artifact: keep whatever was decided before.
            let (status, reason) = match failure.class {
                ErrorClass::Transient => (ConditionStatus::Unknown, Reason::ArtifactUnreachable),
                _ => (ConditionStatus::False, Reason::ArtifactUnavailable),
            };
            let kept = if before.is_approved() {
                "the current approval is kept meanwhile"
            } else {
                "nothing is approved meanwhile"
            };
            let msg = format!("{}; retrying with backoff, {kept}.", failure.message);
            after.set(Condition::new(
                ConditionType::Verified,
                status,
                reason,
                msg.clone(),
                generation,
            ));
            if after.approved.is_none() {
                after.set(Condition::new(
                    ConditionType::Approved,
                    ConditionStatus::Unknown,
                    reason,
                    format!("Not evaluated yet: {msg}"),
                    generation,
                ));
            }
            finish(c, state, &before, &after, generation).await?;
            let delay = state.backoff(&key(c));
            warn!(error = %failure.message, ?delay, "artifact not available; retrying");
            return Ok(Action::requeue(delay));
        }
    };

    // 3. Signatures, against every accepted source's keys.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let labels = namespace_labels(state, &ns).await?;
    let verification = {
        let index = state.ctx.index.read().map_err(|_| Error::IndexPoisoned)?;
        index.with_material(|m| cosign::verify(&resolved.digest, &resolved.layers, m, now))
    };
    if !verification.broken.is_empty() {
        // Signatures stored for this digest are corrupted or tampered with: fail closed,
        // whatever the sources say, until the signatures are fixed.
        after.resolved_digest = Some(resolved.digest.to_string());
        let message = format!(
            "the cosign signatures of {} are broken: {}",
            resolved.digest,
            verification.broken.join("; ")
        );
        return verification_failed(c, state, &before, after, &message).await;
    }

    // 4. The decision.
    let facts = ComponentFacts {
        namespace: ns.clone(),
        name: name.clone(),
        namespace_labels: labels,
        repository: resolved.repository.clone(),
        digest: resolved.digest.clone(),
        signers: verification.signers.clone(),
        request,
    };
    let decision = {
        let mut index = state.ctx.index.write().map_err(|_| Error::IndexPoisoned)?;
        let decision = index.decide(&facts, state.ctx.config.dev_mode);
        index.record(facts, decision.clone());
        decision
    };

    let mut verified_msg = format!(
        "Resolved to {}; {} verified signer(s).",
        resolved.digest,
        verification.signers.len()
    );
    for problem in &verification.problems {
        verified_msg.push(' ');
        verified_msg.push_str(problem);
        verified_msg.push('.');
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
    finish(c, state, &before, &after, generation).await?;
    state.succeeded(&key(c));
    Ok(Action::requeue(recheck))
}

/// The artifact failed verification (bytes or signatures): nothing is approved, the index
/// forgets the component, and it is checked again at the next recheck.
async fn verification_failed(
    c: &WasmComponent,
    state: &State,
    before: &Owned,
    mut after: Owned,
    message: &str,
) -> Result<Action, Error> {
    let generation = c.metadata.generation;
    forget(state, &c.namespace().unwrap_or_default(), &c.name_any())?;
    let decision = TrustDecision::verification_failed(message);
    after.set(Condition::new(
        ConditionType::Verified,
        ConditionStatus::False,
        Reason::VerificationFailed,
        decision.message.clone(),
        generation,
    ));
    apply_decision(&mut after, &decision, None, generation);
    finish(c, state, before, &after, generation).await?;
    state.succeeded(&key(c));
    Ok(Action::requeue(state.ctx.config.recheck))
}

fn forget(state: &State, ns: &str, name: &str) -> Result<(), Error> {
    state
        .ctx
        .index
        .write()
        .map_err(|_| Error::IndexPoisoned)?
        .forget(ns, name);
    Ok(())
}

/// Writes a decision into the owned status fields.
fn apply_decision(
    after: &mut Owned,
    decision: &TrustDecision,
    digest: Option<&Digest>,
    generation: Option<i64>,
) {
    after.set(Condition::new(
        ConditionType::Approved,
        if decision.approved {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        },
        decision.reason,
        decision.message.clone(),
        generation,
    ));
    after.trust_level = Some(decision.level);
    after.matched_sources.clone_from(&decision.matched_sources);
    after.approved_digest = digest
        .filter(|_| decision.approved)
        .map(ToString::to_string);
}

/// Writes the status (when it changed) and publishes an Event per transition.
async fn finish(
    c: &WasmComponent,
    state: &State,
    before: &Owned,
    after: &Owned,
    generation: Option<i64>,
) -> Result<(), Error> {
    let observed = c.status.as_ref().and_then(|s| s.observed_generation);
    if before != after || observed != generation {
        let api: Api<WasmComponent> =
            Api::namespaced(state.ctx.client.clone(), &c.namespace().unwrap_or_default());
        api.patch_status(
            &c.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&after.patch(generation)),
        )
        .await?;
    }
    let regarding = c.object_ref(&());
    let state_of = |c: &Option<Condition>| c.as_ref().map(|c| (c.status, c.reason.clone()));

    if state_of(&before.verified) != state_of(&after.verified)
        && let Some(cond) = &after.verified
        && cond.status != ConditionStatus::True
        && let Some(event) = reason_of(&cond.reason).and_then(Reason::event)
        // The Approved transition below reports these with the same reason.
        && !matches!(event, EventReason::VerificationFailed | EventReason::InvalidSpec)
    {
        state
            .publish(&regarding, event, "Verify", cond.message.clone())
            .await;
    }

    if state_of(&before.approved) != state_of(&after.approved)
        && let Some(cond) = &after.approved
    {
        state.metrics.decision(&cond.reason);
        info!(approved = %cond.status_str(), reason = %cond.reason, "decision changed");
        if let Some(event) = reason_of(&cond.reason).and_then(Reason::event)
            && cond.status != ConditionStatus::Unknown
        {
            state
                .publish(&regarding, event, "Approve", cond.message.clone())
                .await;
        }
        if before.is_approved() && !after.is_approved() {
            let note = format!(
                "Approval of {} revoked ({}): {}",
                before.approved_digest.as_deref().unwrap_or("the artifact"),
                cond.reason,
                cond.message
            );
            state
                .publish(&regarding, EventReason::ApprovalRevoked, "Revoke", note)
                .await;
        }
    }
    Ok(())
}

/// The condition-reason constant behind a wire string.
fn reason_of(s: &str) -> Option<Reason> {
    [
        Reason::TrustSourceMatched,
        Reason::ManuallyApproved,
        Reason::PendingApproval,
        Reason::Denied,
        Reason::DevModeBypass,
        Reason::RequestExceedsCeiling,
        Reason::VerificationFailed,
        Reason::ArtifactVerified,
        Reason::ArtifactUnreachable,
        Reason::ArtifactUnavailable,
        Reason::InvalidSpec,
    ]
    .into_iter()
    .find(|r| r.as_str() == s)
}

trait StatusStr {
    fn status_str(&self) -> &'static str;
}

impl StatusStr for Condition {
    fn status_str(&self) -> &'static str {
        match self.status {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

async fn namespace_labels(
    state: &State,
    ns: &str,
) -> Result<std::collections::BTreeMap<String, String>, Error> {
    let api: Api<Namespace> = Api::all(state.ctx.client.clone());
    Ok(api.get(ns).await?.metadata.labels.unwrap_or_default())
}

/// Resolves the artifact to a digest and fetches its signatures (OCI only). An OCI layer is
/// downloaded and hashed unless `verified_digest` is the digest it resolves to.
async fn resolve(
    c: &WasmComponent,
    state: &State,
    verified_digest: Option<&str>,
) -> Result<Resolved, Failure> {
    let ns = c.namespace().unwrap_or_default();
    let artifact = &c.spec.artifact;
    if let Some(oci) = &artifact.oci {
        return resolve_oci(oci, &ns, state, verified_digest).await;
    }
    if let Some(https) = &artifact.https {
        let raw = https.digest.as_deref().unwrap_or_default();
        let expected = Digest::parse(raw).map_err(|e| Failure {
            class: ErrorClass::NeedsAction,
            message: e.to_string(),
        })?;
        state
            .ctx
            .resolver
            .fetch_https(&https.url, &expected)
            .await?;
        return Ok(Resolved {
            repository: None,
            digest: expected,
            layers: Vec::new(),
        });
    }
    if let Some(cm) = &artifact.config_map {
        let api: Api<ConfigMap> = Api::namespaced(state.ctx.client.clone(), &ns);
        let map = api
            .get(&cm.name)
            .await
            .map_err(|e| Failure::kube(&format!("ConfigMap {}", cm.name), &e))?;
        let bytes = map
            .binary_data
            .as_ref()
            .and_then(|b| b.get(&cm.key))
            .map(|b| b.0.clone())
            .or_else(|| {
                map.data
                    .as_ref()
                    .and_then(|d| d.get(&cm.key))
                    .map(|s| s.clone().into_bytes())
            })
            .unwrap_or_default();
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
    state: &State,
    verified_digest: Option<&str>,
) -> Result<Resolved, Failure> {
    let registry = oci.reference.split('/').next().unwrap_or_default();
    if oci.insecure && !state.ctx.config.allows_insecure(registry) {
        return Err(Failure {
            class: ErrorClass::NeedsAction,
            message: format!(
                "registry {registry} may not be used over plain HTTP: the operator allows that only for registries given with --insecure-registry"
            ),
        });
    }
    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();
    let api: Api<Secret> = Api::namespaced(state.ctx.client.clone(), ns);
    for r in &oci.pull_secrets {
        // Only the component's own namespace: a tenant must not borrow another's credentials.
        let secret = api.get(&r.name).await.map_err(|e| {
            Failure::kube(
                &format!(
                    "pull secret {} in namespace {ns} (pull secrets are read from the component's namespace only)",
                    r.name
                ),
                &e,
            )
        })?;
        if let Some(bytes) = secret.data.and_then(|mut d| d.remove(DOCKER_CONFIG_KEY)) {
            secrets.push((r.name.clone(), bytes.0));
        }
    }
    let borrowed: Vec<(&str, &[u8])> = secrets
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let credentials = credentials_for(&borrowed, registry).map_err(ArtifactError::from)?;
    let resolver = &state.ctx.resolver;
    let resolved = resolver
        .resolve_oci(&oci.reference, oci.insecure, credentials.as_ref())
        .await?;
    let layers = resolver
        .fetch_signatures(&resolved, credentials.as_ref())
        .await?;
    if verified_digest != Some(resolved.digest.as_str()) {
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

    #[test]
    fn status_patch_holds_only_owned_fields() {
        let owned = Owned {
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
        let patch = owned.patch(Some(3));
        let status = patch["status"].as_object().unwrap();
        assert_eq!(patch["kind"], "WasmComponent");
        assert_eq!(status["observedGeneration"], 3);
        assert!(
            !status.contains_key("approvedDigest"),
            "an omitted field is removed by server-side apply"
        );
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
    fn approved_digest_follows_the_decision() {
        let digest = Digest::parse(&format!("sha256:{}", "b".repeat(64))).unwrap();
        let mut o = Owned::from_status(&WasmComponentStatus::default());
        let mut d = TrustDecision::verification_failed("x");
        apply_decision(&mut o, &d, Some(&digest), Some(1));
        assert_eq!(o.approved_digest, None);
        d.approved = true;
        d.reason = Reason::ManuallyApproved;
        apply_decision(&mut o, &d, Some(&digest), Some(1));
        assert_eq!(o.approved_digest.as_deref(), Some(digest.as_str()));
        assert!(o.is_approved());
        assert!(reason_of("ManuallyApproved").is_some() && reason_of("Nope").is_none());
    }
}
