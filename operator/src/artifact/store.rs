//! Verified artifact bytes on the operator's disk, by digest: `<dir>/sha256/<hex>`.
//!
//! A blob is written only after its bytes hash to its name, to a temporary file renamed into
//! place, so a reader never sees half a blob. A blob read back is hashed again on its way out
//! (the server streams it through SHA-256 and fails the response if the disk changed it; see
//! [`crate::artifact::serve`]), so bytes changed at rest never reach an agent as good ones.
//!
//! The store is bounded: blobs no approved component uses are removed, and when the rest is
//! over the size cap the least recently served go first (they are fetched again from their
//! source on the next request). Which blobs to remove is the pure [`plan_eviction`].

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use airssys_crds::Digest;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;
use tracing::{debug, info, warn};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("blob store: cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Bytes offered for a digest they do not hash to (never written).
    #[error("blob store: bytes for {expected} hash to {actual}; not stored")]
    Mismatch { expected: Digest, actual: Digest },
    #[error("blob store: a background write failed: {0}")]
    Task(String),
}

/// One stored blob, as the eviction plan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlob {
    pub digest: Digest,
    pub size: u64,
    /// Larger is more recent (a logical clock: writes and reads tick it).
    pub used: u64,
}

/// Which blobs to remove: every blob not `in_use`, then, while the rest is over `cap` bytes,
/// the least recently used.
pub fn plan_eviction(blobs: &[StoredBlob], in_use: &HashSet<Digest>, cap: u64) -> Vec<Digest> {
    let mut remove: Vec<Digest> = Vec::new();
    let mut kept: Vec<&StoredBlob> = Vec::new();
    for blob in blobs {
        if in_use.contains(&blob.digest) {
            kept.push(blob);
        } else {
            remove.push(blob.digest.clone());
        }
    }
    let mut total: u64 = kept.iter().map(|b| b.size).sum();
    kept.sort_by_key(|b| b.used);
    for blob in kept {
        if total <= cap {
            break;
        }
        total -= blob.size;
        remove.push(blob.digest.clone());
    }
    remove
}

#[derive(Debug, Default)]
struct State {
    blobs: HashMap<Digest, (u64, u64)>,
    clock: u64,
}

impl State {
    fn touch(&mut self, digest: &Digest, size: u64) {
        self.clock += 1;
        self.blobs.insert(digest.clone(), (size, self.clock));
    }
}

/// The blobs on disk. Share it behind an `Arc`.
#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
    cap: u64,
    state: Mutex<State>,
    temp_names: AtomicU64,
}

