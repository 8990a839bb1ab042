//! The filesystem: wasmtime-wasi's `wasi:filesystem`, shadowed by checked wrappers.
//!
//! - Layout: each granted directory has its own host directory, one level below the
//!   component's root and named by its whole guest path ([`grant_dir_name`]: `/data` is
//!   `data`, `/data/inbox` is `data%2Finbox`). No grant's host directory lies inside another
//!   grant's tree, so nothing a guest does through one grant can move, remove or replace the
//!   directory behind another. Each is opened beneath the component's root without
//!   following symlinks ([`open_beneath`]) and handed to wasmtime-wasi by its descriptor, so
//!   a symlink planted where a grant directory should be is refused, never followed.
//! - Mount points: a grant nested in another (`/data/inbox` in `/data`) shows in the outer
//!   tree as an empty directory of that name, like a mount point. wasi-libc opens a path
//!   through the longest matching preopen, so `/data/inbox/x` reaches the inner grant. Through
//!   the outer descriptor the name is only a name: a call that enters it, removes it,
//!   renames it or creates over it is refused (a stat of it is not).
//! - Every path-taking call (`open-at`, `stat-at`, `metadata-hash-at`, `readlink-at`,
//!   `set-times-at`, `create-directory-at`, `remove-directory-at`, `unlink-file-at`,
//!   `symlink-at`, `rename-at`, `link-at`) passes [`check_call`], which decides it with the
//!   pure [`decide`] and audits a refusal through [`deny`], the one denial path; the real
//!   call's own permission errors are audited by [`finish`]. [`decide`] refuses: `..`
//!   and absolute paths; what the tree's access does not allow (reads and metadata in a
//!   write-only tree, any change in a read-only one); mount points as above; a rename or
//!   link into a tree with more access ([`transfer_allowed`]); a symlink whose target could
//!   leave the grant ([`link_target_stays`]).
//!   A path outside every preopen (`/etc/passwd` with only `/data` granted, or a relative
//!   `../x` from the root working directory) never reaches the host: wasi-libc resolves
//!   paths against the preopen list inside the guest and fails with `ENOENT` without a host
//!   call, so there is nothing to audit (and no audit event is invented for it).
//! - Write-only directories: mounted read-write for wasmtime-wasi, with every descriptor
//!   under them marked ([`WRITE_ONLY`]); the path calls above and the descriptor methods that
//!   read (`read`, `read-via-stream`, `read-directory`, `stat`, `metadata-hash`) refuse
//!   anything that reads, because names, sizes and times are contents too. Creating,
//!   writing, appending, truncating, creating directories and deleting stay allowed: that is
//!   what a write grant means. As in a POSIX `-wx` directory, a guest can still learn
//!   whether a name exists from a failing exclusive create. A write-only grant nested in a
//!   readable one is readable (the outer grant covers it).
//!   Every refusal is audited and answered with `not-permitted`, never a trap.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use airssys_crds::capability::covers_normalized;
use rustix::fs::{Mode, OFlags};
use sha2::{Digest as _, Sha256};
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::preopens;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    DescriptorFlags, DescriptorStat, DirectoryEntryStream, ErrorCode, HostDescriptor,
    MetadataHashValue, NewTimestamp, OpenFlags, PathFlags,
};
use wasmtime_wasi::p2::{DynInputStream, FsError};
use wasmtime_wasi::{FsPerms, OpenMode, WasiCtxBuilder};

use super::HostState;
use super::resources;
use crate::context::InstanceScope;
use crate::error::Error;
use crate::grant::{CapabilityKind, FsGrant};

/// The WIT name of the filesystem interfaces wasmtime-wasi 48 implements.
const FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";
const FILESYSTEM_PREOPENS: &str = "wasi:filesystem/preopens@0.2.12";

/// Marks a descriptor under a write-only grant, in the `open_mode` bits wasmtime-wasi keeps
/// on every descriptor. wasmtime-wasi only tests its own `READ`/`WRITE` bits with
/// `contains`, and bitflags keeps unknown bits, so the mark rides along untouched.
pub const WRITE_ONLY: usize = 1 << (usize::BITS - 1);

/// Longest grant directory name kept readable; longer ones are shortened and made unique by
/// a digest (file names are limited to 255 bytes).
const MAX_PLAIN_NAME: usize = 200;

/// Name of the host directory backing the grant `guest_path`, directly in the component's
/// root: the guest path without its leading `/`, with `%` written `%25` and `/` written
/// `%2F` (the root grant `/` is `%2F`). One file name per grant, distinct for distinct
/// paths, so no grant's directory is inside another's; a single-component grant (`/data`)
/// keeps the name it always had (`data`).
pub fn grant_dir_name(guest_path: &str) -> String {
    let trimmed = guest_path.trim_start_matches('/');
    if trimmed.is_empty() {
        return "%2F".to_owned();
    }
    let mut name = String::with_capacity(trimmed.len());
    for c in trimmed.chars() {
        match c {
            '%' => name.push_str("%25"),
            '/' => name.push_str("%2F"),
            c => name.push(c),
        }
    }
    if name.len() > MAX_PLAIN_NAME {
        // `%#` never occurs in an escaped name, so these cannot collide with one.
        let mut cut = MAX_PLAIN_NAME / 2;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
        name.push_str("%#");
        name.push_str(&hex::encode(Sha256::digest(guest_path.as_bytes())));
    }
    name
}

