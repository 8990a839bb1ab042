//! The agent's one wasmtime [`Engine`]: pooling allocator, epoch interruption with a ticker
//! thread, the [`Linker`] built once, and the on-disk compile cache.
//!
//! In memory, prepared components are kept per digest in a bounded map: the supervisor drops
//! the digests no component runs any more ([`AgentEngine::retain`]) and at most
//! [`EngineConfig::max_prepared`] stay (least recently used first; a running actor holds its
//! own handle, so an eviction only costs a reload from the disk cache).
//!
//! Compile cache: `<cache_dir>/<engine hash>/<digest>.cwasm`, where the engine hash covers
//! the wasmtime version and every setting that changes generated code. Each file carries a
//! header with the digest, the engine hash and the SHA-256 of the serialized artifact; a
//! file whose header or checksum does not match, or that anyone but the agent could have
//! written, is deleted and rebuilt. Only artifacts this agent compiled from `.wasm` it
//! verified are ever loaded; nothing precompiled comes from outside the node.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use airssys_crds::artifact::Digest;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
};

use crate::error::Error;
use crate::host::HostState;

/// Magic bytes at the start of every cache file (format version in the last byte).
const CACHE_MAGIC: &[u8; 8] = b"AIRSWC\0\x01";

/// Sizes of the engine and its instance pool.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where compiled components are cached (created 0700).
    pub cache_dir: PathBuf,
    /// Epoch length; CPU budgets and the infinite-loop stop are measured in these.
    pub epoch_tick: Duration,
    /// Count fuel as well as epochs (slower code; only when some component sets fuel).
    pub consume_fuel: bool,
    /// Largest `.wasm` the agent will compile.
    pub max_wasm_bytes: usize,
    /// Largest linear memory any instance may have (the per-component quota is lower).
    pub max_memory_bytes: u64,
    /// Wasm stack per call; unbounded recursion traps here.
    pub max_wasm_stack: usize,
    /// Component instances alive at once (one per idle component; a busy component with
    /// `maxConcurrentMessages` N may hold up to N).
    pub total_component_instances: u32,
    /// Core module instances alive at once (a Rust component has a handful each).
    pub total_core_instances: u32,
    /// Linear memories alive at once.
    pub total_memories: u32,
    /// Tables alive at once.
    pub total_tables: u32,
    /// Async stacks in the pool. wasmtime 48 lets each `Store` keep the stack of its last
    /// call for reuse until the store is dropped, so this must cover every live instance,
    /// not just the calls executing at once (measured: 64 stacks stop the 65th actor).
    pub total_stacks: u32,
    /// Prepared components kept in memory (distinct digests).
    pub max_prepared: usize,
}

impl EngineConfig {
    /// Defaults sized for a small node: 1,000 instances.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            epoch_tick: Duration::from_millis(10),
            consume_fuel: false,
            max_wasm_bytes: 32 << 20,
            max_memory_bytes: 256 << 20,
            max_wasm_stack: 512 << 10,
            total_component_instances: 1000,
            total_core_instances: 10_000,
            total_memories: 2000,
            total_tables: 2000,
            total_stacks: 1000,
            max_prepared: 128,
        }
    }

    /// Pool sized for `instances` actors.
    pub fn with_capacity(mut self, instances: u32) -> Self {
        self.total_component_instances = instances;
        self.total_core_instances = instances.saturating_mul(10);
        self.total_memories = instances.saturating_mul(2);
        self.total_tables = instances.saturating_mul(2);
        self.total_stacks = instances;
        self
    }
}

