//! `airssys:component/storage`: key-value buckets in the component's own namespace of the
//! node's database, checked against the bucket grants, within the component's byte quota.

use airssys_crds::capability::{FsAccess, check_bucket};

use super::HostState;
use crate::bindings::WitError;
use crate::bindings::airssys::component::storage::Host;
use crate::grant::CapabilityKind;
use crate::limits::Quota;
use crate::storage::StorageError;

impl HostState {
    fn admit_bucket(&self, bucket: &str, access: FsAccess) -> Result<(), WitError> {
        // A malformed bucket name (`../x`, `a/b`) is in no grant: a probe, audited as one.
        if let Err(e) = check_bucket(bucket) {
            return Err(self.deny_malformed(CapabilityKind::Storage, bucket, e));
        }
        if !self.scope.grants.check_bucket(bucket, access) {
            let mode = match access {
                FsAccess::Read => "read",
                FsAccess::Write => "write",
            };
            self.scope
                .denied(CapabilityKind::Storage, &format!("{bucket} ({mode})"));
            return Err(WitError::AccessDenied(format!(
                "{mode} access to bucket {bucket} is not granted to {}",
                self.scope.id
            )));
        }
        self.scope.granted(CapabilityKind::Storage);
        Ok(())
    }

    /// Runs a read inline: redb serves reads from its page cache without locks against
    /// writers, so handing them to a blocking thread would cost more than the read.
    fn db_read<T>(
        &self,
        op: impl FnOnce(&crate::storage::KvStore, &str) -> Result<T, StorageError>,
    ) -> Result<T, WitError> {
        op(&self.scope.storage, &self.scope.component_key).map_err(|e| self.storage_error(e))
    }

    fn storage_error(&self, e: StorageError) -> WitError {
        match e {
            StorageError::QuotaExceeded { .. } => {
                self.scope.quota_exceeded(Quota::Storage);
                WitError::QuotaExceeded(e.to_string())
            }
            StorageError::NotFound { .. } => WitError::NotFound(e.to_string()),
            StorageError::Invalid { .. } => WitError::InvalidInput(e.to_string()),
            other => {
                tracing::error!(component = %self.scope.id, error = %other, "storage failed");
                WitError::Internal("storage is unavailable".into())
            }
        }
    }
}

/// Runs a write (it commits with fsync) off the async executor. A free function so the
/// future holds no reference to the (non-`Sync`) host state.
async fn write<T: Send + 'static>(
    store: std::sync::Arc<crate::storage::KvStore>,
    component: String,
    op: impl FnOnce(&crate::storage::KvStore, &str) -> Result<T, StorageError> + Send + 'static,
) -> Result<Result<T, StorageError>, WitError> {
    tokio::task::spawn_blocking(move || op(&store, &component))
        .await
        .map_err(|e| WitError::Internal(format!("storage worker failed: {e}")))
}

impl Host for HostState {
    async fn get(&mut self, bucket: String, key: String) -> Result<Option<Vec<u8>>, WitError> {
        self.admit_bucket(&bucket, FsAccess::Read)?;
        self.db_read(|s, c| match s.get(c, &bucket, &key) {
            Ok(v) => Ok(Some(v)),
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        })
    }

    async fn set(&mut self, bucket: String, key: String, value: Vec<u8>) -> Result<(), WitError> {
        self.admit_bucket(&bucket, FsAccess::Write)?;
        let (store, component) = (self.scope.storage.clone(), self.scope.component_key.clone());
        write(store, component, move |s, c| {
            s.set(c, &bucket, &key, &value).map(drop)
        })
        .await?
        .map_err(|e| self.storage_error(e))
    }

    async fn delete(&mut self, bucket: String, key: String) -> Result<(), WitError> {
        self.admit_bucket(&bucket, FsAccess::Write)?;
        let (store, component) = (self.scope.storage.clone(), self.scope.component_key.clone());
        write(store, component, move |s, c| s.delete(c, &bucket, &key))
            .await?
            .map_err(|e| self.storage_error(e))
    }

    async fn list_keys(&mut self, bucket: String) -> Result<Vec<String>, WitError> {
        self.admit_bucket(&bucket, FsAccess::Read)?;
        self.db_read(|s, c| s.list(c, &bucket, None, crate::storage::MAX_LIST_KEYS))
    }
}