/// Host directory backing a granted guest directory (see [`grant_dir_name`]).
pub fn host_dir(component_root: &Path, guest_path: &str) -> PathBuf {
    component_root.join(grant_dir_name(guest_path))
}

/// Opens the directory `components` below `start`, one component at a time, creating
/// missing ones, and never following a symlink (`O_NOFOLLOW | O_DIRECTORY` on each step):
/// the result is beneath `start` whatever is on disk. A component must be a plain name.
pub fn open_beneath(start: impl AsFd, components: &[&str]) -> std::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dir: Option<OwnedFd> = None;
    for component in components {
        if component.is_empty()
            || *component == "."
            || *component == ".."
            || component.contains('/')
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{component:?} is not a plain directory name"),
            ));
        }
        let at = match &dir {
            Some(d) => d.as_fd(),
            None => start.as_fd(),
        };
        match rustix::fs::mkdirat(at, *component, Mode::from_raw_mode(0o777)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let next = rustix::fs::openat(at, *component, flags, Mode::empty()).map_err(|e| {
            if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR {
                std::io::Error::other(format!(
                    "{component} is a symlink or not a directory; refusing to follow it"
                ))
            } else {
                e.into()
            }
        })?;
        dir = Some(next);
    }
    dir.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no directory named"))
}

/// Adds one preopen per filesystem grant of `scope` to `builder` (see the module doc for
/// the layout). The directories are opened here, beneath the component's root and without
/// following symlinks; wasmtime-wasi then opens exactly that directory through
/// `/proc/self/fd`, a path that names the open descriptor and nothing else.
pub fn preopen_grants(builder: &mut WasiCtxBuilder, scope: &InstanceScope) -> Result<(), Error> {
    let grants = scope.grants.filesystem_grants();
    if grants.is_empty() {
        return Ok(());
    }
    let io = |what: String| move |source: std::io::Error| Error::Io { what, source };
    let root_path = &scope.fs_root;
    std::fs::create_dir_all(root_path).map_err(io(format!("create {}", root_path.display())))?;
    // The component's root is the agent's own (no grant reaches it), opened by its path.
    let root = rustix::fs::open(
        root_path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io(format!("open {}", root_path.display()))(e.into()))?;
    for grant in grants {
        let guest = &*grant.path;
        let dir = open_beneath(&root, &[&grant_dir_name(guest)]).map_err(io(format!(
            "open the directory of the grant {guest} in {}",
            root_path.display()
        )))?;
        make_mount_points(&dir, grants, guest);
        // A write-only directory is read-write for wasmtime-wasi; its descriptors are marked
        // at `get-directories` and the wrappers refuse every read (see the module doc).
        let perms = match scope.grants.dir_access(guest) {
            (true, false) => FsPerms::ReadOnly,
            _ => FsPerms::ReadWrite,
        };
        builder
            .preopened_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()), guest, perms)
            .map_err(Error::wasm("preopen a granted directory"))?;
    }
    Ok(())
}

/// Makes the mount point of every grant nested in `guest` inside its tree `dir`. Only what
/// the guest sees when it lists the outer tree depends on it, so a failure (the guest put
/// something else there, through a symlink) is logged and the instance starts anyway.
fn make_mount_points(dir: &OwnedFd, grants: &[FsGrant], guest: &str) {
    for inner in grants {
        if *inner.path == *guest || !covers_normalized(guest, &inner.path) {
            continue;
        }
        let rel: Vec<&str> = inner.path[guest.len()..]
            .split('/')
            .filter(|c| !c.is_empty())
            .collect();
        if let Err(e) = open_beneath(dir, &rel) {
            tracing::warn!(grant = guest, mount_point = &*inner.path, error = %e, "cannot make a mount point");
        }
    }
}

/// What a tree lets the guest do: every grant covering its preopen counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub read: bool,
    pub write: bool,
}

impl Access {
    pub const READ_ONLY: Access = Access {
        read: true,
        write: false,
    };
    pub const WRITE_ONLY: Access = Access {
        read: false,
        write: true,
    };
    pub const READ_WRITE: Access = Access {
        read: true,
        write: true,
    };
}

/// Whether a rename or link may carry a file from a tree with access `from` to one with
/// access `to`: only if `to` allows nothing `from` does not (a file from a write-only tree
/// never becomes readable, one from a read-only tree never writable).
pub fn transfer_allowed(from: Access, to: Access) -> bool {
    (from.read || !to.read) && (from.write || !to.write)
}

/// Whether a symlink with `target` stays inside the tree it is made in, for whoever
/// follows it (wasmtime-wasi never follows a link out of a preopen, but other programs on
/// the node might). A target is refused if it is absolute or has any `..`: how far a `..`
/// climbs cannot be judged from the text, because an earlier link (`l -> .`) makes
/// `l/..` climb one level more than it reads. Without `..` every link resolves below its
/// own directory.
pub fn link_target_stays(target: &str) -> bool {
    !target.is_empty() && !target.starts_with('/') && !target.split('/').any(|c| c == "..")
}

/// Whether `path`, relative to a descriptor, stays below it by its text: not absolute, no
/// `..` (a symlink inside is resolved by wasmtime-wasi, which never leaves the preopen).
fn path_stays(path: &str) -> bool {
    !path.starts_with('/') && !path.split('/').any(|c| c == "..")
}

