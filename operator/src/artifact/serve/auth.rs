//! Who may fetch blobs: the agents' ServiceAccount, proven by its token.
//!
//! An agent sends its (projected, rotating) ServiceAccount token as a bearer token. The server
//! asks the API server who it belongs to (TokenReview, `authentication.k8s.io/v1`) and serves
//! only the configured agent identity. Positive reviews are remembered briefly, keyed by a hash
//! of the token, so a node fetching hundreds of blobs costs one review a minute, not hundreds.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;
use sha2::{Digest as _, Sha256};
use tracing::debug;

/// How long a positive review is trusted.
pub const REVIEW_TTL: Duration = Duration::from_secs(60);
/// Most tokens remembered at once (one per agent is the normal case).
pub const REVIEW_CACHE_ENTRIES: usize = 4096;

/// The answer to one request's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The agent identity: serve.
    Agent,
    /// No token, or one the API server does not accept: 401.
    Unauthenticated,
    /// A valid token of another identity (the user name is logged): 403.
    Forbidden(String),
}

/// The bearer token of an `Authorization` header value, if it is one.
pub fn bearer_token(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The decision for a reviewed token: `user` is the authenticated user name, `None` when the
/// API server did not authenticate it.
pub fn verdict(user: Option<&str>, agent: &str) -> Verdict {
    match user {
        None => Verdict::Unauthenticated,
        Some(user) if user == agent => Verdict::Agent,
        Some(user) => Verdict::Forbidden(user.to_owned()),
    }
}

/// `system:serviceaccount:<namespace>:<name>` of a `namespace:name` flag value.
pub fn service_account_user(flag: &str) -> Option<String> {
    let (ns, name) = flag.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':'))
        .then(|| format!("system:serviceaccount:{ns}:{name}"))
}

/// Reviews tokens through the API server, remembering authenticated ones for [`REVIEW_TTL`].
pub struct Authenticator {
    client: kube::Client,
    agent: String,
    cache: Mutex<HashMap<[u8; 32], (String, Instant)>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Serves `agent` (a full user name, `system:serviceaccount:<ns>:<name>`).
    pub fn new(client: kube::Client, agent: String) -> Self {
        Self {
            client,
            agent,
            cache: Mutex::default(),
        }
    }

    /// The verdict for an `Authorization` header value. `Err` when the API server could not be
    /// asked (the request should fail with 503, not 401: the agent did nothing wrong).
    pub async fn check(&self, authorization: Option<&str>) -> Result<Verdict, kube::Error> {
        let Some(token) = bearer_token(authorization) else {
            return Ok(Verdict::Unauthenticated);
        };
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(user) = self.cached(&key) {
            return Ok(verdict(Some(&user), &self.agent));
        }
        let user = self.review(token).await?;
        if let Some(user) = &user {
            self.remember(key, user.clone());
        }
        Ok(verdict(user.as_deref(), &self.agent))
    }

    fn cached(&self, key: &[u8; 32]) -> Option<String> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache
            .get(key)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(user, _)| user.clone())
    }

    fn remember(&self, key: [u8; 32], user: String) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= REVIEW_CACHE_ENTRIES {
            let now = Instant::now();
            cache.retain(|_, (_, until)| now < *until);
            if cache.len() >= REVIEW_CACHE_ENTRIES {
                // Full of live entries: forget them all rather than grow; each costs one review.
                cache.clear();
            }
        }
        cache.insert(key, (user, Instant::now() + REVIEW_TTL));
    }

    /// The user name the API server authenticates `token` as (default audiences, as a
    /// ServiceAccount token mounted into a pod has), or `None`.
    async fn review(&self, token: &str) -> Result<Option<String>, kube::Error> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let reviewed = api.create(&PostParams::default(), &review).await?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            debug!(
                error = status.error.as_deref().unwrap_or(""),
                "token not authenticated"
            );
            return Ok(None);
        }
        Ok(status.user.and_then(|u| u.username))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let cases = [
            ("bearer scheme", Some("Bearer abc.def"), Some("abc.def")),
            (
                "scheme is case-insensitive",
                Some("bearer abc"),
                Some("abc"),
            ),
            (
                "spaces around are trimmed",
                Some("  Bearer   abc  "),
                Some("abc"),
            ),
            ("no header", None, None),
            ("basic is not bearer", Some("Basic dXNlcjpwdw=="), None),
            ("empty token", Some("Bearer "), None),
            ("no scheme", Some("abc"), None),
        ];
        for (rule, header, want) in cases {
            assert_eq!(bearer_token(header), want, "{rule}");
        }
    }

    #[test]
    fn verdict_spec() {
        let agent = "system:serviceaccount:airssys-system:airssys-agent";
        let cases = [
            ("the agent identity is served", Some(agent), Verdict::Agent),
            (
                "an unauthenticated token is 401",
                None,
                Verdict::Unauthenticated,
            ),
            (
                "another service account is 403",
                Some("system:serviceaccount:team:default"),
                Verdict::Forbidden("system:serviceaccount:team:default".into()),
            ),
            (
                "the agent's name in another namespace is 403",
                Some("system:serviceaccount:team:airssys-agent"),
                Verdict::Forbidden("system:serviceaccount:team:airssys-agent".into()),
            ),
        ];
        for (rule, user, want) in cases {
            assert_eq!(verdict(user, agent), want, "{rule}");
        }
    }

    #[test]
    fn service_account_flags() {
        assert_eq!(
            service_account_user("airssys-system:airssys-agent").as_deref(),
            Some("system:serviceaccount:airssys-system:airssys-agent")
        );
        for bad in ["airssys-agent", ":a", "ns:", "a:b:c"] {
            assert_eq!(service_account_user(bad), None, "{bad}");
        }
    }
}
