//! Bounded waits on Kubernetes objects that show the object when they give up.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

const POLL: Duration = Duration::from_millis(200);

/// Polls `name` until `condition` holds and returns the object. On timeout the error (and
/// stderr) carries the last version seen as YAML, so a failing test shows what it waited on.
pub async fn wait_for<K, F>(
    api: &Api<K>,
    name: &str,
    condition: F,
    timeout: Duration,
) -> Result<K, Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
    K::DynamicType: Default,
    F: Fn(&K) -> bool,
{
    let what = format!("{} {name}", K::kind(&K::DynamicType::default()));
    let deadline = Instant::now() + timeout;
    loop {
        let last = match api.get_opt(name).await {
            Ok(Some(obj)) => {
                if condition(&obj) {
                    return Ok(obj);
                }
                serde_yaml::to_string(&obj).unwrap_or_else(|e| format!("{obj:?} ({e})"))
            }
            Ok(None) => "<not found>".to_string(),
            Err(e) => format!("<get failed: {e}>"),
        };
        if Instant::now() >= deadline {
            eprintln!(
                "wait_for: timed out after {timeout:?} waiting for {what}; last seen:\n{last}"
            );
            return Err(Error::Timeout {
                what,
                timeout,
                last,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The `status` of condition `type_` in `status.conditions`, for any object that has the
/// usual condition list (CRDs, Deployments, our own resources).
pub fn condition_status(obj: &impl Serialize, type_: &str) -> Option<String> {
    let value = serde_json::to_value(obj).ok()?;
    value
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(|t| t.as_str()) == Some(type_))?
        .get("status")?
        .as_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::condition_status;
    use serde_json::json;

    #[test]
    fn condition_status_finds_the_named_condition() {
        let obj = json!({"status": {"conditions": [
            {"type": "NamesAccepted", "status": "True"},
            {"type": "Established", "status": "False"},
        ]}});
        assert_eq!(
            condition_status(&obj, "Established").as_deref(),
            Some("False")
        );
        assert_eq!(
            condition_status(&obj, "NamesAccepted").as_deref(),
            Some("True")
        );
    }

    #[test]
    fn condition_status_is_none_when_absent() {
        assert_eq!(
            condition_status(&json!({"status": {"conditions": []}}), "Ready"),
            None
        );
        assert_eq!(condition_status(&json!({"spec": {}}), "Ready"), None);
    }
}