/// A path-taking filesystem call, named as the audit record names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `open-at`: what the open flags ask for.
    Open {
        read: bool,
        write: bool,
    },
    /// `stat-at`, `metadata-hash-at`.
    Stat,
    Readlink,
    SetTimes,
    Mkdir,
    Rmdir,
    Unlink,
    Symlink,
    Rename,
    Link,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Open { .. } => "open",
            Op::Stat => "stat",
            Op::Readlink => "readlink",
            Op::SetTimes => "set-times",
            Op::Mkdir => "mkdir",
            Op::Rmdir => "rmdir",
            Op::Unlink => "unlink",
            Op::Symlink => "symlink",
            Op::Rename => "rename",
            Op::Link => "link",
        }
    }

    /// The access the call needs in the tree of its (first) descriptor.
    fn needs(self) -> Access {
        match self {
            Op::Open { read, write } => Access { read, write },
            Op::Stat | Op::Readlink => Access::READ_ONLY,
            _ => Access::WRITE_ONLY,
        }
    }

    /// Whether the call may name a mount point (it only reads the name's metadata).
    fn may_name_mount_point(self) -> bool {
        matches!(self, Op::Stat | Op::Readlink)
    }

    /// Whether the call moves or removes what it names (and so everything below it).
    fn moves_or_removes(self) -> bool {
        matches!(self, Op::Rmdir | Op::Unlink | Op::Rename)
    }
}

/// Where a descriptor is: the guest path of the preopen it came from (its tree) and its own
/// guest path, as the guest named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub tree: Arc<str>,
    pub dir: Arc<str>,
}

/// The places of an instance's descriptors, by resource handle. Every descriptor comes from
/// `get-directories` or `open-at`, which record it, so a live descriptor always has its
/// entry (a reused handle's entry is overwritten when the new descriptor is made).
#[derive(Debug, Default)]
pub struct Places(HashMap<u32, Place>);

/// One end of a call: the descriptor's access and place, and the path relative to it.
#[derive(Debug, Clone, Copy)]
pub struct End<'a> {
    pub access: Access,
    pub place: &'a Place,
    pub path: &'a str,
}

/// A path-taking call as [`decide`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub op: Op,
    pub at: End<'a>,
    /// The destination of a rename or link.
    pub to: Option<End<'a>>,
    /// The target of a symlink.
    pub link_target: Option<&'a str>,
}

/// Decides a path-taking call against the instance's filesystem grants; the error is the
/// reason, for the audit record.
pub fn decide(call: &Call<'_>, grants: &[FsGrant]) -> Result<(), String> {
    let ends = std::iter::once((call.at, "")).chain(call.to.map(|to| (to, "to")));
    for (end, side) in ends {
        let named = |reason: &str| {
            if side.is_empty() {
                reason.to_owned()
            } else {
                format!("{} {reason}", end.path)
            }
        };
        if !path_stays(end.path) {
            return Err(named("leaves the grant"));
        }
        let needs = if side.is_empty() {
            call.op.needs()
        } else {
            Access::WRITE_ONLY
        };
        if needs.read && !end.access.read {
            return Err("the grant is write-only".to_owned());
        }
        if needs.write && !end.access.write {
            return Err("the grant is read-only".to_owned());
        }
        check_mount_points(call.op, end, grants)?;
    }
    if let Some(to) = call.to
        && !transfer_allowed(call.at.access, to.access)
    {
        return Err("into a directory with more access".to_owned());
    }
    if let Some(target) = call.link_target
        && !link_target_stays(target)
    {
        return Err("target leaves the grant".to_owned());
    }
    Ok(())
}

/// Refuses a call that enters, or (except to read its metadata) names, the mount point of
/// a grant nested in the descriptor's tree, or that moves or removes a directory holding one.
fn check_mount_points(op: Op, end: End<'_>, grants: &[FsGrant]) -> Result<(), String> {
    let guest = join(&end.place.dir, end.path);
    let tree = &*end.place.tree;
    for inner in grants {
        let mount = &*inner.path;
        if mount == tree || !covers_normalized(tree, mount) {
            continue;
        }
        if guest == mount {
            if !op.may_name_mount_point() {
                return Err(format!("mount point of the grant {mount}"));
            }
        } else if covers_normalized(mount, &guest) {
            return Err(format!(
                "{} is inside the mount point of the grant {mount}",
                end.path
            ));
        } else if op.moves_or_removes() && covers_normalized(&guest, mount) {
            return Err(format!(
                "{} holds the mount point of the grant {mount}",
                end.path
            ));
        }
    }
    Ok(())
}

/// The guest path `path` (relative, without `..`) names below the guest directory `dir`.
fn join(dir: &str, path: &str) -> String {
    let mut joined = dir.trim_end_matches('/').to_owned();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        joined.push('/');
        joined.push_str(part);
    }
    if joined.is_empty() {
        joined.push('/');
    }
    joined
}

/// A descriptor's tree access: from its write-only mark and the permissions wasmtime-wasi
/// keeps on it.
fn access_of(d: &Descriptor) -> Access {
    let (perms, mode) = match d {
        Descriptor::File(f) => (f.perms, f.open_mode),
        Descriptor::Dir(d) => (d.perms, d.open_mode),
    };
    if mode.bits() & WRITE_ONLY != 0 {
        Access::WRITE_ONLY
    } else if perms == FsPerms::ReadOnly {
        Access::READ_ONLY
    } else {
        Access::READ_WRITE
    }
}

