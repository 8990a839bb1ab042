//! The filesystem: wasmtime-wasi's `wasi:filesystem`, shadowed by checked wrappers.
//!
//! - preopens: one per granted directory, backed by `<fs_root>/<guest path>`; the guest
//!   cannot name anything else. `open-at` is wrapped so a `..` or absolute path is refused
//!   outright and every refusal is audited.
//!   A path outside every preopen (`/etc/passwd` with only `/data` granted, or a relative
//!   `../x` from the root working directory) never reaches the host: wasi-libc resolves
//!   paths against the preopen list inside the guest and fails with `ENOENT` without a host
//!   call, so there is nothing to audit (and no audit event is invented for it). That is
//!   the enforcement itself: a guest can only name descriptors it was handed.
//! - write-only directories: mounted read-write for wasmtime-wasi, with every descriptor
//!   under them marked ([`WRITE_ONLY`]) and the wrappers below refusing anything that reads:
//!   opening for reading, opening a directory, `read`, `read-via-stream`, and also listing
//!   (`read-directory`), `stat`/`stat-at`, `metadata-hash(-at)` and `readlink-at`, because
//!   names, sizes and times are contents too. Moving or linking a file between a
//!   write-only tree and any other (`rename-at`, `link-at`) is refused as well, or a file
//!   could be carried into a readable directory. Creating, writing, appending, truncating,
//!   creating directories and deleting stay allowed: that is what a write grant means.
//!   As in a POSIX `-wx` directory, a guest can still learn whether a name exists from a
//!   failing exclusive create; it cannot list, stat or read anything. A write-only grant
//!   nested in a readable one stays readable (the outer grant covers it).
//!   Every refusal is audited and answered with `not-permitted`, never a trap.

use std::path::{Path, PathBuf};

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::OpenMode;
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::DynInputStream;
use wasmtime_wasi::p2::bindings::filesystem::preopens;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    DescriptorFlags, DescriptorStat, DirectoryEntryStream, ErrorCode, HostDescriptor,
    MetadataHashValue, OpenFlags, PathFlags,
};

use super::HostState;
use super::resources;
use crate::error::Error;
use crate::grant::CapabilityKind;

/// The WIT name of the filesystem interfaces wasmtime-wasi 48 implements.
const FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";
const FILESYSTEM_PREOPENS: &str = "wasi:filesystem/preopens@0.2.12";

/// Marks a descriptor under a write-only grant, in the `open_mode` bits wasmtime-wasi keeps
/// on every descriptor. wasmtime-wasi only tests its own `READ`/`WRITE` bits with
/// `contains`, and bitflags keeps unknown bits, so the mark rides along untouched.
pub const WRITE_ONLY: usize = 1 << (usize::BITS - 1);

/// Host directory backing a granted guest directory.
pub fn host_dir(component_root: &Path, guest_path: &str) -> PathBuf {
    // Guest paths come from the parsed grant: absolute, normalized, no `..`.
    component_root.join(guest_path.trim_start_matches('/'))
}

