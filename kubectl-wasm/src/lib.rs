//! `kubectl wasm`: list the components waiting for a person, approve or deny them (directly, or
//! as a `TrustSource` manifest for a GitOps pull request), and explain a component's decision.
//!
//! - [`entry`]: the digest entry `approve` / `deny` write and how it merges into a source (pure).
//! - [`report`]: what `pending` and `explain` print, read from the status the operator wrote
//!   (pure).
//! - [`cluster`]: the API calls.
//!
//! The binary (`src/main.rs`) parses flags and prints.

pub mod cluster;
pub mod entry;
mod error;
pub mod report;

pub use cluster::Cluster;
pub use error::Error;

#[cfg(test)]
mod testing {
    #![allow(clippy::unwrap_used, reason = "test code")]
    //! Components as the operator leaves them, for the pure modules' tests.

    use airssys_crds::{
        Condition, ConditionStatus, ConditionType, WasmComponent, WasmComponentSpec,
    };

    pub fn component(ns: &str, name: &str, caps: &str, digest: Option<&str>) -> WasmComponent {
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

    pub fn with_approved(
        mut c: WasmComponent,
        status: ConditionStatus,
        reason: &str,
    ) -> WasmComponent {
        let mut cond = Condition::new(ConditionType::Approved, status, reason, "msg", None);
        cond.last_transition_time = "2026-01-01T00:00:00Z".to_owned();
        c.status.get_or_insert_default().conditions.push(cond);
        c
    }

    pub fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }
}
