//! The local run's demo cannot rot: the flow `cargo run -p xtask -- dev` runs
//! (`airssys_test_support::dev`, the same code) against a real control plane, a real OCI
//! registry holding the example components pushed by oras and one signed by cosign, and the
//! real operator binary, with `examples/` applied as the dev run applies them. Each example
//! reaches its decision; then the pending one is approved with the exact `kubectl wasm approve`
//! line the dev run prints, through kubectl's plugin lookup on the PATH it prints.
#![allow(clippy::unwrap_used, reason = "test code")]

use std::time::Duration;

use airssys_test_support::dev::{self, DevCluster, DevOptions, EXAMPLE_COMPONENTS, Expected};

const TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_examples_reach_every_decision_and_the_printed_approval_works() {
    // The operator and plugin, as this test run built them (a no-op inside
    // `cargo test --workspace`; a build when this test runs alone).
    let bin_dir = tokio::task::spawn_blocking(dev::build_workspace_bins_for_tests)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let mut options = DevOptions::new().unwrap();
    options.dir = dir.path().to_path_buf();
    options.bin_dir = bin_dir;
    let mut cluster = DevCluster::start(options)
        .await
        .unwrap_or_else(|e| panic!("starting the dev cluster: {e}"));

    let observed = match cluster.wait_for_decisions(TIMEOUT).await {
        Ok(observed) => observed,
        Err(e) => panic!("{e}\n--- operator log:\n{}", cluster.operator_log_tail(60)),
    };
    let show = dev::decision_table(&observed);
    for expected in [
        Expected::Trusted,
        Expected::PendingApproval,
        Expected::DevMode,
        Expected::Denied,
    ] {
        assert!(
            observed
                .iter()
                .any(|o| o.component.expected == expected && o.as_expected()),
            "no example shows {expected:?}:\n{show}"
        );
    }
    // Trusted because of the signature: platform-registry needs its repository AND its key.
    let trusted = observed
        .iter()
        .find(|o| o.component.expected == Expected::Trusted)
        .unwrap();
    assert!(
        trusted
            .matched_sources
            .iter()
            .any(|s| s == "platform-registry"),
        "{show}"
    );
    let message = trusted.approved.as_ref().map(|(_, _, m)| m.as_str());
    assert!(
        message.is_some_and(|m| m.contains(dev::DEV_KEY_NAME)),
        "echo is not trusted for its signature by {}: {message:?}",
        dev::DEV_KEY_NAME
    );
    let denied = observed
        .iter()
        .find(|o| o.component.expected == Expected::Denied)
        .unwrap();
    assert!(
        denied
            .matched_sources
            .iter()
            .any(|s| s == "deny-quarantine"),
        "{show}"
    );

    // The approve line the dev run prints, as a developer types it.
    let pending = EXAMPLE_COMPONENTS
        .iter()
        .find(|c| c.expected == Expected::PendingApproval)
        .unwrap();
    let out = cluster.kubectl(&dev::approve_args(pending)).await.unwrap();
    assert!(
        out.status.success(),
        "kubectl {:?} failed:\nstdout: {}\nstderr: {}",
        dev::approve_args(pending),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if let Err(e) = cluster
        .wait_for_approved(pending, "True", "ManuallyApproved", TIMEOUT)
        .await
    {
        panic!("{e}\n--- operator log:\n{}", cluster.operator_log_tail(60));
    }
    // Approving one changed no other decision.
    let after = cluster.decisions().await.unwrap();
    for o in after.iter().filter(|o| o.component != *pending) {
        assert!(
            o.as_expected(),
            "{} changed:\n{}",
            o.component.id(),
            dev::decision_table(&after)
        );
    }
}
