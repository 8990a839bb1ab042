//! The JSON-lines audit log on the node and its size-based rotation: `audit.jsonl` becomes
//! `audit.jsonl.1`, older files shift up to `.N-1` and the oldest is deleted. Rotation
//! happens between whole lines, so a record is never split across files; it runs on the
//! writer thread, never on the hot path.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::event::AuditEvent;

/// Size-based rotation of the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// A file is rotated before a line would take it past this many bytes (a single line
    /// longer than this gets a file of its own).
    pub max_bytes: u64,
    /// Files kept, the live one included (at least 1): `audit.jsonl` plus
    /// `audit.jsonl.1` … `audit.jsonl.{max_files - 1}`. The oldest is deleted on rotation.
    pub max_files: usize,
}

impl Default for Rotation {
    /// 64 MiB × 5 files.
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_files: 5,
        }
    }
}

/// The audit log file and its rotation; owned by the writer thread.
pub(super) struct LogFile {
    path: PathBuf,
    /// `None` after a failed reopen; retried on the next line.
    out: Option<BufWriter<File>>,
    /// Bytes in the live file, including what is still buffered.
    size: u64,
    rotation: Option<Rotation>,
}

impl LogFile {
    pub(super) fn open(path: PathBuf, rotation: Option<Rotation>) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path,
            out: Some(BufWriter::new(file)),
            size,
            rotation,
        })
    }

    /// Writes one whole line (with its newline), rotating first if it would overflow the
    /// live file.
    pub(super) fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let len = line.len() as u64;
        if let Some(r) = self.rotation
            && self.size > 0
            && self.size.saturating_add(len) > r.max_bytes
        {
            self.rotate(r)?;
        }
        if self.out.is_none() {
            *self = Self::open(std::mem::take(&mut self.path), self.rotation)?;
        }
        if let Some(out) = &mut self.out {
            out.write_all(line)?;
            self.size += len;
        }
        Ok(())
    }

    /// `path` → `path.1`, `path.i` → `path.i+1`, dropping what would pass `max_files - 1`.
    fn rotate(&mut self, r: Rotation) -> std::io::Result<()> {
        if let Some(mut out) = self.out.take() {
            out.flush()?;
        }
        let kept = r.max_files.max(1) - 1;
        if kept == 0 {
            // Only the live file is kept: start it over.
            std::fs::remove_file(&self.path).or_else(not_found_ok)?;
        } else {
            std::fs::remove_file(rotated(&self.path, kept)).or_else(not_found_ok)?;
            for i in (1..kept).rev() {
                std::fs::rename(rotated(&self.path, i), rotated(&self.path, i + 1))
                    .or_else(not_found_ok)?;
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        *self = Self::open(std::mem::take(&mut self.path), Some(r))?;
        Ok(())
    }

    pub(super) fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.out {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

/// The name of the `n`th rotated file: `audit.jsonl.n`.
pub fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn not_found_ok(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// One JSON line: timestamp, node, component, instance, digest, kind, detail.
pub(super) fn log_line(node: &str, e: &AuditEvent) -> serde_json::Value {
    let timestamp = jiff::Timestamp::try_from(e.at)
        .map(|t| t.to_string())
        .unwrap_or_default();
    serde_json::json!({
        "timestamp": timestamp,
        "node": node,
        "component": e.instance.component.key,
        "instance": e.instance.instance,
        "digest": e.instance.component.digest,
        "kind": e.kind.reason().as_str(),
        "detail": e.kind.detail(),
    })
}