/// Whether a descriptor lives under a write-only grant.
fn is_write_only(d: &Descriptor) -> bool {
    access_of(d) == Access::WRITE_ONLY
}

/// Marks a descriptor as under a write-only grant; a directory also loses its `READ` mode.
fn mark_write_only(d: &mut Descriptor) {
    match d {
        Descriptor::File(f) => {
            f.open_mode = OpenMode::from_bits_retain(f.open_mode.bits() | WRITE_ONLY)
        }
        Descriptor::Dir(d) => {
            d.open_mode = OpenMode::from_bits_retain(OpenMode::WRITE.bits() | WRITE_ONLY)
        }
    }
}

/// Whether `fd` is a live descriptor under a write-only grant (an unknown handle is left to
/// the real implementation, which reports it).
fn write_only(store: &StoreContextMut<'_, HostState>, fd: &Resource<Descriptor>) -> bool {
    store.data().table.get(fd).is_ok_and(is_write_only)
}

/// The one way a filesystem refusal is recorded: audited as a denial of `what` (the call,
/// its path and the reason), answered `not-permitted`.
fn deny(state: &HostState, what: &str) -> ErrorCode {
    state.scope.denied(CapabilityKind::Filesystem, what);
    ErrorCode::NotPermitted
}

/// A path-taking call before it runs: `fd` and `path`, and for a rename or link the
/// destination, for a symlink its target.
struct Request<'a> {
    op: Op,
    fd: &'a Resource<Descriptor>,
    path: &'a str,
    to: Option<(&'a Resource<Descriptor>, &'a str)>,
    link_target: Option<&'a str>,
}

impl Request<'_> {
    /// How the audit record names the call.
    fn label(&self) -> String {
        format!("{} {}", self.op.as_str(), self.path)
    }
}

/// Decides `req` ([`decide`]) and records a refusal ([`deny`]). A handle that is not a
/// live descriptor is left to the real call, which reports it.
fn check_call(state: &HostState, req: &Request<'_>) -> Result<(), ErrorCode> {
    /// A descriptor's access and place; `None` if the handle is not a live descriptor.
    fn find<'s>(
        state: &'s HostState,
        fd: &Resource<Descriptor>,
    ) -> Option<(Access, Option<&'s Place>)> {
        let d = state.table.get(fd).ok()?;
        Some((access_of(d), state.fs_places.0.get(&fd.rep())))
    }
    let unknown = || {
        deny(
            state,
            &format!("{}: descriptor of unknown origin", req.label()),
        )
    };
    let Some((access, place)) = find(state, req.fd) else {
        return Ok(());
    };
    let place = place.ok_or_else(unknown)?;
    let to = match req.to {
        None => None,
        Some((fd, path)) => {
            let Some((access, place)) = find(state, fd) else {
                return Ok(());
            };
            Some(End {
                access,
                place: place.ok_or_else(unknown)?,
                path,
            })
        }
    };
    let call = Call {
        op: req.op,
        at: End {
            access,
            place,
            path: req.path,
        },
        to,
        link_target: req.link_target,
    };
    decide(&call, state.scope.grants.filesystem_grants())
        .map_err(|reason| deny(state, &format!("{}: {reason}", req.label())))
}

/// The WASI answer to a call that ran: a permission error from the host (an escape through
/// a symlink that wasmtime-wasi stopped, a host file's own mode) is audited as well.
fn finish<T>(
    state: &HostState,
    label: &str,
    result: Result<T, FsError>,
) -> wasmtime::Result<Result<T, ErrorCode>> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(e) => {
            let code = e.downcast()?;
            if matches!(
                code,
                ErrorCode::NotPermitted | ErrorCode::Access | ErrorCode::ReadOnly
            ) {
                let name = match code {
                    ErrorCode::NotPermitted => "not-permitted",
                    ErrorCode::Access => "access",
                    _ => "read-only",
                };
                deny(state, &format!("{label}: refused by the host ({name})"));
            }
            Ok(Err(code))
        }
    }
}

/// Shadows a path-taking descriptor method: builds its [`Request`], checks it
/// ([`check_call`]), runs the real implementation and audits its refusals ([`finish`]).
macro_rules! path_call {
    ($types:expr, $method:literal, |$view:ident, $fd:ident $(, $arg:ident : $ty:ty)*| -> $ret:ty,
     $request:expr, $call:expr) => {
        $types.func_wrap_async(
            concat!("[method]descriptor.", $method),
            |mut store: StoreContextMut<'_, HostState>,
             ($fd, $($arg,)*): (Resource<Descriptor>, $($ty,)*)| {
                Box::new(async move {
                    let label = {
                        let request: Request<'_> = $request;
                        if let Err(code) = check_call(store.data(), &request) {
                            return Ok((Err::<$ret, _>(code),));
                        }
                        request.label()
                    };
                    let result = {
                        let mut $view = store.data_mut().filesystem();
                        $call.await
                    };
                    Ok((finish(store.data(), &label, result)?,))
                })
            },
        )
    };
}

