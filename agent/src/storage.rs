//! The node's embedded key-value database: one redb file on the agent's data directory,
//! namespaced per component, with a byte quota per component enforced inside the write
//! transaction.
//!
//! Key space: `(component, bucket, key)` where `component` is the component's
//! `namespace/name`, so two components can never see each other's buckets, and a component's
//! data survives agent restarts and re-placements on the same node.
//!
//! Quota accounting: an entry costs `key.len() + value.len()` bytes. The running total per
//! component lives in the same database and is updated in the same transaction as the entry,
//! so usage can never drift from the data, and concurrent writers cannot both squeeze past
//! the quota (redb serialises write transactions).
//!
//! Every operation is synchronous and may block on disk I/O (a write commits with `fsync`).
//! From async code call it through `tokio::task::spawn_blocking`; `KvStore` is `Send + Sync`
//! and meant to be shared in an `Arc`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

/// `(component, bucket, key) -> value`.
const ENTRIES: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("entries");
/// `component -> bytes used` (sum of the costs of its entries).
const USAGE: TableDefinition<&str, u64> = TableDefinition::new("usage");

/// Quota of a component that has no explicit [`KvStore::set_quota`] (the CRD default, 10 MiB).
pub const DEFAULT_QUOTA_BYTES: u64 = 10 * 1024 * 1024;
/// Longest key a guest may use; keeps list results and B-tree pages bounded.
pub const MAX_KEY_BYTES: usize = 1024;
/// Most keys one [`KvStore::list`] call returns, whatever the caller asks for.
pub const MAX_LIST_KEYS: usize = 1000;

/// What went wrong with a storage operation.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database file could not be created or opened.
    #[error("cannot open the storage database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    /// redb failed inside an operation (I/O error, corruption, ...).
    #[error("storage database failed during {operation}: {source}")]
    Database {
        operation: &'static str,
        #[source]
        source: Box<redb::Error>,
    },
    /// The key does not exist in that bucket of that component.
    #[error("key {key:?} not found in bucket {bucket:?} of component {component}")]
    NotFound {
        component: String,
        bucket: String,
        key: String,
    },
    /// The write would take the component over its byte quota; nothing was written.
    #[error(
        "storage quota of component {component} exceeded: the write needs {needed} bytes in \
         total but the quota is {quota} bytes (currently used: {used})"
    )]
    QuotaExceeded {
        component: String,
        quota: u64,
        used: u64,
        needed: u64,
    },
    /// Empty component/bucket/key, or a key longer than [`MAX_KEY_BYTES`].
    #[error("invalid storage {what}: {reason}")]
    Invalid {
        what: &'static str,
        reason: &'static str,
    },
}

/// Wraps any redb error with the operation it interrupted.
fn db_err<E: Into<redb::Error>>(operation: &'static str) -> impl FnOnce(E) -> StorageError {
    move |e| StorageError::Database {
        operation,
        source: Box::new(e.into()),
    }
}

/// Bytes an entry counts against its component's quota.
fn cost(key: &str, value_len: usize) -> u64 {
    // usize -> u64 is lossless on every platform the agent supports.
    (key.len() + value_len) as u64
}

fn validate(component: &str, bucket: &str, key: Option<&str>) -> Result<(), StorageError> {
    let invalid = |what, reason| Err(StorageError::Invalid { what, reason });
    if component.is_empty() {
        return invalid("component", "empty");
    }
    if bucket.is_empty() {
        return invalid("bucket", "empty");
    }
    match key {
        Some("") => invalid("key", "empty"),
        Some(k) if k.len() > MAX_KEY_BYTES => invalid("key", "longer than 1024 bytes"),
        _ => Ok(()),
    }
}

/// The node's key-value store. See the module docs for the data model and threading.
#[derive(Debug)]
pub struct KvStore {
    db: Database,
    path: PathBuf,
    // Quotas come from each component's spec at instance start; they are not persisted.
    quotas: RwLock<HashMap<String, u64>>,
}

