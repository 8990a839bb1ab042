//! The agent's Lease: how the operator knows this node's agent is alive and what it can run
//! (the contract is `airssys_crds::agent`). Renewed by server-side apply, as the kubelet
//! renews its node lease; released (deleted) on a graceful shutdown.

use std::collections::BTreeMap;
use std::time::Duration;

use airssys_crds::agent::{
    ADDRESS_ANNOTATION, AGENT_FIELD_MANAGER, AGENT_LEASE_LABEL, AgentCapacity, lease_name,
};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};

use crate::error::Error;

/// Where and how often the Lease is written.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub node: String,
    /// The product's namespace.
    pub namespace: String,
    pub capacity: AgentCapacity,
    /// The address HTTP components are served on ([`ADDRESS_ANNOTATION`]).
    pub address: std::net::IpAddr,
    /// Seconds the Lease stays live after a renewal.
    pub duration_seconds: i32,
    /// Time between renewals.
    pub renew_every: Duration,
}

/// The Lease as this agent writes it (pure): its name, label, holder, duration, capacity
/// annotations, and the times it was acquired and renewed.
pub fn lease(config: &LeaseConfig, acquired: jiff::Timestamp, renewed: jiff::Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(lease_name(&config.node)),
            namespace: Some(config.namespace.clone()),
            labels: Some(BTreeMap::from([(
                AGENT_LEASE_LABEL.to_owned(),
                "true".to_owned(),
            )])),
            annotations: Some({
                let mut annotations = config.capacity.to_annotations();
                annotations.insert(ADDRESS_ANNOTATION.to_owned(), config.address.to_string());
                annotations
            }),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(config.node.clone()),
            lease_duration_seconds: Some(config.duration_seconds),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            ..LeaseSpec::default()
        }),
    }
}

/// Creates or renews the Lease (server-side apply, forced: the Lease is this agent's own).
pub async fn renew(api: &Api<Lease>, lease: &Lease) -> Result<(), Error> {
    let name = lease.metadata.name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(AGENT_FIELD_MANAGER).force(),
        &Patch::Apply(lease),
    )
    .await
    .map(drop)
    .map_err(|source| Error::Kube {
        what: format!("renew Lease {name}"),
        source,
    })
}

/// Deletes the Lease so the operator sees this node gone at once instead of after
/// `LEASE_DURATION_SECONDS` (the name is this node's alone). Already gone is fine.
pub async fn release(api: &Api<Lease>, node: &str) -> Result<(), Error> {
    let name = lease_name(node);
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(Error::Kube {
            what: format!("delete Lease {name}"),
            source,
        }),
    }
}

/// Renews the Lease every `renew_every` until `stop` resolves. A failed renewal is logged and
/// retried sooner (1 s doubling up to the renewal interval); it never ends the loop. The
/// Lease is not released here: the caller does, after it stopped the instances.
pub async fn keep(
    api: Api<Lease>,
    config: LeaseConfig,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let acquired = jiff::Timestamp::now();
    let mut failures: u32 = 0;
    loop {
        let renewal = lease(&config, acquired, jiff::Timestamp::now());
        let result = tokio::select! {
            () = &mut stop => return,
            result = renew(&api, &renewal) => result,
        };
        let wait = match result {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(node = %config.node, "Lease renewed again");
                }
                failures = 0;
                config.renew_every
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(node = %config.node, error = %e, failures, "cannot renew the agent Lease; retrying");
                super::placements::retry_delay(failures, config.renew_every)
            }
        };
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;
    use airssys_crds::agent::{CAPACITY_INSTANCES_ANNOTATION, CAPACITY_MEMORY_ANNOTATION};

    #[test]
    fn the_lease_carries_the_contract() {
        let config = LeaseConfig {
            node: "node-a".to_owned(),
            namespace: "airssys-system".to_owned(),
            capacity: AgentCapacity {
                instances: 1000,
                memory_bytes: 4 << 30,
            },
            address: "10.1.2.3".parse().unwrap(),
            duration_seconds: 40,
            renew_every: Duration::from_secs(10),
        };
        let t0 = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let t1 = jiff::Timestamp::from_second(1_700_000_010).unwrap();
        let l = lease(&config, t0, t1);
        assert_eq!(l.metadata.name.as_deref(), Some("airssys-agent-node-a"));
        assert_eq!(l.metadata.namespace.as_deref(), Some("airssys-system"));
        assert_eq!(
            l.metadata
                .labels
                .unwrap()
                .get(AGENT_LEASE_LABEL)
                .map(String::as_str),
            Some("true")
        );
        let annotations = l.metadata.annotations.unwrap();
        assert_eq!(annotations[CAPACITY_INSTANCES_ANNOTATION], "1000");
        assert_eq!(
            annotations[CAPACITY_MEMORY_ANNOTATION],
            (4u64 << 30).to_string()
        );
        assert_eq!(annotations[ADDRESS_ANNOTATION], "10.1.2.3");
        let spec = l.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("node-a"));
        assert_eq!(spec.lease_duration_seconds, Some(40));
        assert_eq!(spec.acquire_time.unwrap().0, t0);
        assert_eq!(spec.renew_time.unwrap().0, t1);
        // Server-side apply needs the kind on the wire.
        let json = serde_json::to_value(lease(&config, t0, t1)).unwrap();
        assert_eq!(json["apiVersion"], "coordination.k8s.io/v1");
        assert_eq!(json["kind"], "Lease");
    }
}