/// Shadows a descriptor method that reads (contents, names or metadata) without a path, so
/// that it is refused and audited on a descriptor under a write-only grant.
macro_rules! refuse_on_write_only {
    ($types:expr, $method:literal, $what:literal,
     |$view:ident, $fd:ident $(, $arg:ident : $ty:ty)*| -> $ret:ty $call:block) => {
        $types.func_wrap_async(
            concat!("[method]descriptor.", $method),
            |mut store: StoreContextMut<'_, HostState>,
             ($fd, $($arg,)*): (Resource<Descriptor>, $($ty,)*)| {
                Box::new(async move {
                    if write_only(&store, &$fd) {
                        let code = deny(store.data(), concat!($what, ": the grant is write-only"));
                        return Ok((Err::<$ret, _>(code),));
                    }
                    let result = {
                        let mut $view = store.data_mut().filesystem();
                        $call
                    };
                    Ok((finish(store.data(), $what, result)?,))
                })
            },
        )
    };
}

/// Replaces `wasi:filesystem` functions with checked versions (see the module doc):
/// `get-directories` records each preopen's place and marks write-only ones; every
/// path-taking method goes through [`path_call!`]; the methods that read without a path
/// refuse a write-only descriptor.
pub fn shadow_open_at(linker: &mut Linker<HostState>) -> Result<(), Error> {
    linker.allow_shadowing(true);
    let result = shadow_filesystem(linker);
    linker.allow_shadowing(false);
    result.map_err(Error::wasm("wrap wasi:filesystem"))
}

