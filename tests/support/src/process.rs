//! Child processes that never outlive the test process.
//!
//! The workspace forbids `unsafe`, so `prctl(PR_SET_PDEATHSIG)` in `pre_exec` is out. Instead:
//! - every child runs in its own process group (`process_group(0)`, a safe std API), so a
//!   stop signal reaches anything it forks, and a terminal's Ctrl-C (sent to the foreground
//!   group) does not kill it behind our back;
//! - [`Supervised::stop`] (also run on `Drop`) sends SIGTERM to the group, waits, then SIGKILL;
//! - each child gets a watchdog: a tiny `bash` in its own group whose stdin is a pipe held
//!   only by this process (std opens pipes close-on-exec, so no other child inherits it).
//!   When this process ends in any way — normal exit with statics never dropped, a panic with
//!   `panic = abort`, SIGKILL — the kernel closes the pipe, the watchdog's `read` returns and
//!   it kills the group. That covers the process-wide shared control plane, which lives in a
//!   static and is therefore never dropped.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process_group};

use crate::Error;

/// Kills process group `$1` once stdin reaches end of file (the owner is gone).
const GROUP_WATCHDOG: &str = r#"read -r _ || true
kill -TERM -- "-$1" 2>/dev/null || exit 0
for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
    kill -0 -- "-$1" 2>/dev/null || exit 0
    sleep 0.25
done
kill -KILL -- "-$1" 2>/dev/null || true"#;

/// Removes directory `$1` once stdin reaches end of file, after the group watchdogs had time
/// to stop the processes writing into it.
const DIR_WATCHDOG: &str = r#"read -r _ || true
sleep 6
rm -rf -- "$1""#;

/// How long a stopped process gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// A child process in its own process group, with its output in a log file, stopped on drop.
#[derive(Debug)]
pub struct Supervised {
    name: String,
    child: Child,
    watchdog: Option<Child>,
    log: PathBuf,
}

impl Supervised {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self, Error> {
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent)
                .map_err(Error::io(format!("creating {}", parent.display())))?;
        }
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(Error::io(format!("opening {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(Error::io(format!("duplicating {}", log.display())))?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd.spawn().map_err(Error::io(format!(
            "starting {name} ({:?})",
            cmd.get_program()
        )))?;
        let watchdog = spawn_watchdog(GROUP_WATCHDOG, &child.id().to_string())?;
        tracing::debug!(name, pid = child.id(), log = %log.display(), "started");
        Ok(Supervised {
            name: name.to_string(),
            child,
            watchdog: Some(watchdog),
            log: log.to_path_buf(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Fails with the log tail if the process has exited.
    pub fn check_running(&mut self) -> Result<(), Error> {
        match self.exited() {
            None => Ok(()),
            Some(status) => Err(Error::ProcessExited {
                name: self.name.clone(),
                status,
                log_tail: self.log_tail(40),
            }),
        }
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// SIGKILL to the whole group at once (a machine that dies); reaps the child.
    pub fn kill(&mut self) {
        if self.exited().is_none()
            && let Some(group) = Pid::from_raw(self.child.id() as i32)
        {
            let _ = kill_process_group(group, Signal::KILL);
            let _ = self.child.wait();
        }
        self.stop();
    }

    /// SIGTERM to the whole group, SIGKILL after a grace period; reaps the child. Idempotent.
    pub fn stop(&mut self) {
        if self.exited().is_none() {
            let group = Pid::from_raw(self.child.id() as i32);
            if let Some(group) = group {
                let _ = kill_process_group(group, Signal::TERM);
                let deadline = Instant::now() + GRACE;
                while self.exited().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if self.exited().is_none() {
                    tracing::warn!(name = %self.name, "did not stop on SIGTERM; killing");
                    let _ = kill_process_group(group, Signal::KILL);
                    let _ = self.child.wait();
                }
                // Anything the child forked into its group goes too.
                let _ = kill_process_group(group, Signal::KILL);
            }
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            // Killed rather than released: its job (killing the group) is done, and a late
            // kill could hit a reused process group id.
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Removes a directory when this process exits without running destructors (statics).
#[derive(Debug)]
pub(crate) struct DirWatchdog(Option<Child>);

impl DirWatchdog {
    pub fn spawn(dir: &Path) -> Result<Self, Error> {
        Ok(DirWatchdog(Some(spawn_watchdog(
            DIR_WATCHDOG,
            &dir.display().to_string(),
        )?)))
    }

    /// Called on a normal drop: the owner removes the directory itself.
    pub fn disarm(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for DirWatchdog {
    fn drop(&mut self) {
        self.disarm();
    }
}

/// Runs a bash script once this process exits without disarming it first: the clean-up of
/// what outlives processes (a Node's mounts, bridge, cgroups, iptables rules) for owners that
/// may never be dropped (statics) or may be killed.
#[derive(Debug)]
pub(crate) struct ExitScript(Option<Child>);

impl ExitScript {
    /// `script` runs with `args` as `$1...` and `PATH` set to `path`.
    pub fn spawn(script: &str, args: &[&OsStr], path: &OsStr) -> Result<Self, Error> {
        let mut cmd = watchdog_command(script, args);
        cmd.env("PATH", path);
        Ok(ExitScript(Some(
            cmd.spawn()
                .map_err(Error::io("starting an exit script (bash)"))?,
        )))
    }

    /// Called once the owner has cleaned up itself.
    pub fn disarm(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ExitScript {
    fn drop(&mut self) {
        self.disarm();
    }
}

fn spawn_watchdog(script: &str, arg: &str) -> Result<Child, Error> {
    watchdog_command(script, &[OsStr::new(arg)])
        .spawn()
        .map_err(Error::io("starting a watchdog (bash)"))
}

/// `bash -c script` in its own process group with `args`, its stdin a pipe only this process
/// holds (so it reads end of file when this process is gone).
fn watchdog_command(script: &str, args: &[&OsStr]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.args(["-c", script, "airssys-watchdog"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    cmd
}

/// The last `lines` lines of a log file (reads at most the last 64 KiB).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("<no log at {}>", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut text = String::new();
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_ok() {
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