/// Whether a descriptor lives under a write-only grant.
fn is_write_only(d: &Descriptor) -> bool {
    let mode = match d {
        Descriptor::File(f) => f.open_mode,
        Descriptor::Dir(d) => d.open_mode,
    };
    mode.bits() & WRITE_ONLY != 0
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

/// Audits a refused filesystem operation and returns the WASI answer to it.
fn refuse(store: &StoreContextMut<'_, HostState>, what: &str) -> ErrorCode {
    store.data().scope.denied(CapabilityKind::Filesystem, what);
    ErrorCode::NotPermitted
}

/// Shadows a descriptor method that reads (contents, names or metadata) so that it is
/// refused and audited on a descriptor under a write-only grant, and otherwise runs the
/// real implementation.
macro_rules! refuse_on_write_only {
    ($types:expr, $method:literal, $what:literal,
     |$view:ident, $fd:ident $(, $arg:ident : $ty:ty)*| -> $ret:ty $call:block) => {
        $types.func_wrap_async(
            concat!("[method]descriptor.", $method),
            |mut store: StoreContextMut<'_, HostState>,
             ($fd, $($arg,)*): (Resource<Descriptor>, $($ty,)*)| {
                Box::new(async move {
                    if write_only(&store, &$fd) {
                        let code = refuse(&store, concat!($what, " under a write-only grant"));
                        return Ok((Err::<$ret, _>(code),));
                    }
                    let mut $view = store.data_mut().filesystem();
                    match $call {
                        Ok(value) => Ok((Ok::<$ret, ErrorCode>(value),)),
                        Err(e) => Ok((Err(e.downcast()?),)),
                    }
                })
            },
        )
    };
}

/// Replaces `wasi:filesystem` functions with checked versions:
///
/// - `open-at` refuses `..` components and absolute paths before touching the disk, and
///   audits every refusal (including escapes through symlinks, which the preopen's
///   capability-based lookup stops); under a write-only grant it only opens files for
///   writing (no `read` flag, not a directory).
/// - `get-directories` marks the preopens of write-only grants, and every read-like
///   method refuses a marked descriptor (see the module doc).
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
            let ctx = store.data().scope.clone();
            let mut view = store.data_mut().filesystem();
            let dirs = preopens::Host::get_directories(&mut view)?;
            for (fd, name) in &dirs {
                if ctx.grants.dir_access(name) == (false, true) {
                    mark_write_only(view.table.get_mut(fd)?);
                }
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
                let ctx = store.data().scope.clone();
                if path.starts_with('/') || path.split('/').any(|c| c == "..") {
                    ctx.denied(CapabilityKind::Filesystem, &path);
                    return Ok((Err(ErrorCode::NotPermitted),));
                }
                let under_write_only = write_only(&store, &fd);
                if under_write_only
                    && (flags.contains(DescriptorFlags::READ)
                        || !flags.contains(DescriptorFlags::WRITE)
                        || open_flags.contains(OpenFlags::DIRECTORY))
                {
                    // Without `write` wasmtime-wasi opens for reading.
                    ctx.denied(
                        CapabilityKind::Filesystem,
                        &format!("open {path} for reading under a write-only grant"),
                    );
                    return Ok((Err(ErrorCode::NotPermitted),));
                }
                // Each open file holds a host descriptor: bounded per instance.
                if !resources::may_open(resources::open_files(&mut store.data_mut().table)) {
                    ctx.quota_exceeded(resources::QUOTA);
                    return Ok((Err(ErrorCode::InsufficientMemory),));
                }
                let mut view = store.data_mut().filesystem();
                let opened = HostDescriptor::open_at(
                    &mut view,
                    fd,
                    path_flags,
                    path.clone(),
                    open_flags,
                    flags,
                )
                .await;
                match opened {
                    Ok(new) => {
                        if under_write_only {
                            mark_write_only(view.table.get_mut(&new)?);
                        }
                        ctx.granted(CapabilityKind::Filesystem);
                        Ok((Ok(new),))
                    }
                    Err(e) => {
                        let code = e.downcast()?;
                        if matches!(
                            code,
                            ErrorCode::NotPermitted | ErrorCode::Access | ErrorCode::ReadOnly
                        ) {
                            ctx.denied(CapabilityKind::Filesystem, &path);
                        }
                        Ok((Err(code),))
                    }
                }
            })
        },
    )?;

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
    refuse_on_write_only!(types, "stat-at", "stat", |view,
                                                     fd,
                                                     flags: PathFlags,
                                                     path: String|
     -> DescriptorStat {
        HostDescriptor::stat_at(&mut view, fd, flags, path).await
    })?;
    refuse_on_write_only!(types, "metadata-hash", "stat", |view,
                                                           fd|
     -> MetadataHashValue {
        HostDescriptor::metadata_hash(&mut view, fd).await
    })?;
    refuse_on_write_only!(
        types,
        "metadata-hash-at",
        "stat",
        |view, fd, flags: PathFlags, path: String| -> MetadataHashValue {
            HostDescriptor::metadata_hash_at(&mut view, fd, flags, path).await
        }
    )?;
    refuse_on_write_only!(types, "readlink-at", "readlink", |view,
                                                             fd,
                                                             path: String|
     -> String {
        HostDescriptor::readlink_at(&mut view, fd, path).await
    })?;

    // Moving or linking across the boundary of a write-only tree would carry a file into a
    // readable directory (or out of sight of the mark).
    types.func_wrap_async(
        "[method]descriptor.rename-at",
        |mut store: StoreContextMut<'_, HostState>,
         (fd, old, new_fd, new): (Resource<Descriptor>, String, Resource<Descriptor>, String)| {
            Box::new(async move {
                if write_only(&store, &fd) != write_only(&store, &new_fd) {
                    let code = refuse(&store, &format!("rename {old} across a write-only grant"));
                    return Ok((Err(code),));
                }
                let mut view = store.data_mut().filesystem();
                match HostDescriptor::rename_at(&mut view, fd, old, new_fd, new).await {
                    Ok(()) => Ok((Ok(()),)),
                    Err(e) => Ok((Err(e.downcast()?),)),
                }
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.link-at",
        |mut store: StoreContextMut<'_, HostState>,
         (fd, flags, old, new_fd, new): (
            Resource<Descriptor>,
            PathFlags,
            String,
            Resource<Descriptor>,
            String,
        )| {
            Box::new(async move {
                if write_only(&store, &fd) != write_only(&store, &new_fd) {
                    let code = refuse(&store, &format!("link {old} across a write-only grant"));
                    return Ok((Err(code),));
                }
                let mut view = store.data_mut().filesystem();
                match HostDescriptor::link_at(&mut view, fd, flags, old, new_fd, new).await {
                    Ok(()) => Ok((Ok(()),)),
                    Err(e) => Ok((Err(e.downcast()?),)),
                }
            })
        },
    )?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use wasmtime_wasi::FsPerms;
    use wasmtime_wasi::filesystem::{Dir, File};

    use super::*;

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
        mark_write_only(&mut d);
        assert!(is_write_only(&d));
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
    }
}