/// Builds the wasmtime [`Config`] the agent runs with.
pub fn wasmtime_config(cfg: &EngineConfig) -> Config {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(cfg.total_component_instances)
        .total_core_instances(cfg.total_core_instances)
        .total_memories(cfg.total_memories)
        .total_tables(cfg.total_tables)
        .total_stacks(cfg.total_stacks)
        .max_memory_size(usize::try_from(cfg.max_memory_bytes).unwrap_or(usize::MAX))
        .max_core_instances_per_component(16)
        .max_memories_per_component(4)
        .max_tables_per_component(8)
        .table_elements(20_000)
        // Reset a freed slot by rewriting only the pages the last instance touched (found
        // with the PAGEMAP_SCAN ioctl, Linux ≥ 6.7; without it, memset of the low bytes)
        // instead of `madvise`: the next instance in the slot takes no page faults. Measured
        // (benches/runtime.rs, instance start of the echo guest): 30 µs → 11 µs. Only pages
        // an instance really used stay resident, at most 1 MiB per memory slot.
        .linear_memory_keep_resident(1 << 20)
        .table_keep_resident(64 << 10)
        .pagemap_scan(Enabled::Auto)
        // Batch the `madvise` calls still needed (tables, memory beyond the resident part).
        .decommit_batch_size(64)
        .async_stack_keep_resident(16 << 10);

    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .consume_fuel(cfg.consume_fuel)
        .cranelift_opt_level(OptLevel::Speed)
        .max_wasm_stack(cfg.max_wasm_stack)
        .async_stack_size(cfg.max_wasm_stack + (256 << 10))
        // Reserve only what an instance may use: with thousands of slots a 4 GiB
        // reservation each would exhaust the address space.
        .memory_reservation(cfg.max_memory_bytes)
        .memory_guard_size(64 << 10)
        .memory_reservation_for_growth(0)
        .memory_init_cow(true)
        // Component-model async is not used by our WIT; turning it off halves call overhead.
        .concurrency_support(false)
        .parallel_compilation(false)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// One compiled and linked component, its exports resolved, ready to instantiate.
pub type Prepared = crate::bindings::ComponentPre<HostState>;

/// A compiled and linked HTTP component (`wasi:http/proxy`), ready to instantiate per request.
pub type HttpPre = wasmtime_wasi_http::p2::bindings::ProxyPre<HostState>;

/// The export that makes a component an airssys actor (world `airssys:component/component`).
pub const LIFECYCLE_EXPORT: &str = "airssys:component/lifecycle";
/// The export that makes a component an HTTP handler (world `wasi:http/proxy`, WASI 0.2).
pub const HTTP_HANDLER_EXPORT: &str = "wasi:http/incoming-handler";

/// Which world a component is run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    /// `airssys:component/component`: an actor with a mailbox.
    Component,
    /// `wasi:http/proxy`: an HTTP handler, one instance per request.
    Http,
}

/// A component whose exports do not fit what it is asked to run as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorldError {
    #[error(
        "the component exports neither `{LIFECYCLE_EXPORT}` (world airssys:component/component) nor `{HTTP_HANDLER_EXPORT}` (world wasi:http/proxy); it exports: {exports}"
    )]
    Neither { exports: String },
    #[error(
        "spec.http is set but the component does not export `{HTTP_HANDLER_EXPORT}` (world wasi:http/proxy; it exports: {exports}): build it for wasi:http/proxy, or remove spec.http"
    )]
    NotHttp { exports: String },
    #[error(
        "the component exports `{HTTP_HANDLER_EXPORT}` (world wasi:http/proxy) but not `{LIFECYCLE_EXPORT}` (world airssys:component/component): set spec.http to serve it over HTTP"
    )]
    NeedsHttpSpec,
}

/// Decides the world from a component's export names (`name@version`), and whether it is
/// asked to serve HTTP (`spec.http` set).
pub fn choose_world<S: AsRef<str>>(exports: &[S], serve_http: bool) -> Result<World, WorldError> {
    let exports_one = |want: &str| {
        exports.iter().any(|e| {
            let e = e.as_ref();
            e == want || e.strip_prefix(want).is_some_and(|v| v.starts_with('@'))
        })
    };
    let lifecycle = exports_one(LIFECYCLE_EXPORT);
    // Only WASI 0.2 handlers: that is what the agent links (`wasi:http@0.2.x`).
    let http = exports.iter().any(|e| {
        e.as_ref()
            .strip_prefix(HTTP_HANDLER_EXPORT)
            .is_some_and(|v| v.starts_with("@0.2."))
    });
    let listed = || {
        if exports.is_empty() {
            "nothing".to_owned()
        } else {
            exports
                .iter()
                .map(|e| format!("`{}`", e.as_ref()))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    match (serve_http, http, lifecycle) {
        (true, true, _) => Ok(World::Http),
        (true, false, _) => Err(WorldError::NotHttp { exports: listed() }),
        (false, _, true) => Ok(World::Component),
        (false, true, false) => Err(WorldError::NeedsHttpSpec),
        (false, false, false) => Err(WorldError::Neither { exports: listed() }),
    }
}

/// A compiled and linked component, bound to each world it exports.
#[derive(Clone)]
pub struct Loaded {
    component: Option<Prepared>,
    http: Option<HttpPre>,
    exports: Arc<[String]>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("exports", &self.exports)
            .finish_non_exhaustive()
    }
}

/// What a component runs as, ready to instantiate.
#[derive(Clone)]
pub enum Runnable {
    Component(Prepared),
    Http(HttpPre),
}

impl std::fmt::Debug for Runnable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Component(_) => "Runnable::Component",
            Self::Http(_) => "Runnable::Http",
        })
    }
}