impl KvStore {
    /// Opens (or creates) the database file at `path`; its parent directory must exist.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        let db = Database::create(&path).map_err(|source| StorageError::Open {
            path: path.clone(),
            source,
        })?;
        // Create both tables up front so read transactions never meet a missing table.
        let txn = db.begin_write().map_err(db_err("open"))?;
        txn.open_table(ENTRIES).map_err(db_err("open"))?;
        txn.open_table(USAGE).map_err(db_err("open"))?;
        txn.commit().map_err(db_err("open"))?;
        Ok(Self {
            db,
            path,
            quotas: RwLock::new(HashMap::new()),
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the byte quota of `component` (from `ResolvedLimits::storage_bytes`). Lowering it
    /// below current usage keeps the data but rejects every write that would grow usage.
    pub fn set_quota(&self, component: &str, bytes: u64) {
        self.quotas
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(component.to_owned(), bytes);
    }

    /// The quota in force for `component`.
    pub fn quota(&self, component: &str) -> u64 {
        self.quotas
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(component)
            .copied()
            .unwrap_or(DEFAULT_QUOTA_BYTES)
    }

    /// Bytes `component` currently uses.
    pub fn usage(&self, component: &str) -> Result<u64, StorageError> {
        let txn = self.db.begin_read().map_err(db_err("usage"))?;
        let usage = txn.open_table(USAGE).map_err(db_err("usage"))?;
        let used = usage.get(component).map_err(db_err("usage"))?;
        Ok(used.map(|g| g.value()).unwrap_or(0))
    }

    /// Reads a value.
    pub fn get(&self, component: &str, bucket: &str, key: &str) -> Result<Vec<u8>, StorageError> {
        validate(component, bucket, Some(key))?;
        let txn = self.db.begin_read().map_err(db_err("get"))?;
        let entries = txn.open_table(ENTRIES).map_err(db_err("get"))?;
        let value = entries
            .get((component, bucket, key))
            .map_err(db_err("get"))?;
        match value {
            Some(v) => Ok(v.value().to_vec()),
            None => Err(not_found(component, bucket, key)),
        }
    }

    /// Writes a value, replacing any previous one, if the component's usage after the write
    /// stays within its quota (a write that does not grow usage always succeeds).
    pub fn set(
        &self,
        component: &str,
        bucket: &str,
        key: &str,
        value: &[u8],
    ) -> Result<(), StorageError> {
        validate(component, bucket, Some(key))?;
        let quota = self.quota(component);
        let txn = self.db.begin_write().map_err(db_err("set"))?;
        let outcome = set_in(&txn, quota, component, bucket, key, value);
        finish(txn, outcome, "set")
    }

    /// Deletes a key and gives its bytes back to the component's quota.
    pub fn delete(&self, component: &str, bucket: &str, key: &str) -> Result<(), StorageError> {
        validate(component, bucket, Some(key))?;
        let txn = self.db.begin_write().map_err(db_err("delete"))?;
        let outcome = delete_in(&txn, component, bucket, key);
        finish(txn, outcome, "delete")
    }

    /// Keys of one bucket in byte order, optionally only those starting with `prefix`, at most
    /// `limit` of them (and never more than [`MAX_LIST_KEYS`]).
    pub fn list(
        &self,
        component: &str,
        bucket: &str,
        prefix: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        validate(component, bucket, None)?;
        let prefix = prefix.unwrap_or("");
        let limit = limit.min(MAX_LIST_KEYS);
        let txn = self.db.begin_read().map_err(db_err("list"))?;
        let entries = txn.open_table(ENTRIES).map_err(db_err("list"))?;
        // Tuple keys sort element-wise, so every key of (component, bucket) with this prefix
        // is one contiguous run starting at (component, bucket, prefix).
        let range = entries
            .range((component, bucket, prefix)..)
            .map_err(db_err("list"))?;
        let mut keys = Vec::new();
        for item in range {
            if keys.len() >= limit {
                break;
            }
            let (k, _) = item.map_err(db_err("list"))?;
            let (c, b, key) = k.value();
            if c != component || b != bucket || !key.starts_with(prefix) {
                break;
            }
            keys.push(key.to_owned());
        }
        Ok(keys)
    }

    /// Deletes every entry of `component` (when it is removed from the cluster) and returns
    /// the bytes freed.
    pub fn remove_component(&self, component: &str) -> Result<u64, StorageError> {
        validate(component, "-", None)?;
        let txn = self.db.begin_write().map_err(db_err("remove component"))?;
        let outcome = remove_component_in(&txn, component);
        finish(txn, outcome, "remove component")
    }
}

/// The quota check and the write, inside one write transaction.
fn set_in(
    txn: &WriteTransaction,
    quota: u64,
    component: &str,
    bucket: &str,
    key: &str,
    value: &[u8],
) -> Result<(), StorageError> {
    let mut entries = txn.open_table(ENTRIES).map_err(db_err("set"))?;
    let mut usage = txn.open_table(USAGE).map_err(db_err("set"))?;
    let used = usage
        .get(component)
        .map_err(db_err("set"))?
        .map(|g| g.value())
        .unwrap_or(0);
    let old = entries
        .get((component, bucket, key))
        .map_err(db_err("set"))?
        .map(|g| cost(key, g.value().len()))
        .unwrap_or(0);
    let needed = used.saturating_sub(old) + cost(key, value.len());
    if needed > used && needed > quota {
        return Err(StorageError::QuotaExceeded {
            component: component.to_owned(),
            quota,
            used,
            needed,
        });
    }
    entries
        .insert((component, bucket, key), value)
        .map_err(db_err("set"))?;
    usage.insert(component, needed).map_err(db_err("set"))?;
    Ok(())
}

fn delete_in(
    txn: &WriteTransaction,
    component: &str,
    bucket: &str,
    key: &str,
) -> Result<(), StorageError> {
    let mut entries = txn.open_table(ENTRIES).map_err(db_err("delete"))?;
    let mut usage = txn.open_table(USAGE).map_err(db_err("delete"))?;
    let removed = entries
        .remove((component, bucket, key))
        .map_err(db_err("delete"))?
        .map(|g| cost(key, g.value().len()));
    let Some(freed) = removed else {
        return Err(not_found(component, bucket, key));
    };
    let used = usage
        .get(component)
        .map_err(db_err("delete"))?
        .map(|g| g.value())
        .unwrap_or(0);
    let left = used.saturating_sub(freed);
    // Drop the row at zero so removed components leave nothing behind.
    if left == 0 {
        usage.remove(component).map_err(db_err("delete"))?;
    } else {
        usage.insert(component, left).map_err(db_err("delete"))?;
    }
    Ok(())
}

fn remove_component_in(txn: &WriteTransaction, component: &str) -> Result<u64, StorageError> {
    const OP: &str = "remove component";
    let mut entries = txn.open_table(ENTRIES).map_err(db_err(OP))?;
    let mut usage = txn.open_table(USAGE).map_err(db_err(OP))?;
    let mut doomed = Vec::new();
    for item in entries.range((component, "", "")..).map_err(db_err(OP))? {
        let (k, _) = item.map_err(db_err(OP))?;
        let (c, b, key) = k.value();
        if c != component {
            break;
        }
        doomed.push((b.to_owned(), key.to_owned()));
    }
    for (b, key) in &doomed {
        entries
            .remove((component, b.as_str(), key.as_str()))
            .map_err(db_err(OP))?;
    }
    let freed = usage
        .remove(component)
        .map_err(db_err(OP))?
        .map(|g| g.value())
        .unwrap_or(0);
    Ok(freed)
}

fn not_found(component: &str, bucket: &str, key: &str) -> StorageError {
    StorageError::NotFound {
        component: component.to_owned(),
        bucket: bucket.to_owned(),
        key: key.to_owned(),
    }
}

/// Commits on success; aborts (so nothing of a rejected write lands) on error.
fn finish<T>(
    txn: WriteTransaction,
    outcome: Result<T, StorageError>,
    operation: &'static str,
) -> Result<T, StorageError> {
    match outcome {
        Ok(v) => {
            txn.commit().map_err(db_err(operation))?;
            Ok(v)
        }
        Err(e) => {
            txn.abort().map_err(db_err(operation))?;
            Err(e)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn store() -> (tempfile::TempDir, KvStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = KvStore::open(dir.path().join("kv.redb")).unwrap();
        (dir, store)
    }

    const A: &str = "team-a/counter";
    const B: &str = "team-b/counter";

    #[test]
    fn set_then_get_returns_the_value_and_overwrite_replaces_it() {
        let (_dir, kv) = store();
        kv.set(A, "b", "k", b"one").unwrap();
        assert_eq!(kv.get(A, "b", "k").unwrap(), b"one");
        kv.set(A, "b", "k", b"two!").unwrap();
        assert_eq!(kv.get(A, "b", "k").unwrap(), b"two!");
        assert_eq!(kv.usage(A).unwrap(), 1 + 4);
    }

    #[test]
    fn data_survives_reopening_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        {
            let kv = KvStore::open(&path).unwrap();
            kv.set(A, "b", "k", b"persisted").unwrap();
        }
        let kv = KvStore::open(&path).unwrap();
        assert_eq!(kv.get(A, "b", "k").unwrap(), b"persisted");
        assert_eq!(kv.usage(A).unwrap(), 1 + 9);
    }

    #[test]
    fn components_and_buckets_are_isolated_namespaces() {
        let (_dir, kv) = store();
        kv.set(A, "b", "k", b"a").unwrap();
        kv.set(B, "b", "k", b"b").unwrap();
        kv.set(A, "other", "k", b"c").unwrap();
        assert_eq!(kv.get(A, "b", "k").unwrap(), b"a");
        assert_eq!(kv.get(B, "b", "k").unwrap(), b"b");
        assert_eq!(kv.get(A, "other", "k").unwrap(), b"c");
        kv.delete(B, "b", "k").unwrap();
        assert_eq!(kv.get(A, "b", "k").unwrap(), b"a");
        assert!(matches!(
            kv.get(B, "b", "k"),
            Err(StorageError::NotFound { .. })
        ));
        assert_eq!(kv.list(A, "b", None, 10).unwrap(), vec!["k"]);
        assert!(kv.list(B, "b", None, 10).unwrap().is_empty());
    }

    #[test]
    fn component_names_that_prefix_each_other_do_not_leak() {
        // "a/x" is a byte prefix of "a/xy": tuple keys must not mix them up.
        let (_dir, kv) = store();
        kv.set("a/x", "b", "k1", b"1").unwrap();
        kv.set("a/xy", "b", "k2", b"2").unwrap();
        assert_eq!(kv.list("a/x", "b", None, 10).unwrap(), vec!["k1"]);
        assert_eq!(kv.remove_component("a/x").unwrap(), 3);
        assert_eq!(kv.get("a/xy", "b", "k2").unwrap(), b"2");
    }

    #[test]
    fn missing_keys_are_not_found_for_get_and_delete() {
        let (_dir, kv) = store();
        assert!(matches!(
            kv.get(A, "b", "nope"),
            Err(StorageError::NotFound { .. })
        ));
        assert!(matches!(
            kv.delete(A, "b", "nope"),
            Err(StorageError::NotFound { .. })
        ));
    }

    #[test]
    fn quota_is_enforced_exactly_at_the_boundary() {
        let (_dir, kv) = store();
        kv.set_quota(A, 10);
        // key (1) + value (9) = 10 bytes: exactly the quota.
        kv.set(A, "b", "k", b"123456789").unwrap();
        assert_eq!(kv.usage(A).unwrap(), 10);
        // One more byte anywhere is rejected and nothing changes.
        let err = kv.set(A, "b", "j", b"").unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::QuotaExceeded {
                    quota: 10,
                    used: 10,
                    needed: 11,
                    ..
                }
            ),
            "{err}"
        );
        assert!(matches!(
            kv.get(A, "b", "j"),
            Err(StorageError::NotFound { .. })
        ));
        assert_eq!(kv.usage(A).unwrap(), 10);
        // Overwriting with a value of the same size still fits.
        kv.set(A, "b", "k", b"987654321").unwrap();
        // A bigger overwrite does not.
        assert!(matches!(
            kv.set(A, "b", "k", b"1234567890"),
            Err(StorageError::QuotaExceeded { .. })
        ));
        assert_eq!(kv.get(A, "b", "k").unwrap(), b"987654321");
    }

    #[test]
    fn deleting_frees_quota() {
        let (_dir, kv) = store();
        kv.set_quota(A, 10);
        kv.set(A, "b", "k", b"123456789").unwrap();
        kv.delete(A, "b", "k").unwrap();
        assert_eq!(kv.usage(A).unwrap(), 0);
        kv.set(A, "b", "z", b"abcdefghi").unwrap();
        assert_eq!(kv.usage(A).unwrap(), 10);
    }

    #[test]
    fn lowering_the_quota_keeps_data_and_allows_shrinking_writes() {
        let (_dir, kv) = store();
        kv.set(A, "b", "k", b"123456789").unwrap();
        kv.set_quota(A, 5);
        assert!(matches!(
            kv.set(A, "b", "j", b"x"),
            Err(StorageError::QuotaExceeded { .. })
        ));
        kv.set(A, "b", "k", b"12").unwrap();
        assert_eq!(kv.usage(A).unwrap(), 3);
    }

    #[test]
    fn quota_is_per_component() {
        let (_dir, kv) = store();
        kv.set_quota(A, 4);
        kv.set_quota(B, 100);
        assert!(kv.set(A, "b", "k", b"long value").is_err());
        kv.set(B, "b", "k", b"long value").unwrap();
        assert_eq!(kv.quota("unknown/x"), DEFAULT_QUOTA_BYTES);
    }

    #[test]
    fn list_filters_by_prefix_in_order_and_is_bounded() {
        let (_dir, kv) = store();
        for k in ["user:2", "user:1", "order:1", "user:3", "usa"] {
            kv.set(A, "b", k, b"v").unwrap();
        }
        kv.set(A, "c", "user:9", b"v").unwrap();
        assert_eq!(
            kv.list(A, "b", Some("user:"), 10).unwrap(),
            vec!["user:1", "user:2", "user:3"]
        );
        assert_eq!(
            kv.list(A, "b", Some("user:"), 2).unwrap(),
            vec!["user:1", "user:2"]
        );
        assert_eq!(kv.list(A, "b", None, 100).unwrap().len(), 5);
        assert!(kv.list(A, "b", Some("zzz"), 10).unwrap().is_empty());
        assert!(kv.list(A, "b", None, 0).unwrap().is_empty());
    }

    #[test]
    fn invalid_keys_are_rejected() {
        let (_dir, kv) = store();
        assert!(matches!(
            kv.set(A, "b", "", b"v"),
            Err(StorageError::Invalid { .. })
        ));
        assert!(matches!(
            kv.set(A, "", "k", b"v"),
            Err(StorageError::Invalid { .. })
        ));
        assert!(matches!(
            kv.set("", "b", "k", b"v"),
            Err(StorageError::Invalid { .. })
        ));
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(matches!(
            kv.set(A, "b", &long, b"v"),
            Err(StorageError::Invalid { .. })
        ));
        kv.set(A, "b", &long[..MAX_KEY_BYTES], b"v").unwrap();
    }

    #[test]
    fn remove_component_deletes_all_its_buckets_and_usage() {
        let (_dir, kv) = store();
        kv.set(A, "b1", "k", b"12").unwrap();
        kv.set(A, "b2", "k", b"34").unwrap();
        kv.set(B, "b1", "k", b"56").unwrap();
        assert_eq!(kv.remove_component(A).unwrap(), 6);
        assert_eq!(kv.usage(A).unwrap(), 0);
        assert!(kv.list(A, "b1", None, 10).unwrap().is_empty());
        assert!(kv.list(A, "b2", None, 10).unwrap().is_empty());
        assert_eq!(kv.get(B, "b1", "k").unwrap(), b"56");
    }

    #[test]
    fn concurrent_writers_never_exceed_the_quota_together() {
        let (_dir, kv) = store();
        let kv = Arc::new(kv);
        // Each entry costs 4 (key "kNN" = 3 bytes + 1 byte value); room for exactly 10.
        kv.set_quota(A, 40);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let kv = Arc::clone(&kv);
                std::thread::spawn(move || {
                    (0..10)
                        .filter(|i| kv.set(A, "b", &format!("k{t}{i}"), b"x").is_ok())
                        .count()
                })
            })
            .collect();
        let written: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(written, 10);
        assert_eq!(kv.usage(A).unwrap(), 40);
        assert_eq!(kv.list(A, "b", None, 100).unwrap().len(), 10);
    }

    #[test]
    fn concurrent_writers_to_different_components_all_land() {
        let (_dir, kv) = store();
        let kv = Arc::new(kv);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let kv = Arc::clone(&kv);
                std::thread::spawn(move || {
                    let c = format!("ns/c{t}");
                    for i in 0..20 {
                        kv.set(&c, "b", &format!("k{i:02}"), b"v").unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for t in 0..4 {
            let c = format!("ns/c{t}");
            assert_eq!(kv.list(&c, "b", None, 100).unwrap().len(), 20);
            assert_eq!(kv.usage(&c).unwrap(), 20 * 4);
        }
    }
}