impl BlobStore {
    /// Opens (creating, mode 0700) `<dir>/sha256`, indexes the blobs there and removes
    /// temporary files a crash left behind. `cap` bounds the bytes kept.
    pub fn open(dir: &Path, cap: u64) -> Result<Self, StoreError> {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        let dir = dir.join("sha256");
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { what, path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io("create", &dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("restrict", &dir))?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io("list", &dir))? {
            let entry = entry.map_err(io("list", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with('.') && name.ends_with(".tmp") {
                if let Err(e) = std::fs::remove_file(&path) {
                    warn!(path = %path.display(), error = %e, "cannot remove a leftover temporary blob");
                }
                continue;
            }
            let Ok(digest) = Digest::parse(&format!("sha256:{name}")) else {
                continue;
            };
            let meta = entry.metadata().map_err(io("stat", &path))?;
            found.push((meta.modified().ok(), digest, meta.len()));
        }
        // Oldest first, so the clock orders them as their modification times do.
        found.sort_by_key(|(modified, ..)| *modified);
        let mut state = State::default();
        for (_, digest, size) in found {
            state.touch(&digest, size);
        }
        info!(dir = %dir.display(), blobs = state.blobs.len(), cap, "blob store opened");
        Ok(Self {
            dir,
            cap,
            state: Mutex::new(state),
            temp_names: AtomicU64::new(0),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where `digest` lives.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// The size cap in bytes.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// Bytes stored.
    pub fn total_bytes(&self) -> u64 {
        self.state().blobs.values().map(|(size, _)| size).sum()
    }

    /// Whether `digest` is indexed (its file may still vanish; readers handle that).
    pub fn contains(&self, digest: &Digest) -> bool {
        self.state().blobs.contains_key(digest)
    }

    /// Stores `bytes` as `digest` if they hash to it; anything else is refused, never written.
    pub async fn put(&self, digest: &Digest, bytes: Vec<u8>) -> Result<(), StoreError> {
        let n = self.temp_names.fetch_add(1, Ordering::Relaxed);
        let temp = self
            .dir
            .join(format!(".{}.{}.{n}.tmp", digest.hex(), std::process::id()));
        let path = self.path(digest);
        let expected = digest.clone();
        let size = bytes.len() as u64;
        tokio::task::spawn_blocking(move || write_verified(&expected, &bytes, &temp, &path))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        self.state().touch(digest, size);
        debug!(%digest, size, "blob stored");
        Ok(())
    }

    /// Opens `digest` for reading; `None` when it is not on disk. The caller hashes what it
    /// reads ([`VerifyingReader`]) and calls [`remove`](Self::remove) on a mismatch.
    pub async fn open_blob(
        &self,
        digest: &Digest,
    ) -> Result<Option<(tokio::fs::File, u64)>, StoreError> {
        let path = self.path(digest);
        let io = |what| {
            let path = path.clone();
            move |source| StoreError::Io { what, path, source }
        };
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.state().blobs.remove(digest);
                return Ok(None);
            }
            Err(e) => return Err(io("open")(e)),
        };
        let size = file.metadata().await.map_err(io("stat"))?.len();
        self.state().touch(digest, size);
        Ok(Some((file, size)))
    }

    /// The whole of `digest`, hashed; `None` when it is missing, larger than `limit`, or
    /// changed at rest (then it is removed).
    pub async fn read_verified(
        &self,
        digest: &Digest,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some((file, size)) = self.open_blob(digest).await? else {
            return Ok(None);
        };
        if size > limit {
            return Ok(None);
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.take(limit + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|source| StoreError::Io {
                what: "read",
                path: self.path(digest),
                source,
            })?;
        let actual = crate::artifact::digest_of(&bytes);
        if &actual != digest {
            warn!(%digest, %actual, "a stored blob changed at rest; removing it");
            self.remove(digest);
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    /// Removes `digest` (a reader holding it open keeps its bytes until it closes).
    pub fn remove(&self, digest: &Digest) {
        self.state().blobs.remove(digest);
        let path = self.path(digest);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(path = %path.display(), error = %e, "cannot remove a blob"),
        }
    }

    /// Removes what [`plan_eviction`] says for the blobs `in_use`; returns what it removed.
    pub fn evict(&self, in_use: &HashSet<Digest>) -> Vec<Digest> {
        let blobs: Vec<StoredBlob> = self
            .state()
            .blobs
            .iter()
            .map(|(digest, &(size, used))| StoredBlob {
                digest: digest.clone(),
                size,
                used,
            })
            .collect();
        let remove = plan_eviction(&blobs, in_use, self.cap);
        for digest in &remove {
            self.remove(digest);
        }
        if !remove.is_empty() {
            info!(
                removed = remove.len(),
                "evicted blobs no approved component uses or over the cap"
            );
        }
        remove
    }
}

/// Hashes `bytes` against `expected`, writes them to `temp` (0600, flushed) and renames that
/// onto `path`.
fn write_verified(
    expected: &Digest,
    bytes: &[u8],
    temp: &Path,
    path: &Path,
) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let actual = crate::artifact::digest_of(bytes);
    if &actual != expected {
        return Err(StoreError::Mismatch {
            expected: expected.clone(),
            actual,
        });
    }
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| StoreError::Io { what, path, source }
    };
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(temp)
            .map_err(io("create", temp))?;
        file.write_all(bytes).map_err(io("write", temp))?;
        file.sync_all().map_err(io("flush", temp))?;
        std::fs::rename(temp, path).map_err(io("rename into place", path))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(temp);
    }
    written
}

/// Hashes what passes through it and says at the end whether it was `expected`.
#[derive(Debug)]
pub struct VerifyingReader {
    hasher: Sha256,
    expected: Digest,
    read: u64,
}

impl VerifyingReader {
    pub fn new(expected: Digest) -> Self {
        Self {
            hasher: Sha256::new(),
            expected,
            read: 0,
        }
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.read += chunk.len() as u64;
        self.hasher.update(chunk);
    }

    /// Bytes seen so far.
    pub fn read(&self) -> u64 {
        self.read
    }

    /// `Ok` when everything seen hashes to the expected digest; the actual digest otherwise.
    pub fn finish(self) -> Result<(), Digest> {
        let hash: [u8; 32] = self.hasher.finalize().into();
        let actual = Digest::from_sha256(&hash);
        if actual == self.expected {
            Ok(())
        } else {
            Err(actual)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use super::*;
    use crate::artifact::digest_of;

    fn d(n: u8) -> Digest {
        digest_of(&[n])
    }

    fn blob(n: u8, size: u64, used: u64) -> StoredBlob {
        StoredBlob {
            digest: d(n),
            size,
            used,
        }
    }

    #[test]
    fn eviction_spec() {
        let all = [blob(1, 10, 1), blob(2, 10, 3), blob(3, 10, 2)];
        let set = |ns: &[u8]| ns.iter().map(|n| d(*n)).collect::<HashSet<_>>();
        let cases: [(&str, HashSet<Digest>, u64, Vec<Digest>); 5] = [
            (
                "everything in use and under the cap stays",
                set(&[1, 2, 3]),
                30,
                vec![],
            ),
            (
                "a blob no approved component uses goes, whatever the room",
                set(&[1, 2]),
                1000,
                vec![d(3)],
            ),
            (
                "over the cap, the least recently used goes first",
                set(&[1, 2, 3]),
                25,
                vec![d(1)],
            ),
            ("until the rest fits", set(&[1, 2, 3]), 10, vec![d(1), d(3)]),
            (
                "a cap of zero keeps nothing",
                set(&[1, 2, 3]),
                0,
                vec![d(1), d(3), d(2)],
            ),
        ];
        for (rule, in_use, cap, want) in cases {
            assert_eq!(plan_eviction(&all, &in_use, cap), want, "{rule}");
        }
    }

    #[tokio::test]
    async fn blobs_are_written_only_when_they_hash_to_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), 1 << 20).unwrap();
        let bytes = b"\0asm component".to_vec();
        let digest = digest_of(&bytes);
        let err = store.put(&d(9), bytes.clone()).await.unwrap_err();
        assert!(matches!(err, StoreError::Mismatch { .. }), "{err}");
        assert!(
            !store.path(&d(9)).exists(),
            "nothing written for a mismatch"
        );

        store.put(&digest, bytes.clone()).await.unwrap();
        assert_eq!(
            store.read_verified(&digest, 1 << 20).await.unwrap(),
            Some(bytes.clone())
        );
        assert_eq!(
            store.read_verified(&digest, 3).await.unwrap(),
            None,
            "over the limit"
        );
        let names: Vec<String> = std::fs::read_dir(dir.path().join("sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![digest.hex().to_owned()], "no temporary left");

        // Changed at rest: not returned, and removed.
        std::fs::write(store.path(&digest), b"tampered").unwrap();
        assert_eq!(store.read_verified(&digest, 1 << 20).await.unwrap(), None);
        assert!(!store.path(&digest).exists());
        assert!(!store.contains(&digest));
    }

    #[tokio::test]
    async fn reopening_indexes_blobs_and_drops_leftover_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = b"kept".to_vec();
        let digest = digest_of(&bytes);
        {
            let store = BlobStore::open(dir.path(), 1 << 20).unwrap();
            store.put(&digest, bytes).await.unwrap();
        }
        let leftover = dir.path().join("sha256/.abc.1.0.tmp");
        std::fs::write(&leftover, b"half").unwrap();
        let store = BlobStore::open(dir.path(), 1 << 20).unwrap();
        assert!(store.contains(&digest));
        assert_eq!(store.total_bytes(), 4);
        assert!(!leftover.exists());
        assert_eq!(store.evict(&HashSet::new()), vec![digest.clone()]);
        assert!(!store.path(&digest).exists());
    }

    #[test]
    fn the_verifying_reader_names_the_actual_digest() {
        let mut ok = VerifyingReader::new(digest_of(b"abc"));
        ok.update(b"a");
        ok.update(b"bc");
        assert_eq!(ok.read(), 3);
        assert_eq!(ok.finish(), Ok(()));
        let mut bad = VerifyingReader::new(digest_of(b"abc"));
        bad.update(b"abd");
        assert_eq!(bad.finish(), Err(digest_of(b"abd")));
    }
}