fn shadow_filesystem(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.instance(FILESYSTEM_PREOPENS)?.func_wrap(
        "get-directories",
        |mut store: StoreContextMut<'_, HostState>, (): ()| {
            let scope = store.data().scope.clone();
            let state = store.data_mut();
            let dirs = {
                let mut view = state.filesystem();
                preopens::Host::get_directories(&mut view)?
            };
            for (fd, name) in &dirs {
                if scope.grants.dir_access(name) == (false, true) {
                    mark_write_only(state.table.get_mut(fd)?);
                }
                let name: Arc<str> = Arc::from(name.as_str());
                state.fs_places.0.insert(
                    fd.rep(),
                    Place {
                        tree: name.clone(),
                        dir: name,
                    },
                );
            }
            Ok((dirs,))
        },
    )?;

    let mut types = linker.instance(FILESYSTEM_TYPES)?;
    types.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store: StoreContextMut<'_, HostState>,
         (fd, path_flags, path, open_flags, flags): (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )| {
            Box::new(async move {
                // Without `write` wasmtime-wasi opens for reading; a directory is opened to
                // be listed.
                let write = flags.contains(DescriptorFlags::WRITE)
                    || open_flags.intersects(OpenFlags::CREATE | OpenFlags::TRUNCATE);
                let read = flags.contains(DescriptorFlags::READ)
                    || !flags.contains(DescriptorFlags::WRITE)
                    || open_flags.contains(OpenFlags::DIRECTORY);
                let request = Request {
                    op: Op::Open { read, write },
                    fd: &fd,
                    path: &path,
                    to: None,
                    link_target: None,
                };
                if let Err(code) = check_call(store.data(), &request) {
                    return Ok((Err(code),));
                }
                // Each open file holds a host descriptor: bounded per instance.
                if !resources::may_open(resources::open_files(&mut store.data_mut().table)) {
                    store.data().scope.quota_exceeded(resources::QUOTA);
                    return Ok((Err(ErrorCode::InsufficientMemory),));
                }
                let label = request.label();
                let parent = store.data().fs_places.0.get(&fd.rep()).cloned();
                let under_write_only = write_only(&store, &fd);
                let result = {
                    let mut view = store.data_mut().filesystem();
                    HostDescriptor::open_at(
                        &mut view,
                        fd,
                        path_flags,
                        path.clone(),
                        open_flags,
                        flags,
                    )
                    .await
                };
                let opened = finish(store.data(), &label, result)?;
                if let Ok(new) = &opened {
                    let state = store.data_mut();
                    if under_write_only {
                        mark_write_only(state.table.get_mut(new)?);
                    }
                    if let Some(parent) = parent {
                        state.fs_places.0.insert(
                            new.rep(),
                            Place {
                                dir: Arc::from(join(&parent.dir, &path)),
                                tree: parent.tree,
                            },
                        );
                    }
                    state.scope.granted(CapabilityKind::Filesystem);
                }
                Ok((opened,))
            })
        },
    )?;

    path_call!(types, "stat-at", |view, fd, flags: PathFlags, path: String| -> DescriptorStat,
        Request { op: Op::Stat, fd: &fd, path: &path, to: None, link_target: None },
        HostDescriptor::stat_at(&mut view, fd, flags, path.clone()))?;
    path_call!(types, "metadata-hash-at",
        |view, fd, flags: PathFlags, path: String| -> MetadataHashValue,
        Request { op: Op::Stat, fd: &fd, path: &path, to: None, link_target: None },
        HostDescriptor::metadata_hash_at(&mut view, fd, flags, path.clone()))?;
    path_call!(types, "readlink-at", |view, fd, path: String| -> String,
        Request { op: Op::Readlink, fd: &fd, path: &path, to: None, link_target: None },
        HostDescriptor::readlink_at(&mut view, fd, path.clone()))?;
    path_call!(types, "set-times-at",
        |view, fd, flags: PathFlags, path: String, atim: NewTimestamp, mtim: NewTimestamp| -> (),
        Request { op: Op::SetTimes, fd: &fd, path: &path, to: None, link_target: None },
        HostDescriptor::set_times_at(&mut view, fd, flags, path.clone(), atim, mtim))?;
    path_call!(types, "create-directory-at", |view, fd, path: String| -> (),
        Request { op: Op::Mkdir, fd: &fd, path: &path, to: None, link_target: None },
        HostDescriptor::create_directory_at(&mut view, fd, path.clone()))?;
    path_call!(types, "remove-directory-at", |view, fd, path: String| -> (),
        Request { op: Op::Rmdir, fd: &fd, path: &path, to: None, link_target: None },
        HostDescriptor::remove_directory_at(&mut view, fd, path.clone()))?;
    path_call!(types, "unlink-file-at", |view, fd, path: String| -> (),
        Request { op: Op::Unlink, fd: &fd, path: &path, to: None, link_target: None },
        HostDescriptor::unlink_file_at(&mut view, fd, path.clone()))?;
    path_call!(types, "symlink-at", |view, fd, target: String, path: String| -> (),
        Request { op: Op::Symlink, fd: &fd, path: &path, to: None, link_target: Some(&target) },
        HostDescriptor::symlink_at(&mut view, fd, target.clone(), path.clone()))?;
    path_call!(types, "rename-at",
        |view, fd, old: String, new_fd: Resource<Descriptor>, new: String| -> (),
        Request { op: Op::Rename, fd: &fd, path: &old, to: Some((&new_fd, &new)), link_target: None },
        HostDescriptor::rename_at(&mut view, fd, old.clone(), new_fd, new.clone()))?;
    path_call!(types, "link-at",
        |view, fd, flags: PathFlags, old: String, new_fd: Resource<Descriptor>, new: String| -> (),
        Request { op: Op::Link, fd: &fd, path: &old, to: Some((&new_fd, &new)), link_target: None },
        HostDescriptor::link_at(&mut view, fd, flags, old.clone(), new_fd, new.clone()))?;

    refuse_on_write_only!(types, "read", "read", |view,
                                                  fd,
                                                  len: u64,
                                                  offset: u64|
     -> (Vec<u8>, bool) {
        HostDescriptor::read(&mut view, fd, len, offset).await
    })?;
    refuse_on_write_only!(types, "read-via-stream", "read", |view,
                                                             fd,
                                                             offset: u64|
     -> Resource<
        DynInputStream,
    > {
        HostDescriptor::read_via_stream(&mut view, fd, offset)
    })?;
    refuse_on_write_only!(types, "read-directory", "list", |view,
                                                            fd|
     -> Resource<
        DirectoryEntryStream,
    > {
        HostDescriptor::read_directory(&mut view, fd).await
    })?;
    refuse_on_write_only!(types, "stat", "stat", |view, fd| -> DescriptorStat {
        HostDescriptor::stat(&mut view, fd).await
    })?;
    refuse_on_write_only!(types, "metadata-hash", "stat", |view,
                                                           fd|
     -> MetadataHashValue {
        HostDescriptor::metadata_hash(&mut view, fd).await
    })?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use wasmtime_wasi::FsPerms;
    use wasmtime_wasi::filesystem::{Dir, File};

    use super::*;

    const R: Access = Access::READ_ONLY;
    const W: Access = Access::WRITE_ONLY;
    const RW: Access = Access::READ_WRITE;

    #[test]
    fn transfer_allowed_spec() {
        #[rustfmt::skip]
        let cases: &[(&str, Access, Access, bool)] = &[
            ("within read-write trees", RW, RW, true),
            ("read-write into write-only loses read: fine", RW, W, true),
            ("read-write into read-only loses write: fine", RW, R, true),
            ("write-only into write-only", W, W, true),
            ("write-only into read-write would make it readable", W, RW, false),
            ("write-only into read-only would make it readable", W, R, false),
            ("read-only into read-only", R, R, true),
            ("read-only into read-write would make it writable", R, RW, false),
            ("read-only into write-only would make it writable", R, W, false),
        ];
        for (rule, from, to, want) in cases {
            assert_eq!(transfer_allowed(*from, *to), *want, "{rule}");
        }
    }

    #[test]
    fn link_target_stays_spec() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, bool)] = &[
            ("a sibling", "f.txt", true),
            ("down into a directory", "sub/f.txt", true),
            ("its own directory", ".", true),
            ("an absolute target", "/etc/passwd", false),
            ("the host root", "/", false),
            ("one level up", "../f.txt", false),
            ("up and down again, judged by text alone", "sub/../f.txt", false),
            ("a bare ..", "..", false),
            ("empty", "", false),
        ];
        for (rule, target, want) in cases {
            assert_eq!(link_target_stays(target), *want, "{rule}");
        }
    }

    fn grant(path: &str, read: bool, write: bool) -> FsGrant {
        FsGrant {
            path: path.into(),
            read,
            write,
        }
    }

    fn place(tree: &str, dir: &str) -> Place {
        Place {
            tree: tree.into(),
            dir: dir.into(),
        }
    }

    #[test]
    fn decide_spec() {
        let grants = [
            grant("/data", true, true),
            grant("/data/inbox", true, true),
            grant("/w", false, true),
            grant("/w/r", true, true),
            grant("/ro", true, false),
        ];
        let data = place("/data", "/data");
        let data_sub = place("/data", "/data/sub");
        let w = place("/w", "/w");
        let r = place("/w/r", "/w/r");
        let ro = place("/ro", "/ro");
        let at = |access, place, path| End {
            access,
            place,
            path,
        };
        let one = |op, end| Call {
            op,
            at: end,
            to: None,
            link_target: None,
        };
        let open_read = Op::Open {
            read: true,
            write: false,
        };
        let open_write = Op::Open {
            read: false,
            write: true,
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, Call<'_>, Result<(), &str>)> = vec![
            ("a plain read", one(open_read, at(RW, &data, "f")), Ok(())),
            ("`..` leaves the grant", one(Op::Stat, at(RW, &data, "../f")), Err("leaves the grant")),
            ("`..` anywhere in the path", one(Op::Stat, at(RW, &data, "a/../../f")), Err("leaves the grant")),
            ("an absolute path", one(open_read, at(RW, &data, "/etc/passwd")), Err("leaves the grant")),
            ("stat in a write-only tree", one(Op::Stat, at(W, &w, "f")), Err("the grant is write-only")),
            ("readlink in a write-only tree", one(Op::Readlink, at(W, &w, "l")), Err("the grant is write-only")),
            ("open for reading in a write-only tree", one(open_read, at(W, &w, "f")), Err("the grant is write-only")),
            ("open for writing in a write-only tree", one(open_write, at(W, &w, "f")), Ok(())),
            ("mkdir in a write-only tree", one(Op::Mkdir, at(W, &w, "d")), Ok(())),
            ("mkdir in a read-only tree", one(Op::Mkdir, at(R, &ro, "d")), Err("the grant is read-only")),
            ("set-times in a read-only tree", one(Op::SetTimes, at(R, &ro, "f")), Err("the grant is read-only")),
            ("rmdir of a mount point", one(Op::Rmdir, at(RW, &data, "inbox")), Err("mount point of the grant /data/inbox")),
            ("rmdir of a mount point named with `.`", one(Op::Rmdir, at(RW, &data, "./inbox/")), Err("mount point of the grant /data/inbox")),
            ("unlink of a mount point", one(Op::Unlink, at(RW, &data, "inbox")), Err("mount point of the grant /data/inbox")),
            ("mkdir over a mount point", one(Op::Mkdir, at(RW, &data, "inbox")), Err("mount point of the grant /data/inbox")),
            ("open of a mount point", one(open_read, at(RW, &data, "inbox")), Err("mount point of the grant /data/inbox")),
            ("stat of a mount point (listing a directory stats it)", one(Op::Stat, at(RW, &data, "inbox")), Ok(())),
            ("entering a mount point", one(open_read, at(RW, &data, "inbox/f")), Err("inbox/f is inside the mount point of the grant /data/inbox")),
            ("a lookalike name is no mount point", one(Op::Rmdir, at(RW, &data, "inbox2")), Ok(())),
            ("a subdirectory descriptor", one(Op::Rmdir, at(RW, &data_sub, "inbox")), Ok(())),
            ("the inner tree's own root is its own", one(Op::Mkdir, at(RW, &r, "x")), Ok(())),
            ("symlink out by `..`", Call { link_target: Some("../x"), ..one(Op::Symlink, at(RW, &data, "l")) }, Err("target leaves the grant")),
            ("symlink to an absolute path", Call { link_target: Some("/"), ..one(Op::Symlink, at(RW, &data, "l")) }, Err("target leaves the grant")),
            ("symlink within", Call { link_target: Some("sub/f"), ..one(Op::Symlink, at(RW, &data, "l")) }, Ok(())),
            ("rename write-only into readable, two descriptors", Call { to: Some(at(RW, &r, "x")), ..one(Op::Rename, at(W, &w, "f")) }, Err("into a directory with more access")),
            ("rename write-only into readable, one descriptor", Call { to: Some(at(W, &w, "r/x")), ..one(Op::Rename, at(W, &w, "f")) }, Err("r/x is inside the mount point of the grant /w/r")),
            ("link write-only into readable", Call { to: Some(at(RW, &r, "x")), ..one(Op::Link, at(W, &w, "f")) }, Err("into a directory with more access")),
            ("rename readable into write-only", Call { to: Some(at(W, &w, "x")), ..one(Op::Rename, at(RW, &r, "f")) }, Ok(())),
            ("rename onto a mount point", Call { to: Some(at(RW, &data, "inbox")), ..one(Op::Rename, at(RW, &data, "d")) }, Err("mount point of the grant /data/inbox")),
            ("rename a mount point away", Call { to: Some(at(RW, &data, "x")), ..one(Op::Rename, at(RW, &data, "inbox")) }, Err("mount point of the grant /data/inbox")),
            ("rename with `..` at the destination", Call { to: Some(at(RW, &data, "../x")), ..one(Op::Rename, at(RW, &data, "f")) }, Err("../x leaves the grant")),
            ("rename into a read-only tree", Call { to: Some(at(R, &ro, "x")), ..one(Op::Rename, at(RW, &data, "f")) }, Err("the grant is read-only")),
        ];
        for (rule, call, want) in &cases {
            assert_eq!(decide(call, &grants), want.map_err(str::to_owned), "{rule}");
        }
        // A directory holding a mount point cannot be moved or removed either.
        let nested = [grant("/a", true, true), grant("/a/b/c", true, true)];
        let a = place("/a", "/a");
        assert_eq!(
            decide(&one(Op::Rename, at(RW, &a, "b")), &nested),
            Err("b holds the mount point of the grant /a/b/c".to_owned())
        );
        assert_eq!(decide(&one(Op::Stat, at(RW, &a, "b")), &nested), Ok(()));
    }

    #[test]
    fn grant_dir_name_spec() {
        let long = format!("/{}", "x/".repeat(150));
        let long = long.trim_end_matches('/');
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str)] = &[
            ("a top-level grant keeps its old name", "/data", "data"),
            ("a nested grant is one name beside it", "/data/inbox", "data%2Finbox"),
            ("the root grant", "/", "%2F"),
            ("a percent sign is escaped", "/a%2Fb", "a%252Fb"),
        ];
        for (rule, guest, want) in cases {
            assert_eq!(grant_dir_name(guest), *want, "{rule}");
        }
        let hashed = grant_dir_name(long);
        assert!(hashed.len() <= 255 && hashed.contains("%#"), "{hashed}");
        // Distinct, and never nested: each is a single file name.
        let paths = ["/", "/a", "/a/b", "/a%2Fb", "/a%b", "/a/b/c", "/ab", long];
        let names: std::collections::HashSet<String> =
            paths.iter().map(|p| grant_dir_name(p)).collect();
        assert_eq!(names.len(), paths.len());
        assert!(
            names
                .iter()
                .all(|n| !n.contains('/') && n != "." && n != "..")
        );
    }

    #[test]
    fn open_beneath_creates_directories_and_never_follows_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::File::open(tmp.path()).unwrap();
        open_beneath(&root, &["a", "b"]).unwrap();
        assert!(tmp.path().join("a/b").is_dir());
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("a/inner")).unwrap();
        for path in [&["link"][..], &["a", "inner"], &["a", "inner", "x"]] {
            let err = open_beneath(&root, path).unwrap_err();
            assert!(err.to_string().contains("symlink"), "{path:?}: {err}");
        }
        for path in [&[".."][..], &["a/b"], &[""]] {
            assert!(open_beneath(&root, path).is_err(), "{path:?}");
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    /// The write-only mark rides on a bit of wasmtime-wasi's `OpenMode` that the crate does
    /// not name. This fails the day an upgrade gives that bit a meaning, drops unknown bits,
    /// or changes what it does with the mode; then re-check every wrapper in this module
    /// against the new wasmtime-wasi before changing the mark.
    #[test]
    fn write_only_mark_is_a_spare_open_mode_bit_that_survives() {
        // wasmtime-wasi 48 names exactly READ and WRITE, in the low bits of a usize.
        assert_eq!(
            OpenMode::all().bits(),
            0b11,
            "wasmtime-wasi's OpenMode flags changed: re-check the WRITE_ONLY mark"
        );
        assert_eq!(
            OpenMode::all().bits() & WRITE_ONLY,
            0,
            "mark collides with a flag"
        );
        assert_eq!(size_of::<OpenMode>(), size_of::<usize>());

        // What wasmtime-wasi does with the mode (`contains` its own flags) sees through it.
        let marked = OpenMode::from_bits_retain(OpenMode::WRITE.bits() | WRITE_ONLY);
        assert!(marked.contains(OpenMode::WRITE));
        assert!(!marked.contains(OpenMode::READ));
        assert_eq!(
            marked.bits() & WRITE_ONLY,
            WRITE_ONLY,
            "bitflags kept the unknown bit"
        );
        let copied = marked;
        assert_eq!(copied.bits(), marked.bits());

        // Real descriptors, as wasmtime-wasi builds them: marking keeps write, drops read on
        // a directory, and the mark is read back.
        let tmp = tempfile::tempdir().unwrap();
        let rw = OpenMode::READ | OpenMode::WRITE;
        let dir = std::fs::File::open(tmp.path()).unwrap();
        let mut d = Descriptor::Dir(Dir::new(dir, FsPerms::ReadWrite, rw, false));
        assert!(!is_write_only(&d));
        assert_eq!(access_of(&d), RW);
        mark_write_only(&mut d);
        assert!(is_write_only(&d));
        assert_eq!(access_of(&d), W);
        let Descriptor::Dir(inner) = &d else {
            panic!("still a directory")
        };
        assert!(inner.open_mode.contains(OpenMode::WRITE));
        assert!(!inner.open_mode.contains(OpenMode::READ));

        let path = tmp.path().join("f");
        let file = std::fs::File::create(&path).unwrap();
        let mut f = Descriptor::File(File::new(file, FsPerms::ReadWrite, OpenMode::WRITE, false));
        assert!(!is_write_only(&f));
        mark_write_only(&mut f);
        assert!(is_write_only(&f));
        let Descriptor::File(inner) = &f else {
            panic!("still a file")
        };
        assert!(inner.open_mode.contains(OpenMode::WRITE));
        let ro = std::fs::File::open(&path).unwrap();
        let f = Descriptor::File(File::new(ro, FsPerms::ReadOnly, OpenMode::READ, false));
        assert_eq!(access_of(&f), R);
    }
}
