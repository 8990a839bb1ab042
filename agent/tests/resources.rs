//! What a guest makes the host hold outside its linear memory is bounded per instance:
//! resource-table entries (here `wasi:http` fields) and open host files. The hostile guest
//! is stopped with a `handles` quota record, this process's memory and descriptors stay
//! bounded, and a neighbour keeps answering and opening files. Real wasm32-wasip2 guests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::{Harness, caps, quotas, spec};

/// Resident memory of this process, in bytes (`VmRSS` of /proc/self/status).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Open descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// A file-reader neighbour with its own granted directory and one file in it.
async fn file_neighbour(h: &Harness) {
    let grant = caps("filesystem: [{ path: /data, access: [read, write] }]");
    let s = spec("reader", "file-reader", grant, quotas());
    let dir = h.supervisor.host_dir(&s.id, "/data");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("note.txt"), "hello").unwrap();
    h.add(s).await;
    assert_eq!(
        h.ask("reader", "read:/data/note.txt").await.unwrap(),
        "hello"
    );
}

/// Test quotas with CPU time to spare, so only the bound under test can stop the bomb.
fn patient() -> support::Quotas {
    support::Quotas {
        cpu_time_per_message: Duration::from_secs(8),
        timeout: Duration::from_secs(9),
        ..quotas()
    }
}

async fn neighbour_still_reads(h: &Harness) {
    assert_eq!(
        h.ask("reader", "read:/data/note.txt").await.unwrap(),
        "hello",
        "the neighbour must still open and read its file"
    );
}

/// Runs the fields bomb with fields of `size` bytes and checks it is stopped by the
/// handles quota, with the host's growth bounded and the neighbour unharmed.
async fn fields_bomb_is_stopped(size: usize) {
    let h = Harness::new();
    file_neighbour(&h).await;
    h.add(spec("fields", "res-fields-bomb", caps(""), patient()))
        .await;
    assert_eq!(h.ask("fields", "ping").await.unwrap(), "pong");
    let before = rss_bytes();
    // Unbounded, the guest makes the host hold 10,000 fields of `size` bytes.
    let result = h.ask("fields", &format!("bomb:{size}")).await;
    let grown = rss_bytes().saturating_sub(before);
    let err = result.expect_err("the bomb must be stopped");
    assert!(err.contains("handles quota exceeded"), "{err}");
    support::wait_kind(&h, "fields", support::Expect::Quota("handles")).await;
    support::wait_kind(&h, "fields", support::Expect::Killed).await;
    // Bounded by the 32 MiB memory quota (plus allocator slack).
    assert!(grown < 64 << 20, "host grew by {} MiB", grown >> 20);
    neighbour_still_reads(&h).await;
    assert_eq!(h.ask("fields", "ping").await.unwrap(), "pong", "restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_http_fields_are_stopped_by_the_handles_quota() {
    // The reported case: 10,000 x 100 kB (about 1 GB on the host).
    fields_bomb_is_stopped(100_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_http_fields_hit_the_resource_table_cap() {
    // Each under the per-fields size limit: 10,000 x 8 kB, stopped by the entry cap.
    fields_bomb_is_stopped(8_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_bomb_is_refused_at_the_per_instance_cap() {
    let h = Harness::new();
    file_neighbour(&h).await;
    let grant = caps("filesystem: [{ path: /data, access: [read, write] }]");
    h.add(spec("fds", "res-fd-bomb", grant, patient())).await;
    assert_eq!(h.ask("fds", "ping").await.unwrap(), "pong");
    let before = open_fds();
    // The guest keeps every descriptor open after the call returns.
    let reply = h.ask("fds", "bomb:/data").await.unwrap();
    let held = open_fds().saturating_sub(before);
    assert!(reply.starts_with("refused after "), "{reply}");
    let opened: usize = reply["refused after ".len()..]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(opened < 300, "opened {opened}");
    assert!(held <= 300, "the process holds {held} more descriptors");
    let record = support::wait_kind(&h, "fds", support::Expect::Quota("handles")).await;
    assert_eq!(record["component"], "test/fds");
    // The neighbour still opens files, and a new component still starts (its preopen).
    neighbour_still_reads(&h).await;
    let grant = caps("filesystem: [{ path: /data, access: [read] }]");
    h.add(spec("late", "file-reader", grant, quotas())).await;
    assert_eq!(h.ask("late", "list:/data").await.unwrap(), "");
    // Removing the component ends its instance, and its descriptors go with it.
    h.supervisor
        .remove(&airssys_agent::id::ComponentId::new("test", "fds"))
        .await
        .unwrap();
    // `remove` returns once the actor task ended, so the `Store` (and its table) is gone.
    let left = open_fds().saturating_sub(before);
    assert!(left < 50, "{left} descriptors still held after removal");
}
