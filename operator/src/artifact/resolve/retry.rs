//! Retries with exponential backoff for transient failures.

use std::future::Future;
use std::time::Duration;

use tracing::warn;

use crate::artifact::ArtifactError;

/// Retries for transient failures: exponential backoff from `initial`, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in total (at least 1).
    pub attempts: u32,
    pub initial: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            initial: Duration::from_millis(250),
            max: Duration::from_secs(4),
        }
    }
}

impl RetryPolicy {
    /// The wait before try `n + 1` (after `n` failures, `n >= 1`).
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 2u32.saturating_pow(n.saturating_sub(1));
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Runs `op` until it succeeds, fails non-transiently, or `policy.attempts` are used up.
pub async fn retry<T, F, Fut>(
    policy: &RetryPolicy,
    what: &str,
    mut op: F,
) -> Result<T, ArtifactError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ArtifactError>>,
{
    let mut failures = 0;
    loop {
        match op().await {
            Err(err) if err.is_transient() && failures + 1 < policy.attempts.max(1) => {
                failures += 1;
                let wait = policy.delay(failures);
                warn!(%err, what, attempt = failures, ?wait, "transient artifact error, retrying");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}
