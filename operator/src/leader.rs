//! Leader election: of several operator replicas only the one holding the
//! `coordination.k8s.io/v1` Lease [`LEASE_NAME`] (in the product's namespace) runs the
//! controllers; the others wait and take over when it stops renewing.
//!
//! The rules are client-go's, on kube's primitives (get, create, replace with
//! `resourceVersion` as the guard), so no crate is needed:
//! - the holder renews every [`Timing::renew_every`]; a replica that cannot renew within
//!   [`Timing::renew_deadline`] stops acting (the process exits and its Deployment restarts it
//!   as a standby), which is before anyone else may take over at [`Timing::duration`];
//! - a standby takes over a Lease whose record it has seen unchanged for the Lease's duration,
//!   measured on its own clock (so clock skew between replicas does not matter) — or at once
//!   when the holder released it on shutdown;
//! - two standbys racing for the same record: the API server accepts one `replace` and refuses
//!   the other with a conflict.
//!
//! [`step`] is the pure decision; [`run_elected`] does the I/O.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::Error;

/// The election Lease's name.
pub const LEASE_NAME: &str = "airssys-operator-leader";

/// How long a Lease lasts and how often it is renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// `leaseDurationSeconds`: how long others wait for a silent holder.
    pub duration: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
    /// How long the holder keeps acting without a successful renewal.
    pub renew_deadline: Duration,
    /// How often a standby looks at the Lease.
    pub retry: Duration,
}

impl Default for Timing {
    /// client-go's defaults for controllers: 15 s, renewed every 5 s (deadline 10 s), retried
    /// every 2 s.
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// What a replica does with the Lease it just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// There is no Lease: create it, holding it.
    Create,
    /// It holds the Lease: renew it.
    Renew,
    /// The holder released it or went silent: take it over.
    TakeOver,
    /// Someone else holds it: wait.
    Wait,
}

/// Decides what `me` does with `lease`, whose record (any field) has not changed for
/// `unchanged_for` as seen by `me`. A Lease without a duration counts as `default_duration`.
pub fn step(
    lease: Option<&LeaseSpec>,
    me: &str,
    unchanged_for: Duration,
    default_duration: Duration,
) -> Step {
    let Some(lease) = lease else {
        return Step::Create;
    };
    match lease.holder_identity.as_deref() {
        Some(holder) if holder == me => Step::Renew,
        None | Some("") => Step::TakeOver,
        Some(_) => {
            let duration = lease
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(default_duration, Duration::from_secs);
            if unchanged_for >= duration {
                Step::TakeOver
            } else {
                Step::Wait
            }
        }
    }
}

/// This replica's name in the Lease: `$POD_NAME`, else the host name and process id (two
/// replicas on one machine, as in tests, stay distinct).
pub fn identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "operator".to_owned());
    format!("{host}-{}", std::process::id())
}

/// One replica's part in the election.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    identity: String,
    timing: Timing,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("identity", &self.identity)
            .field("timing", &self.timing)
            .finish_non_exhaustive()
    }
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl Elector {
    /// Elects among the replicas using the Lease [`LEASE_NAME`] in `namespace`.
    pub fn new(client: kube::Client, namespace: &str, identity: String, timing: Timing) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            identity,
            timing,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One attempt: reads the Lease and creates, renews or takes it over when [`step`] says
    /// so. `seen` is the record last read and when it was first seen. Returns whether this
    /// replica holds the Lease afterwards.
    async fn attempt(&self, seen: &mut Option<(String, Instant)>) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(LEASE_NAME).await?;
        let version = current
            .as_ref()
            .and_then(|l| l.metadata.resource_version.clone())
            .unwrap_or_default();
        let first_seen = match seen {
            Some((v, at)) if *v == version => *at,
            _ => {
                let at = Instant::now();
                *seen = Some((version, at));
                at
            }
        };
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let decision = step(
            spec,
            &self.identity,
            first_seen.elapsed(),
            self.timing.duration,
        );
        let mine = |old: Option<&LeaseSpec>, taking: bool| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(seconds(self.timing.duration)),
            acquire_time: if taking {
                Some(now())
            } else {
                old.and_then(|o| o.acquire_time.clone())
            },
            renew_time: Some(now()),
            lease_transitions: Some(
                old.and_then(|o| o.lease_transitions).unwrap_or(0) + i32::from(taking),
            ),
            ..LeaseSpec::default()
        };
        let written = match (decision, current) {
            (Step::Wait, _) => return Ok(false),
            (Step::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(LEASE_NAME.to_owned()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        lease_transitions: Some(0),
                        ..mine(None, true)
                    }),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (Step::Renew | Step::TakeOver, Some(mut lease)) => {
                lease.spec = Some(mine(lease.spec.as_ref(), decision == Step::TakeOver));
                // The resourceVersion read above guards the write: if anyone wrote in between,
                // the API server refuses it with a conflict.
                self.api
                    .replace(LEASE_NAME, &PostParams::default(), &lease)
                    .await
            }
            (Step::Renew | Step::TakeOver, None) => return Ok(false),
        };
        match written {
            Ok(lease) => {
                *seen = lease.metadata.resource_version.map(|v| (v, Instant::now()));
                if decision != Step::Renew {
                    info!(identity = %self.identity, ?decision, "became the leader");
                }
                Ok(true)
            }
            // Another replica wrote first; read again next time.
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        let mut seen = None;
        let mut waiting_logged = false;
        loop {
            match self.attempt(&mut seen).await {
                Ok(true) => return,
                Ok(false) => {
                    if !waiting_logged {
                        info!(identity = %self.identity, lease = LEASE_NAME, "standing by: another replica leads");
                        waiting_logged = true;
                    }
                }
                Err(e) => warn!(error = %e, "reading the leader Lease failed; retrying"),
            }
            tokio::time::sleep(self.timing.retry).await;
        }
    }

    /// Renews the Lease until a renewal is refused because another replica holds it, or no
    /// renewal succeeded for [`Timing::renew_deadline`]. Returns why leadership was lost.
    pub async fn hold(&self) -> String {
        let mut seen = None;
        let mut renewed = Instant::now();
        loop {
            let wait = if renewed.elapsed() < self.timing.renew_every {
                self.timing.renew_every
            } else {
                self.timing.retry
            };
            tokio::time::sleep(wait).await;
            match self.attempt(&mut seen).await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => {
                    // A conflict can be a transient race with our own earlier write; a Lease
                    // held by someone else is final.
                    let holder = self
                        .api
                        .get_opt(LEASE_NAME)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|l| l.spec)
                        .and_then(|s| s.holder_identity);
                    if holder.as_deref().is_some_and(|h| h != self.identity) {
                        return format!(
                            "the leader Lease is held by {}",
                            holder.unwrap_or_default()
                        );
                    }
                }
                Err(e) => warn!(error = %e, "renewing the leader Lease failed; retrying"),
            }
            if renewed.elapsed() >= self.timing.renew_deadline {
                return format!(
                    "the leader Lease was not renewed for {:?}",
                    self.timing.renew_deadline
                );
            }
        }
    }

    /// Gives the Lease up (on shutdown) so a standby takes over at once rather than after
    /// the Lease's duration. Best effort: a failure only delays the takeover.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(LEASE_NAME).await else {
            return;
        };
        let holds = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(self.identity.as_str());
        if !holds {
            return;
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(now());
        }
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(identity = %self.identity, "released the leader Lease"),
            Err(e) => warn!(error = %e, "releasing the leader Lease failed"),
        }
    }
}

