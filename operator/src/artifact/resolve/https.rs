//! Components fetched from an HTTPS URL: the spec names the digest, the bytes must match it.

use airssys_crds::Digest;

use super::{Resolver, retry};
use crate::artifact::{ArtifactError, check_digest};

impl Resolver {
    /// Downloads `url` (HTTPS only) and checks the bytes against the required `expected` digest.
    pub async fn fetch_https(
        &self,
        url: &str,
        expected: &Digest,
    ) -> Result<Vec<u8>, ArtifactError> {
        check_https(url)?;
        let bytes = retry(&self.retry, url, || self.get_https(url)).await?;
        check_digest(url, &bytes, expected)?;
        Ok(bytes)
    }

    async fn get_https(&self, url: &str) -> Result<Vec<u8>, ArtifactError> {
        let http_err = |source| ArtifactError::Http {
            url: url.to_owned(),
            source,
        };
        let mut response = self.http.get(url).send().await.map_err(http_err)?;
        let status = response.status().as_u16();
        if !response.status().is_success() {
            return Err(ArtifactError::HttpStatus {
                url: url.to_owned(),
                status,
            });
        }
        let limit = self.limits.component_bytes;
        let too_large = |size| ArtifactError::TooLarge {
            what: url.to_owned(),
            size,
            limit,
        };
        if let Some(len) = response.content_length()
            && len > limit
        {
            return Err(too_large(len));
        }
        let mut out = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(http_err)? {
            out.extend_from_slice(&chunk);
            if out.len() as u64 > limit {
                return Err(too_large(out.len() as u64));
            }
        }
        Ok(out)
    }
}

/// Only `https://` URLs with a host.
pub fn check_https(url: &str) -> Result<(), ArtifactError> {
    let invalid = |reason| ArtifactError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| invalid("only https:// URLs are fetched"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.contains('@') {
        return Err(invalid("the URL needs a host and no user info"));
    }
    Ok(())
}