impl Loaded {
    /// The component as the world it is asked to run as (`serve_http`: `spec.http` is set).
    pub fn select(&self, serve_http: bool) -> Result<Runnable, WorldError> {
        match choose_world(&self.exports, serve_http)? {
            World::Component => self.component.clone().map(Runnable::Component),
            World::Http => self.http.clone().map(Runnable::Http),
        }
        .ok_or_else(|| WorldError::Neither {
            exports: self.exports.join(", "),
        })
    }

    /// The component's export names.
    pub fn exports(&self) -> &[String] {
        &self.exports
    }
}

/// The engine, its linker, the epoch ticker and the compile cache.
#[derive(Clone)]
pub struct AgentEngine {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<HostState>,
    config: EngineConfig,
    engine_hash: String,
    prepared: Mutex<Lru<Digest, Loaded>>,
    /// Compiles are CPU-heavy; one at a time keeps the node responsive.
    compile_slots: Semaphore,

    ticker_stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for AgentEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentEngine")
            .field("engine_hash", &self.inner.engine_hash)
            .field("cache_dir", &self.inner.config.cache_dir)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Where a compiled component came from (tests and metrics look at this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompileSource {
    /// Already prepared in memory.
    Memory,
    /// Loaded from a verified cache file.
    Disk,
    /// Compiled now (cache missing, stale, foreign or corrupt).
    Compiled,
}

impl AgentEngine {
    /// Creates the engine, links WASI and the airssys interfaces, and starts the epoch ticker.
    pub fn new(config: EngineConfig) -> Result<Self, Error> {
        let engine =
            Engine::new(&wasmtime_config(&config)).map_err(Error::wasm("create engine"))?;
        let linker = crate::host::linker(&engine)?;
        let engine_hash = engine_hash(&engine);
        create_private_dir(&config.cache_dir.join(&engine_hash))?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.weak(), config.epoch_tick, ticker_stop.clone())?;
        let prepared = Mutex::new(Lru::new(config.max_prepared));
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                config,
                engine_hash,
                prepared,
                compile_slots: Semaphore::new(1),
                ticker_stop,
            }),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub fn linker(&self) -> &Linker<HostState> {
        &self.inner.linker
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The hash of everything that makes compiled code compatible with this engine.
    pub fn engine_hash(&self) -> &str {
        &self.inner.engine_hash
    }

    /// Path of the cache file for `digest`.
    pub fn cache_path(&self, digest: &Digest) -> PathBuf {
        self.inner
            .config
            .cache_dir
            .join(&self.inner.engine_hash)
            .join(format!("{}.cwasm", sanitize_digest(digest.as_str())))
    }

    /// The prepared airssys component for `digest`: from memory, from the disk cache, or
    /// compiled from `wasm` (which must hash to `digest`). A component that does not export
    /// the airssys lifecycle is refused, naming the world it lacks.
    pub async fn prepare(
        &self,
        digest: &Digest,
        wasm: &[u8],
    ) -> Result<(Prepared, CompileSource), Error> {
        let (loaded, source) = self.load(digest, wasm).await?;
        match loaded.select(false)? {
            Runnable::Component(pre) => Ok((pre, source)),
            Runnable::Http(_) => Err(Error::Internal(
                "an HTTP component selected as an airssys component".into(),
            )),
        }
    }

    /// The component for `digest` as the world it is asked to run as: `serve_http` when its
    /// spec asks to serve HTTP. From memory, the disk cache, or compiled from `wasm`.
    pub async fn prepare_world(
        &self,
        digest: &Digest,
        wasm: &[u8],
        serve_http: bool,
    ) -> Result<(Runnable, CompileSource), Error> {
        let (loaded, source) = self.load(digest, wasm).await?;
        Ok((loaded.select(serve_http)?, source))
    }

    /// The compiled and linked component for `digest`, bound to the worlds it exports.
    pub async fn load(
        &self,
        digest: &Digest,
        wasm: &[u8],
    ) -> Result<(Loaded, CompileSource), Error> {
        if let Some(pre) = self.cached(digest) {
            return Ok((pre, CompileSource::Memory));
        }
        let actual = sha256_digest(wasm);
        if actual != *digest {
            return Err(Error::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        if wasm.len() > self.inner.config.max_wasm_bytes {
            return Err(Error::TooLarge {
                size: wasm.len(),
                limit: self.inner.config.max_wasm_bytes,
            });
        }
        let _slot = self
            .inner
            .compile_slots
            .acquire()
            .await
            .map_err(|_| Error::Shutdown)?;
        // Another task may have finished the same digest while we waited.
        if let Some(pre) = self.cached(digest) {
            return Ok((pre, CompileSource::Memory));
        }
        let this = self.clone();
        let digest_owned = digest.clone();
        let wasm = wasm.to_vec();
        let (component, source) =
            tokio::task::spawn_blocking(move || this.load_or_compile(&digest_owned, &wasm))
                .await
                .map_err(|e| Error::Internal(format!("compile worker failed: {e}")))??;
        let exports: Arc<[String]> = component
            .component_type()
            .exports(&self.inner.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(Error::wasm("link component"))?;
        // Bind every world the exports fit; which one runs is the spec's choice (`select`).
        let bind_component = choose_world(&exports, false) == Ok(World::Component);
        let bind_http = choose_world(&exports, true) == Ok(World::Http);
        let loaded = Loaded {
            component: if bind_component {
                Some(Prepared::new(pre.clone()).map_err(Error::wasm("bind the airssys world"))?)
            } else {
                None
            },
            http: if bind_http {
                Some(HttpPre::new(pre).map_err(Error::wasm("bind the wasi:http/proxy world"))?)
            } else {
                None
            },
            exports,
        };
        // A component that fits neither world is refused here, with its exports named.
        if loaded.component.is_none() && loaded.http.is_none() {
            loaded.select(false)?;
        }
        self.prepared().insert(digest.clone(), loaded.clone());
        Ok((loaded, source))
    }

    /// Forgets the in-memory prepared component (the disk cache stays).
    pub fn evict(&self, digest: &Digest) {
        self.prepared().remove(digest);
    }

    /// Forgets every in-memory prepared component whose digest is not in `in_use` (the
    /// supervisor calls it when a component stops or moves to another digest).
    pub fn retain(&self, in_use: &HashSet<Digest>) {
        self.prepared().retain(|digest| in_use.contains(digest));
    }

    /// The digests prepared in memory.
    pub fn prepared_digests(&self) -> Vec<Digest> {
        self.prepared().keys().cloned().collect()
    }

    fn prepared(&self) -> std::sync::MutexGuard<'_, Lru<Digest, Loaded>> {
        self.inner
            .prepared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn cached(&self, digest: &Digest) -> Option<Loaded> {
        self.prepared().get(digest)
    }

    /// Blocking: verified cache hit, else compile and write the cache.
    fn load_or_compile(
        &self,
        digest: &Digest,
        wasm: &[u8],
    ) -> Result<(Component, CompileSource), Error> {
        let path = self.cache_path(digest);
        match read_cache_file(&path, digest.as_str(), &self.inner.engine_hash) {
            Ok(Some(artifact)) => {
                // SAFETY: `artifact` was produced by `Component::serialize` on this node by
                // this agent: the file lives in the agent-only cache directory, is not
                // writable by anyone else, and its header binds it to this digest and this
                // engine's compatibility hash and carries the SHA-256 of the bytes we just
                // verified. wasmtime additionally checks its own version header.
                #[allow(unsafe_code)]
                let loaded = unsafe { Component::deserialize(&self.inner.engine, &artifact) };
                match loaded {
                    Ok(component) => return Ok((component, CompileSource::Disk)),
                    Err(e) => {
                        tracing::warn!(%digest, error = %e, "cached component rejected by wasmtime; recompiling");
                    }
                }
            }
            Ok(None) => {}
            Err(reason) => {
                tracing::warn!(%digest, path = %path.display(), %reason, "discarding cache entry");
            }
        }
        let _ = std::fs::remove_file(&path);
        let component =
            Component::new(&self.inner.engine, wasm).map_err(Error::wasm("compile component"))?;
        match component.serialize() {
            Ok(artifact) => {
                if let Err(e) =
                    write_cache_file(&path, digest.as_str(), &self.inner.engine_hash, &artifact)
                {
                    tracing::warn!(%digest, error = %e, "could not write compile cache");
                }
            }
            Err(e) => tracing::warn!(%digest, error = %e, "could not serialize component"),
        }
        Ok((component, CompileSource::Compiled))
    }
}

/// A map that keeps at most `cap` entries, dropping the least recently used.
#[derive(Debug)]
struct Lru<K, V> {
    entries: HashMap<K, (V, u64)>,
    clock: u64,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> Lru<K, V> {
    fn new(cap: usize) -> Self {
        Self {
            entries: HashMap::new(),
            clock: 0,
            cap: cap.max(1),
        }
    }

    fn get(&mut self, key: &K) -> Option<V> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(key).map(|(value, used)| {
            *used = clock;
            value.clone()
        })
    }

    fn insert(&mut self, key: K, value: V) {
        self.clock += 1;
        self.entries.insert(key, (value, self.clock));
        while self.entries.len() > self.cap {
            // O(cap) per eviction: the cap is small and evictions rare (a new digest).
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }

    fn remove(&mut self, key: &K) {
        self.entries.remove(key);
    }

    fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.entries.retain(|k, _| keep(k));
    }

    fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.keys()
    }
}

/// `sha256:<hex>` of some bytes, the form digests take everywhere.
pub fn sha256_digest(bytes: &[u8]) -> Digest {
    Digest::from_sha256(&Sha256::digest(bytes).into())
}

fn sanitize_digest(digest: &str) -> String {
    digest
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn engine_hash(engine: &Engine) -> String {
    // DefaultHasher's algorithm may change between Rust releases; that only causes a
    // one-off recompilation, never a wrong load (wasmtime re-checks its own header).
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    env!("CARGO_PKG_VERSION").hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

fn spawn_ticker(
    engine: wasmtime::EngineWeak,
    tick: Duration,
    stop: Arc<AtomicBool>,
) -> Result<(), Error> {
    // A plain thread, not a tokio task: a busy runtime must not delay the tick that stops
    // a runaway guest.
    std::thread::Builder::new()
        .name("epoch-ticker".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .map(drop)
        .map_err(|e| Error::Io {
            what: "start the epoch ticker".into(),
            source: e,
        })
}

fn create_private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::Io {
            what: format!("create cache directory {}", dir.display()),
            source: e,
        })?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| Error::Io {
        what: format!("restrict cache directory {}", dir.display()),
        source: e,
    })
}

/// Header: magic, then three length-prefixed fields (digest, engine hash, sha256 of the
/// artifact), then the artifact.
fn encode_cache_file(digest: &str, engine_hash: &str, artifact: &[u8]) -> Vec<u8> {
    let checksum = Sha256::digest(artifact);
    let mut out = Vec::with_capacity(artifact.len() + 128);
    out.extend_from_slice(CACHE_MAGIC);
    for field in [
        digest.as_bytes(),
        engine_hash.as_bytes(),
        checksum.as_slice(),
    ] {
        out.extend_from_slice(&(field.len() as u32).to_le_bytes());
        out.extend_from_slice(field);
    }
    out.extend_from_slice(artifact);
    out
}

/// Checks a cache file's header and checksum and returns the artifact. `Err` says why a
/// file was rejected.
fn decode_cache_file(bytes: &[u8], digest: &str, engine_hash: &str) -> Result<Vec<u8>, String> {
    let rest = bytes
        .strip_prefix(CACHE_MAGIC.as_slice())
        .ok_or("bad magic")?;
    let mut fields: Vec<&[u8]> = Vec::with_capacity(3);
    let mut rest = rest;
    for _ in 0..3 {
        let (len, tail) = rest.split_first_chunk::<4>().ok_or("truncated header")?;
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err("truncated header".into());
        }
        let (field, tail) = tail.split_at(len);
        fields.push(field);
        rest = tail;
    }
    if fields[0] != digest.as_bytes() {
        return Err("entry is for another digest".into());
    }
    if fields[1] != engine_hash.as_bytes() {
        return Err("entry is from another engine".into());
    }
    if fields[2] != Sha256::digest(rest).as_slice() {
        return Err("checksum mismatch (corrupt entry)".into());
    }
    Ok(rest.to_vec())
}

fn read_cache_file(
    path: &Path,
    digest: &str,
    engine_hash: &str,
) -> Result<Option<Vec<u8>>, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    // Only files this process's user wrote, writable by nobody else.
    if meta.mode() & 0o022 != 0 || meta.uid() != current_uid() {
        return Err("file is writable by others or owned by another user".into());
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    decode_cache_file(&bytes, digest, engine_hash).map(Some)
}

fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    // The owner of our own cache root: created by this process, so it is our uid,
    // without reaching for libc.
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}

fn write_cache_file(
    path: &Path,
    digest: &str,
    engine_hash: &str,
    artifact: &[u8],
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // Write to a private temporary file, then rename: readers never see half a file.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&encode_cache_file(digest, engine_hash, artifact))?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_file_round_trips() {
        let file = encode_cache_file("sha256:ab", "e1", b"artifact");
        assert_eq!(
            decode_cache_file(&file, "sha256:ab", "e1").unwrap(),
            b"artifact"
        );
    }

