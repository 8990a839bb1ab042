//! The `TrustSource` controller: validates each source into the index, reports
//! `Accepted`/`components`, and re-queues the components whose decision a change affects.
//! It is re-queued in turn when a component's decision changes which sources cover it, so the
//! COMPONENTS column follows within seconds.
//!
//! No finalizer: the operator never writes a `TrustSource` (only its status), so it cannot
//! hold up or alter what an approver wrote. Deletions are seen on the watch stream instead
//! ([`deleted`]), and a re-list prunes sources deleted while the watch was down ([`prune`]).

use std::sync::Arc;
use std::time::Duration;

use airssys_crds::condition::{self, Condition, ConditionStatus, ConditionType};
use airssys_crds::{TrustSource, TrustSourceStatus};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource as _, ResourceExt as _};
use tracing::{info, instrument, warn};

use super::{FIELD_MANAGER, StatusApply};
use crate::events::{EventReason, Reason};
use crate::index::Applied;
use crate::{Context, Error, metrics};

const CONTROLLER: &str = "trustsource";
/// How often a source is reconciled without a change to it. `status.components` does not wait
/// for this: a component whose decision changes which sources cover it re-queues them
/// (`Context::coverage_changed`); this is only the safety net.
const REFRESH: Duration = Duration::from_secs(300);

pub async fn reconcile(source: Arc<TrustSource>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer: metrics::ReconcileTimer = ctx.metrics.reconcile(CONTROLLER);
    if source.metadata.deletion_timestamp.is_some() {
        // Going away; `deleted` handles it when the object is gone.
        return Ok(Action::await_change());
    }
    apply(&source, &ctx).await
}

pub fn error_policy(source: Arc<TrustSource>, error: &Error, ctx: Arc<Context>) -> Action {
    super::retry_after_error(&ctx, CONTROLLER, &source.name_any(), error)
}

#[instrument(skip_all, fields(source = %source.name_any()))]
async fn apply(source: &TrustSource, ctx: &Context) -> Result<Action, Error> {
    let name = source.name_any();
    let generation = source.metadata.generation;
    let policy = ctx.policy();
    let spec_changed = source.status.as_ref().and_then(|s| s.observed_generation) != generation;

    let (applied, affected, covered, signers) = {
        let mut index = ctx.index.write().map_err(|_| Error::IndexPoisoned)?;
        let had_signers = index.get(&name).is_some_and(|s| s.has_signers());
        let applied = index.apply(source);
        let has_signers = index.get(&name).is_some_and(|s| s.has_signers());
        let affected = index.affected(policy);
        let covered = index.covered_by(&name);
        (applied, affected, covered, had_signers || has_signers)
    };
    if !affected.is_empty() {
        info!(
            components = affected.len(),
            "re-evaluating affected components"
        );
    }
    ctx.requeue_components(&affected);
    // Keys feed verification, not only the decision: recorded signers may change.
    if spec_changed && signers {
        ctx.requeue_all();
    }

    let (status, reason) = match &applied {
        Applied::Accepted => (ConditionStatus::True, Reason::SourceAccepted),
        Applied::Rejected(_) | Applied::RejectedKeptDeny(_) => {
            (ConditionStatus::False, Reason::InvalidSource)
        }
    };
    let mut conditions = source
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let was =
        condition::find(&conditions, ConditionType::Accepted).map(|c| (c.status, c.reason.clone()));
    condition::set(
        &mut conditions,
        Condition::new(
            ConditionType::Accepted,
            status,
            reason,
            applied.message(),
            generation,
        ),
    );
    let accepted = condition::find(&conditions, ConditionType::Accepted).cloned();
    let patch = StatusApply::<TrustSource, _>::new(TrustSourceStatus {
        observed_generation: generation,
        conditions: accepted.into_iter().collect(),
        components: i32::try_from(covered).unwrap_or(i32::MAX),
    });
    Api::<TrustSource>::all(ctx.client.clone())
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;

    if status == ConditionStatus::False
        && was
            .as_ref()
            .is_none_or(|(s, r)| (*s, r.as_str()) != (status, reason.as_str()))
    {
        ctx.publish(
            &source.object_ref(&()),
            EventReason::Condition(Reason::InvalidSource),
            "Validate",
            applied.message(),
        )
        .await;
    }
    ctx.succeeded(&name);
    Ok(Action::requeue(REFRESH))
}

