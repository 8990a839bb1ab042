//! What the operator's integration tests share: the real operator binary, run against the
//! shared control plane and loopback registries.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::process::Command;
use std::sync::Mutex;

use airssys_test_support::{ControlPlane, Supervised};

/// Starts `airssys-operator run` with the admin kubeconfig, plain HTTP allowed to loopback
/// registries, a 2 s recheck and a metrics endpoint on a free port, plus `extra` flags.
/// The harness's watchdog stops it when the test process exits.
pub fn spawn_operator(cp: &ControlPlane, extra: &[&str], log_name: &str) -> Mutex<Supervised> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_airssys-operator"));
    cmd.args([
        "run",
        "--insecure-registry",
        "127.0.0.1",
        "--recheck-seconds",
        "2",
        "--metrics-addr",
        "127.0.0.1:0",
    ])
    .args(extra)
    .env("KUBECONFIG", cp.kubeconfig_path())
    .env("RUST_LOG", "info,airssys_operator=debug");
    let log = cp.dir().join(log_name);
    Mutex::new(Supervised::spawn("airssys-operator", cmd, &log).unwrap())
}

/// Fails the test with the operator's log tail if it has exited.
pub fn assert_running(operator: &Mutex<Supervised>) {
    if let Err(e) = operator.lock().unwrap().check_running() {
        panic!("the operator is not running: {e}");
    }
}