    #[test]
    fn cache_file_rejects_what_it_must() {
        let file = encode_cache_file("sha256:ab", "e1", b"artifact");
        let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
            ("another digest", file.clone(), "sha256:cd", "e1"),
            ("another engine", file.clone(), "sha256:ab", "e2"),
            (
                "flipped artifact byte",
                {
                    let mut f = file.clone();
                    let last = f.len() - 1;
                    f[last] ^= 1;
                    f
                },
                "sha256:ab",
                "e1",
            ),
            ("truncated", file[..12].to_vec(), "sha256:ab", "e1"),
            ("no magic", b"\x7fELF....".to_vec(), "sha256:ab", "e1"),
        ];
        for (name, bytes, digest, engine) in cases {
            assert!(
                decode_cache_file(&bytes, digest, engine).is_err(),
                "{name} must be rejected"
            );
        }
    }

    #[test]
    fn prepared_map_keeps_what_is_in_use_and_at_most_its_cap() {
        let mut lru = Lru::new(3);
        for k in ["a", "b", "c"] {
            lru.insert(k, k.len());
        }
        // a used recently: d evicts b, the least recently used
        assert_eq!(lru.get(&"a"), Some(1));
        lru.insert("d", 1);
        let mut keys: Vec<_> = lru.keys().copied().collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["a", "c", "d"],
            "the cap evicts the least recently used"
        );
        // digests no component uses are dropped
        let in_use: HashSet<&str> = ["c"].into();
        lru.retain(|k| in_use.contains(k));
        assert_eq!(lru.keys().copied().collect::<Vec<_>>(), ["c"]);
        assert_eq!(lru.get(&"a"), None);
        // re-inserting a key refreshes it instead of growing the map
        lru.insert("c", 2);
        assert_eq!((lru.entries.len(), lru.get(&"c")), (1, Some(2)));
        lru.remove(&"c");
        assert_eq!(lru.keys().count(), 0);
    }

    #[test]
    fn the_world_comes_from_the_exports_and_the_spec() {
        let lifecycle = "airssys:component/lifecycle@0.1.0";
        let handler = "wasi:http/incoming-handler@0.2.6";
        // rule, exports, spec.http set, the world or a part of the error
        type Row<'a> = (&'a str, &'a [&'a str], bool, Result<World, &'a str>);
        #[rustfmt::skip]
        let rows: &[Row] = &[
            ("lifecycle runs as an actor", &[lifecycle], false, Ok(World::Component)),
            ("a handler with spec.http is served", &[handler], true, Ok(World::Http)),
            ("both, spec.http picks HTTP", &[lifecycle, handler], true, Ok(World::Http)),
            ("both, no spec.http picks the actor", &[lifecycle, handler], false, Ok(World::Component)),
            ("spec.http without a handler names the missing export", &[lifecycle], true, Err("does not export `wasi:http/incoming-handler`")),
            ("a handler without spec.http asks for it", &[handler], false, Err("set spec.http")),
            ("neither world names both", &["wasi:cli/run@0.2.0"], false, Err("exports neither `airssys:component/lifecycle`")),
            ("neither world lists the exports", &["wasi:cli/run@0.2.0"], false, Err("`wasi:cli/run@0.2.0`")),
            ("nothing exported", &[], false, Err("it exports: nothing")),
            ("a WASI 0.3 handler is not linked", &["wasi:http/handler@0.3.0"], true, Err("does not export")),
            ("a lookalike name is not the export", &["airssys:component/lifecycle-v2@0.1.0"], false, Err("exports neither")),
        ];
        for (rule, exports, http, want) in rows {
            let got = choose_world(exports, *http);
            match (want, got) {
                (Ok(w), Ok(g)) => assert_eq!(*w, g, "{rule}"),
                (Err(needle), Err(e)) => {
                    assert!(e.to_string().contains(needle), "{rule}: {e}")
                }
                (want, got) => panic!("{rule}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn digest_is_prefixed_hex() {
        assert_eq!(
            sha256_digest(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
