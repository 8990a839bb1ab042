//! Filesystem escapes and widening (issue 10, items 1-3), with a hostile guest that calls
//! `wasi:filesystem` directly on its preopens (`fs-escape`): nested grants cannot be turned
//! into a way out to the host, a write-only tree cannot be moved or linked into a readable
//! one, and every refused path call is answered `not-permitted` and audited once. Each test
//! also checks the host file outside the sandbox and that a neighbour still answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{Expect, Harness, caps, quotas, spec};

/// Adds an echo neighbour and checks it answers.
async fn neighbour(h: &Harness) {
    h.add(spec("neighbour", "echo", caps(""), quotas())).await;
    assert_eq!(h.ask("neighbour", "hello").await.unwrap(), "hello");
}

async fn neighbour_still_answers(h: &Harness) {
    assert_eq!(
        h.ask("neighbour", "still there?").await.unwrap(),
        "still there?",
        "the neighbour must keep answering"
    );
}

/// Targets of the filesystem denials audited for `component`, in order.
async fn denials(h: &Harness, component: &str) -> Vec<String> {
    h.audit_events()
        .await
        .iter()
        .filter(|e| Expect::Denied("filesystem").matches(component, e))
        .map(|e| {
            e["detail"]["target"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// Waits (bounded) until `component` has at least `n` filesystem denials audited.
async fn wait_denials(h: &Harness, component: &str, n: usize, after: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = denials(h, component).await;
        if seen.len() >= n || Instant::now() > deadline {
            assert!(
                seen.len() >= n,
                "`{after}`: expected {n} audited denials, got {seen:#?}"
            );
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A relative symlink target that climbs from anywhere in the agent's data dir to the host's
/// root and then down to `host` (what an attacker writes without knowing the layout).
fn climbing_to(host: &Path) -> String {
    format!(
        "{}{}",
        "../".repeat(40),
        host.display().to_string().trim_start_matches('/')
    )
}

/// Item 1: with grants on `/data` and `/data/inbox`, the guest removes or renames the inner
/// directory through the outer grant and puts a symlink to the host in its place; the next
/// instance's `/data/inbox` preopen must not follow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_grant_cannot_be_replaced_by_a_symlink_to_the_host() {
    let h = Harness::new();
    neighbour(&h).await;
    let outside = h.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "SECRET").unwrap();
    let grant = caps(
        "filesystem: [{ path: /data, access: [read, write] }, \
         { path: /data/inbox, access: [read, write] }]",
    );
    h.add(spec("nester", "fs-escape", grant, quotas())).await;
    let ask = |cmd: String| {
        let h = &h;
        async move {
            let answer = h.ask("nester", &cmd).await.unwrap_or_else(|e| e);
            format!("{cmd} => {answer}")
        }
    };

    // The attack, every way of getting the mount point out of the way, then the link.
    let target = climbing_to(&outside);
    let mut report = Vec::new();
    for cmd in [
        "rmdir|/data|inbox".to_owned(),
        "rename|/data|inbox|/data|moved".to_owned(),
        "unlink|/data|inbox".to_owned(),
        format!("symlink|/data|{target}|inbox"),
        format!("symlink|/data|{target}|elsewhere"),
        "symlink|/data|/|root".to_owned(),
    ] {
        report.push(ask(cmd).await);
    }
    // A fresh instance gets fresh preopens: what does `/data/inbox` point at now?
    let _ = h.ask("nester", "crash").await;
    for cmd in [
        "read|/data/inbox/secret.txt",
        "write|/data/inbox/pwned.txt|x",
        "list|/data/inbox",
        "list|/data",
    ] {
        report.push(ask(cmd.into()).await);
    }
    let report = report.join("\n");
    for refused in [
        "rmdir|/data|inbox",
        "rename|/data|inbox",
        "unlink|/data|inbox",
        "|inbox =>",
        "|elsewhere =>",
        "|root =>",
    ] {
        let line = report.lines().find(|l| l.contains(refused)).unwrap();
        assert!(line.ends_with("error:not-permitted"), "{report}");
    }
    assert!(!report.contains("SECRET"), "{report}");
    assert!(
        report.contains("list|/data/inbox => pwned.txt\n"),
        "the inner grant is its own directory, still there: {report}"
    );
    assert!(
        report.contains("list|/data => inbox"),
        "the mount point stays visible in the outer grant: {report}"
    );
    assert!(!outside.join("pwned.txt").exists(), "{report}");
    assert_eq!(
        std::fs::read_to_string(outside.join("secret.txt")).unwrap(),
        "SECRET"
    );

    let refused = wait_denials(&h, "nester", 6, "the attack").await;
    for reason in [
        "rmdir inbox: mount point of the grant /data/inbox",
        "rename inbox: mount point of the grant /data/inbox",
        "unlink inbox: mount point of the grant /data/inbox",
        "symlink elsewhere: target leaves the grant",
        "symlink root: target leaves the grant",
    ] {
        assert!(
            refused.iter().any(|t| t == reason),
            "{reason}: {refused:#?}"
        );
    }
    neighbour_still_answers(&h).await;
}

/// Item 1, the class: whatever left a symlink where a granted directory should be (an older
/// agent, an escape, an operator mistake), a preopen never follows it to the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preopen_never_follows_a_symlink_planted_at_a_grant_directory() {
    let h = Harness::new();
    neighbour(&h).await;
    let outside = h.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "SECRET").unwrap();
    let grant = caps("filesystem: [{ path: /data, access: [read, write] }]");
    let s = spec("planted", "fs-escape", grant, quotas());
    let data = h.supervisor.host_dir(&s.id, "/data");
    std::fs::create_dir_all(data.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&outside, &data).unwrap();
    h.add(s).await;

    let read = h.ask("planted", "read|/data/secret.txt").await;
    let write = h.ask("planted", "write|/data/pwned.txt|x").await;
    assert!(
        !format!("{read:?}").contains("SECRET"),
        "the preopen followed the symlink: {read:?}"
    );
    assert!(!outside.join("pwned.txt").exists(), "{write:?}");
    assert_eq!(
        std::fs::read_to_string(outside.join("secret.txt")).unwrap(),
        "SECRET"
    );
    neighbour_still_answers(&h).await;
}

/// Item 2: a write-only grant with a readable grant nested in it. Moving or linking a file
/// out of the write-only tree into the readable one would be a read by other means, through
/// one descriptor (`r/x` below the write-only preopen) or two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_only_data_cannot_be_renamed_or_linked_into_a_readable_grant() {
    let h = Harness::new();
    neighbour(&h).await;
    let grant =
        caps("filesystem: [{ path: /w, access: [write] }, { path: /w/r, access: [read, write] }]");
    let s = spec("mover", "fs-escape", grant, quotas());
    let w = h.supervisor.host_dir(&s.id, "/w");
    std::fs::create_dir_all(&w).unwrap();
    std::fs::write(w.join("existing.txt"), "SECRET").unwrap();
    h.add(s).await;

    let refused_cmds = [
        "rename|/w|existing.txt|/w|r/stolen1",
        "rename|/w|existing.txt|/w/r|stolen2",
        "link|/w|existing.txt|/w|r/stolen3",
        "link|/w|existing.txt|/w/r|stolen4",
    ];
    let mut report = Vec::new();
    for (i, cmd) in refused_cmds.iter().enumerate() {
        let answer = h.ask("mover", cmd).await.unwrap();
        report.push(format!("{cmd} => {answer}"));
        assert_eq!(answer, "error:not-permitted", "{report:#?}");
        wait_denials(&h, "mover", i + 1, cmd).await;
    }
    // Through a symlink to the mount point's name the move stays inside the write-only
    // tree: the readable grant is a directory of its own, which it cannot reach.
    for cmd in ["symlink|/w|r|via", "rename|/w|existing.txt|/w|via/stolen5"] {
        report.push(format!("{cmd} => {:?}", h.ask("mover", cmd).await));
    }
    for n in 1..=5 {
        let read = h
            .ask("mover", &format!("read|/w/r/stolen{n}"))
            .await
            .unwrap();
        assert!(!read.contains("SECRET"), "stolen{n}: {read} {report:#?}");
    }
    let listed = h.ask("mover", "list|/w/r").await.unwrap();
    assert!(!listed.contains("stolen"), "{listed} {report:#?}");

    // Towards less access is fine: a readable file may be moved into the write-only tree.
    assert_eq!(h.ask("mover", "write|/w/r/mine|hello").await.unwrap(), "ok");
    assert_eq!(
        h.ask("mover", "rename|/w/r|mine|/w|mine").await.unwrap(),
        "ok"
    );
    assert_eq!(std::fs::read_to_string(w.join("mine")).unwrap(), "hello");

    let refused = denials(&h, "mover").await;
    for reason in [
        "rename existing.txt: r/stolen1 is inside the mount point of the grant /w/r",
        "rename existing.txt: into a directory with more access",
        "link existing.txt: r/stolen3 is inside the mount point of the grant /w/r",
        "link existing.txt: into a directory with more access",
    ] {
        assert!(
            refused.iter().any(|t| t == reason),
            "{reason}: {refused:#?}"
        );
    }
    neighbour_still_answers(&h).await;
}

/// Item 3: every path-taking call that is refused answers `not-permitted` and leaves
/// exactly one audit record, whichever rule refused it (read-only tree, write-only tree,
/// `..` or an absolute path, a symlink target leaving the grant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_path_call_is_not_permitted_and_audited_once() {
    let h = Harness::new();
    neighbour(&h).await;
    let grant = caps(
        "filesystem: [{ path: /ro, access: [read] }, { path: /wo, access: [write] }, \
         { path: /rw, access: [read, write] }]",
    );
    let s = spec("caller", "fs-escape", grant, quotas());
    let id = s.id.clone();
    for dir in ["/ro", "/wo", "/rw"] {
        let host = h.supervisor.host_dir(&s.id, dir);
        std::fs::create_dir_all(host.join("sub")).unwrap();
        std::fs::write(host.join("f.txt"), "KEEP").unwrap();
        std::os::unix::fs::symlink("f.txt", host.join("l")).unwrap();
    }
    let outside = h.dir.path().join("outside.txt");
    std::fs::write(&outside, "KEEP").unwrap();
    h.add(s).await;

    #[rustfmt::skip]
    let cmds: &[&str] = &[
        // A read-only tree refuses every change.
        "mkdir|/ro|new", "rmdir|/ro|sub", "unlink|/ro|f.txt", "rename|/ro|f.txt|/ro|g.txt",
        "link|/ro|f.txt|/ro|g.txt", "symlink|/ro|f.txt|l2", "settimes|/ro|f.txt",
        "open|/ro|new.txt|c", "open|/ro|f.txt|w",
        // A write-only tree refuses everything that reads, metadata included.
        "stat|/wo|f.txt", "hash|/wo|f.txt", "readlink|/wo|l", "open|/wo|f.txt|r",
        "open|/wo|sub|d",
        // `..` and absolute paths, on every path-taking call.
        "stat|/rw|../outside.txt", "hash|/rw|../outside.txt", "readlink|/rw|../l",
        "settimes|/rw|../outside.txt", "mkdir|/rw|../new", "rmdir|/rw|../sub",
        "unlink|/rw|../outside.txt", "open|/rw|../outside.txt|r", "open|/rw|/etc/passwd|r",
        "symlink|/rw|f.txt|../l3", "rename|/rw|../outside.txt|/rw|x",
        "rename|/rw|f.txt|/rw|../x", "link|/rw|../outside.txt|/rw|x",
        "link|/rw|f.txt|/rw|../x", "stat|/rw|sub/../../outside.txt",
        // Symlinks whose target leaves the grant are refused when created.
        "symlink|/rw|../outside.txt|up", "symlink|/rw|sub/../../outside.txt|up2",
        "symlink|/rw|/etc/passwd|abs",
    ];
    let mut answers = Vec::new();
    for (i, cmd) in cmds.iter().enumerate() {
        let answer = h.ask("caller", cmd).await.unwrap();
        answers.push(format!("{cmd} => {answer}"));
        assert_eq!(answer, "error:not-permitted", "{answers:#?}");
        wait_denials(&h, "caller", i + 1, cmd).await;
    }
    // Allowed calls are not audited as denials: a symlink inside the grant, and its use.
    for cmd in [
        "symlink|/rw|sub/f.txt|down",
        "stat|/rw|f.txt",
        "readlink|/rw|l",
    ] {
        let answer = h.ask("caller", cmd).await.unwrap();
        assert!(answer.starts_with("ok"), "{cmd} => {answer}");
    }
    let refused = denials(&h, "caller").await;
    assert_eq!(
        refused.len(),
        cmds.len(),
        "one record per refusal: {refused:#?}"
    );
    for (cmd, target) in cmds.iter().zip(&refused) {
        let op = cmd.split('|').next().unwrap();
        let op = match op {
            "stat" | "hash" => "stat",
            "mkdir" => "mkdir",
            "settimes" => "set-times",
            other => other,
        };
        assert!(target.starts_with(op), "{cmd}: {target}");
    }
    for dir in ["/ro", "/wo", "/rw"] {
        let host = h.supervisor.host_dir(&id, dir);
        assert_eq!(std::fs::read_to_string(host.join("f.txt")).unwrap(), "KEEP");
        assert!(host.join("sub").is_dir());
    }
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "KEEP");
    neighbour_still_answers(&h).await;
}