/// Runs `work` while this replica leads: waits for the Lease (returning `Ok` if `shutdown`
/// comes first), then runs `work` until it ends or leadership is lost, and releases the
/// Lease when `work` ends. A lost leadership is an error: the caller exits, so nothing this
/// replica started keeps acting, and its Deployment restarts it as a standby.
pub async fn run_elected<W, S>(
    elector: Elector,
    shutdown: S,
    work: impl FnOnce() -> W,
) -> Result<(), Error>
where
    W: Future<Output = Result<(), Error>>,
    S: Future<Output = ()>,
{
    tokio::select! {
        () = elector.acquire() => {}
        () = shutdown => return Ok(()),
    }
    let (lost_tx, lost_rx) = oneshot::channel();
    let holder = elector.clone();
    let renewals = tokio::spawn(async move {
        let why = holder.hold().await;
        let _ = lost_tx.send(why);
    });
    let result = tokio::select! {
        result = work() => result,
        why = lost_rx => Err(Error::LeadershipLost(why.unwrap_or_else(|_| "the renewal task ended".to_owned()))),
    };
    renewals.abort();
    if !matches!(result, Err(Error::LeadershipLost(_))) {
        elector.release().await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, duration: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: duration,
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn election_spec() {
        let s = Duration::from_secs;
        let rows = [
            ("no Lease: create it", None, s(0), Step::Create),
            (
                "its own Lease: renew it",
                Some(lease(Some("me"), Some(15))),
                s(100),
                Step::Renew,
            ),
            (
                "a released Lease (no holder): take it at once",
                Some(lease(None, Some(1))),
                s(0),
                Step::TakeOver,
            ),
            (
                "a released Lease (empty holder): take it at once",
                Some(lease(Some(""), Some(15))),
                s(0),
                Step::TakeOver,
            ),
            (
                "another holder renewing: wait",
                Some(lease(Some("other"), Some(15))),
                s(14),
                Step::Wait,
            ),
            (
                "another holder silent for its whole duration: take over",
                Some(lease(Some("other"), Some(15))),
                s(15),
                Step::TakeOver,
            ),
            (
                "the Lease's own duration counts, not ours",
                Some(lease(Some("other"), Some(60))),
                s(30),
                Step::Wait,
            ),
            (
                "a Lease without a duration counts as ours",
                Some(lease(Some("other"), None)),
                s(20),
                Step::TakeOver,
            ),
            (
                "a negative duration counts as ours",
                Some(lease(Some("other"), Some(-5))),
                s(10),
                Step::Wait,
            ),
        ];
        for (rule, lease, unchanged, want) in rows {
            assert_eq!(step(lease.as_ref(), "me", unchanged, s(15)), want, "{rule}");
        }
    }

    #[test]
    fn default_timing_stops_acting_before_anyone_may_take_over() {
        let t = Timing::default();
        assert!(t.renew_every < t.renew_deadline && t.renew_deadline < t.duration);
        assert!(t.retry < t.renew_every);
    }
}