/// Forgets a deleted source and re-queues what it decided for. Called from the watch stream.
pub fn deleted(name: &str, ctx: &Context) {
    let removed = {
        let Ok(mut index) = ctx.index.write() else {
            warn!(
                source = name,
                "trust index poisoned; cannot forget a deleted source"
            );
            return;
        };
        let removed = index.remove(name);
        removed.map(|s| (s.has_signers(), index.affected(ctx.policy())))
    };
    let Some((had_signers, affected)) = removed else {
        return;
    };
    info!(
        source = name,
        components = affected.len(),
        "source deleted; re-evaluating affected components"
    );
    ctx.requeue_components(&affected);
    if had_signers {
        ctx.requeue_all();
    }
}

/// After a (re-)list: forgets indexed sources that no longer exist.
pub fn prune(existing: &[String], ctx: &Context) {
    let gone: Vec<String> = match ctx.index.read() {
        Ok(index) => index
            .sources()
            .map(|s| s.name.clone())
            .filter(|n| !existing.contains(n))
            .collect(),
        Err(_) => return,
    };
    for name in gone {
        deleted(&name, ctx);
    }
}

#[cfg(test)]
mod tests {
    use http::{Request, Response};
    use kube::client::Body;
    use tokio::sync::mpsc;

    use super::*;
    use crate::artifact::{Resolver, ResolverOptions};
    use crate::controller::{Requeues, Stores};
    use crate::{Config, Context};
    use serde_json::json;

    /// Answers the API calls of one reconcile in order; returns (method, path, body) of each.
    async fn serve(
        mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
        calls: usize,
    ) -> Vec<(String, String, serde_json::Value)> {
        let mut seen = Vec::new();
        for _ in 0..calls {
            let (request, send) = handle.next_request().await.expect("a request");
            let method = request.method().to_string();
            let path = request.uri().to_string();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            // Echo the object back, as the API server answers a patch or create.
            let mut answer = body.clone();
            answer["metadata"] = json!({ "name": "bad", "namespace": "default" });
            if body.get("status").is_some() {
                answer["spec"] = json!({ "decision": "Trust", "digests": [] });
            }
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
            seen.push((method, path, body));
        }
        seen
    }

    #[tokio::test]
    async fn an_invalid_source_is_rejected_with_a_status_and_an_event() {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let (tx, _rx) = mpsc::unbounded_channel();
        let (source_tx, _source_rx) = mpsc::unbounded_channel();
        let stores = Stores::default();
        let state = Arc::new(Context::new(
            client,
            Resolver::new(ResolverOptions::default()).unwrap(),
            Config::default(),
            Arc::default(),
            Requeues {
                components: tx,
                sources: source_tx,
            },
            stores,
        ));
        let source: TrustSource = serde_json::from_value(json!({
            "apiVersion": "wasm.airssys.dev/v1alpha1",
            "kind": "TrustSource",
            "metadata": { "name": "bad", "generation": 3, "uid": "u1" },
            "spec": { "decision": "Trust", "registries": [{ "repository": "ghcr.io" }] },
        }))
        .unwrap();

        let server = tokio::spawn(serve(handle, 2));
        let action = reconcile(Arc::new(source), state.clone()).await.unwrap();
        assert_eq!(action, Action::requeue(REFRESH));
        let calls = server.await.unwrap();

        let (method, path, body) = &calls[0];
        assert_eq!(method, "PATCH");
        assert!(
            path.starts_with("/apis/wasm.airssys.dev/v1alpha1/trustsources/bad/status?"),
            "{path}"
        );
        assert!(path.contains("fieldManager=airssys-operator") && path.contains("force=true"));
        let cond = &body["status"]["conditions"][0];
        assert_eq!(cond["type"], "Accepted");
        assert_eq!(cond["status"], "False");
        assert_eq!(cond["reason"], "InvalidSource");
        assert_eq!(cond["observedGeneration"], 3);
        assert_eq!(body["status"]["observedGeneration"], 3);
        assert!(
            cond["message"].as_str().unwrap().contains("ignored"),
            "{cond}"
        );

        let (method, path, body) = &calls[1];
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("POST", "/apis/events.k8s.io/v1/namespaces/default/events?")
        );
        assert_eq!(body["reason"], "InvalidSource");
        assert_eq!(body["type"], "Warning");
        assert_eq!(body["regarding"]["name"], "bad");

        let index = state.index.read().unwrap();
        assert!(index.get("bad").is_none(), "a rejected source is not used");
        assert!(index.rejection("bad").is_some());
    }
}
