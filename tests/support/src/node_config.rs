//! What a test Node writes and reads, apart from the I/O: the configuration files of
//! containerd, the CNI network, kubelet and kube-proxy, containerd's registry hosts, and the
//! parsing of `/proc` files that start-up and teardown decide on.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Node, Taint};
use serde_json::{Value, json};

/// The image containerd runs as every pod's sandbox; `tests/cluster/node.sh` builds it and the
/// Node imports it, so no pod ever pulls it.
pub const SANDBOX_IMAGE: &str = "registry.airssys.test/pause:3.10";
/// Pod subnets are `10.244.<n>.0/24`, one per Node.
pub const POD_NETWORK_PREFIX: [u8; 2] = [10, 244];

/// Where one containerd keeps everything, and what it runs.
#[derive(Debug, Clone)]
pub struct ContainerdPaths {
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub runc: PathBuf,
    pub runc_root: PathBuf,
    pub cni_bin: PathBuf,
    pub cni_conf: PathBuf,
    pub registry_hosts: PathBuf,
}

/// containerd 1.6's config (version 2): its own root, state and socket; CRI with runc on
/// cgroupfs (kubelet's driver here), network namespaces under its state directory (so teardown
/// finds them), OOM scores clamped to what this machine allows, CNI from the node's config
/// directory and registry hosts from `certs.d`.
pub fn containerd_config(paths: &ContainerdPaths) -> String {
    let s = |p: &Path| toml_string(&p.display().to_string());
    format!(
        r#"version = 2
root = {root}
state = {state}
# Snapshotters that cannot work here; skipping them keeps the log readable.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = {socket}

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {sandbox}
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  # This VM withholds CAP_SYS_RESOURCE, so runc cannot lower a process's oom_score_adj
  # below its parent's (the pause container's -998 fails with "can't get final child's PID
  # from pipe: EOF"); clamp the values kubelet asks for instead, as rootless setups do.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = {runc}
        Root = {runc_root}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {cni_bin}
    conf_dir = {cni_conf}
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = {hosts}
"#,
        root = s(&paths.root),
        state = s(&paths.state),
        socket = s(&paths.socket),
        opt = s(&paths.root.join("opt")),
        sandbox = toml_string(SANDBOX_IMAGE),
        runc = s(&paths.runc),
        runc_root = s(&paths.runc_root),
        cni_bin = s(&paths.cni_bin),
        cni_conf = s(&paths.cni_conf),
        hosts = s(&paths.registry_hosts),
    )
}

/// containerd's `certs.d/<address>/hosts.toml` for a plain-HTTP registry on `address`.
pub fn registry_hosts(address: &str) -> String {
    let url = toml_string(&format!("http://{address}"));
    format!("server = {url}\n\n[host.{url}]\n  capabilities = [\"pull\", \"resolve\"]\n")
}

/// The pod network: a bridge with the node's subnet (host-local IPAM, state in `ipam_dir`), the
/// gateway on the host so the host reaches pods, no masquerading (pods talk to nothing off the
/// machine), and portmap for `hostPort`. containerd adds the loopback plugin itself.
pub fn cni_conflist(network: &str, bridge: &str, subnet: &str, ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": subnet }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": ipam_dir,
                }
            },
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    })
}

/// What differs between kubelets on one machine.
#[derive(Debug, Clone)]
pub struct KubeletSettings {
    pub address: Ipv4Addr,
    pub port: u16,
    pub client_ca: PathBuf,
    pub runtime_socket: PathBuf,
    pub cgroup_root: String,
    pub pod_cidr: String,
    pub pod_logs_dir: PathBuf,
}

/// kubelet's configuration file. cgroup v1 is allowed (`failCgroupV1: false`, this machine's
/// hierarchy), pods live under the node's own cgroup root, no static pods, only the webhook
/// (TokenReview/SubjectAccessReview) and x509 client certs authenticate, and eviction and image
/// GC thresholds are near zero: the tests share a disk that is often more than 85 % full,
/// which would otherwise put the node under DiskPressure and keep pods off it.
pub fn kubelet_config(s: &KubeletSettings) -> Value {
    json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": false,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": s.cgroup_root,
        "containerRuntimeEndpoint": format!("unix://{}", s.runtime_socket.display()),
        "address": s.address.to_string(),
        "port": s.port,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "authentication": {
            "anonymous": { "enabled": false },
            "webhook": { "enabled": true },
            "x509": { "clientCAFile": s.client_ca },
        },
        "authorization": { "mode": "Webhook" },
        "podCIDR": s.pod_cidr,
        "podLogsDir": s.pod_logs_dir,
        "clusterDomain": "cluster.local",
        "failSwapOn": false,
        "serializeImagePulls": false,
        "rotateCertificates": false,
        "serverTLSBootstrap": false,
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "nodeStatusUpdateFrequency": "5s",
        // kubelet's KUBE-FIREWALL and canary chains are machine-wide and would outlive the
        // node; nothing here needs them (kube-proxy keeps its own).
        "makeIPTablesUtilChains": false,
    })
}

/// kube-proxy in iptables mode; health and metrics on loopback ports of their own; conntrack
/// sysctls left as the machine has them (0 = do not touch).
pub fn kube_proxy_config(
    kubeconfig: &Path,
    hostname: &str,
    cluster_cidr: &str,
    healthz_port: u16,
    metrics_port: u16,
) -> Value {
    json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": { "kubeconfig": kubeconfig },
        "hostnameOverride": hostname,
        "clusterCIDR": cluster_cidr,
        "healthzBindAddress": format!("127.0.0.1:{healthz_port}"),
        "metricsBindAddress": format!("127.0.0.1:{metrics_port}"),
        // NodePorts on the machine's primary address only, not on every local IP.
        "nodePortAddresses": ["primary"],
        "conntrack": { "maxPerCore": 0, "min": 0 },
        "iptables": { "syncPeriod": "10s", "minSyncPeriod": "0s" },
    })
}

/// The taint the `TaintNodesByCondition` admission plugin puts on every new Node; the node
/// lifecycle controller lifts it once the Node is Ready.
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";

/// The merge patch that makes a Ready `node` what kube-controller-manager would make it: its
/// pod subnet recorded (if unset) and the not-ready taint gone. `None` when nothing is left to
/// do. Carries the resource version, so a concurrent write by kubelet makes it fail (409).
pub fn ready_node_patch(node: &Node, pod_cidr: &str) -> Option<Value> {
    let spec = node.spec.clone().unwrap_or_default();
    let mut patch = serde_json::Map::new();
    if spec.pod_cidr.is_none() {
        patch.insert("podCIDR".into(), json!(pod_cidr));
        patch.insert("podCIDRs".into(), json!([pod_cidr]));
    }
    let taints = spec.taints.unwrap_or_default();
    if taints.iter().any(|t| t.key == NOT_READY_TAINT) {
        let kept: Vec<&Taint> = taints.iter().filter(|t| t.key != NOT_READY_TAINT).collect();
        patch.insert("taints".into(), json!(kept));
    }
    (!patch.is_empty()).then(|| {
        json!({
            "metadata": { "resourceVersion": node.metadata.resource_version },
            "spec": patch,
        })
    })
}

/// The interface of the IPv4 default route in `/proc/net/route`.
pub fn default_route_interface(proc_net_route: &str) -> Option<String> {
    proc_net_route.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 2 && fields[1] == "00000000").then(|| fields[0].to_owned())
    })
}

/// The first address in `ip -4 -o addr show` output (`... inet 192.0.2.2/24 brd ...`).
pub fn first_inet(ip_addr_output: &str) -> Option<Ipv4Addr> {
    ip_addr_output.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        words.find(|w| *w == "inet")?;
        words.next()?.split('/').next()?.parse().ok()
    })
}

/// Destinations of the IPv4 routes in `/proc/net/route` (little-endian hex there).
pub fn route_destinations(proc_net_route: &str) -> Vec<Ipv4Addr> {
    proc_net_route
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(1))
        .filter_map(|hex| u32::from_str_radix(hex, 16).ok())
        .map(|n| Ipv4Addr::from(n.to_le_bytes()))
        .collect()
}

/// The `n`s whose pod subnet `10.244.<n>.0/24` no route uses yet, in the order to try them:
/// from `start`, wrapping within 1..=254. (A Node's route appears with its first pod, so the
/// Node also claims its `n` with a lock file.)
pub fn subnet_candidates(routes: &[Ipv4Addr], start: u8) -> Vec<u8> {
    let used = |n: u8| {
        routes.iter().any(|r| {
            let o = r.octets();
            o[..2] == POD_NETWORK_PREFIX && o[2] == n
        })
    };
    (0..254u16)
        .map(|i| ((u16::from(start.max(1)) - 1 + i) % 254 + 1) as u8)
        .filter(|&n| !used(n))
        .collect()
}

/// Mount points at or below `dir` in `/proc/self/mountinfo`, deepest first (the order to
/// unmount them in). Octal escapes (`\040` for a space) are decoded.
pub fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(code) = u8::from_str_radix(&raw[i + 1..i + 4], 8)
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a process's `/proc/<pid>/cmdline` is a containerd shim serving the containerd
/// listening on `socket` (shims daemonize, so stopping containerd leaves them running).
pub fn is_shim_of(cmdline: &[u8], socket: &Path) -> bool {
    let mut args = cmdline.split(|b| *b == 0).map(String::from_utf8_lossy);
    let Some(program) = args.next() else {
        return false;
    };
    let socket = socket.display().to_string();
    program.contains("containerd-shim") && args.any(|a| a == socket)
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
airssys-cni7\t0007F40A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";

    fn node(pod_cidr: Option<&str>, taints: &[(&str, &str)]) -> Node {
        serde_json::from_value(json!({
            "metadata": { "name": "n", "resourceVersion": "42" },
            "spec": {
                "podCIDR": pod_cidr,
                "taints": taints
                    .iter()
                    .map(|(key, effect)| json!({ "key": key, "effect": effect }))
                    .collect::<Vec<_>>(),
            },
        }))
        .unwrap()
    }

    #[test]
    fn a_ready_node_gets_its_subnet_and_loses_the_not_ready_taint() {
        let cidr = "10.244.7.0/24";
        let fresh = ready_node_patch(&node(None, &[(NOT_READY_TAINT, "NoSchedule")]), cidr);
        assert_eq!(
            fresh,
            Some(json!({
                "metadata": { "resourceVersion": "42" },
                "spec": { "podCIDR": cidr, "podCIDRs": [cidr], "taints": [] },
            }))
        );
        // Other taints stay; a recorded subnet is left alone.
        let other = ready_node_patch(
            &node(
                Some(cidr),
                &[("dedicated", "NoSchedule"), (NOT_READY_TAINT, "NoSchedule")],
            ),
            cidr,
        );
        assert_eq!(
            other,
            Some(json!({
                "metadata": { "resourceVersion": "42" },
                "spec": { "taints": [{ "key": "dedicated", "effect": "NoSchedule" }] },
            }))
        );
        assert_eq!(ready_node_patch(&node(Some(cidr), &[]), cidr), None);
    }

    #[test]
    fn the_default_route_names_its_interface() {
        for (table, want) in [
            (ROUTES, Some("eth0")),
            ("Iface\tDestination\n", None),
            (
                "Iface\tDestination\tGateway\nlo\t0000007F\t00000000\n",
                None,
            ),
        ] {
            assert_eq!(default_route_interface(table).as_deref(), want, "{table}");
        }
    }

    #[test]
    fn the_first_inet_address_is_the_node_address() {
        for (output, want) in [
            (
                "4: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\\       valid_lft forever\n",
                Some(Ipv4Addr::new(192, 0, 2, 2)),
            ),
            (
                "4: eth0    inet 10.0.0.5/8 scope global eth0\n5: eth1    inet 10.1.0.5/8 scope global eth1\n",
                Some(Ipv4Addr::new(10, 0, 0, 5)),
            ),
            ("", None),
            ("4: eth0    inet6 fe80::1/64 scope link\n", None),
        ] {
            assert_eq!(first_inet(output), want, "{output}");
        }
    }

    #[test]
    fn route_destinations_are_decoded_from_little_endian_hex() {
        assert_eq!(
            route_destinations(ROUTES),
            [
                Ipv4Addr::new(0, 0, 0, 0),
                Ipv4Addr::new(192, 0, 2, 0),
                Ipv4Addr::new(10, 244, 7, 0),
            ]
        );
    }

    #[test]
    fn subnets_no_route_uses_are_candidates() {
        let routes = [Ipv4Addr::new(10, 244, 3, 0)];
        assert_eq!(subnet_candidates(&routes, 253)[..4], [253, 254, 1, 2]);
        assert_eq!(subnet_candidates(&routes, 2)[..3], [2, 4, 5]);
        assert_eq!(subnet_candidates(&routes, 2).len(), 253);
    }

    #[test]
    fn the_first_candidate_is_the_first_subnet_no_route_uses() {
        let taken = |ns: &[u8]| -> Vec<Ipv4Addr> {
            ns.iter().map(|n| Ipv4Addr::new(10, 244, *n, 0)).collect()
        };
        let all: Vec<u8> = (1..=254).collect();
        for (routes, start, want) in [
            (taken(&[]), 7, Some(7)),
            (taken(&[7]), 7, Some(8)),
            (taken(&[254]), 254, Some(1)),
            (taken(&[1, 2]), 0, Some(3)),
            // Another network's 10.245.7.0 does not take 10.244.7.0.
            (vec![Ipv4Addr::new(10, 245, 7, 0)], 7, Some(7)),
            (taken(&all), 9, None),
        ] {
            assert_eq!(
                subnet_candidates(&routes, start).first().copied(),
                want,
                "{routes:?} from {start}"
            );
        }
    }

    #[test]
    fn mounts_under_a_directory_come_deepest_first() {
        let mountinfo = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
90 22 0:50 / /tmp/node-x/state/netns/cni-1 rw shared:5 - nsfs nsfs rw
91 22 0:51 / /tmp/node-x/kubelet/pods/u/volumes/kube-api-access rw - tmpfs tmpfs rw
92 22 0:52 / /tmp/node-x/root/overlay/1/rootfs rw - overlay overlay rw
93 22 0:53 / /tmp/node-xy/other rw - tmpfs tmpfs rw
94 22 0:54 / /tmp/node-x/with\\040space rw - tmpfs tmpfs rw
";
        let found = mounts_under(mountinfo, Path::new("/tmp/node-x"));
        assert_eq!(
            found,
            [
                PathBuf::from("/tmp/node-x/kubelet/pods/u/volumes/kube-api-access"),
                PathBuf::from("/tmp/node-x/root/overlay/1/rootfs"),
                PathBuf::from("/tmp/node-x/state/netns/cni-1"),
                PathBuf::from("/tmp/node-x/with space"),
            ]
        );
    }

    #[test]
    fn shims_are_told_apart_by_their_containerd_socket() {
        let ours = Path::new("/tmp/node-x/containerd.sock");
        let cmd = |args: &[&str]| args.join("\0").into_bytes();
        for (cmdline, want) in [
            (
                cmd(&[
                    "/usr/bin/containerd-shim-runc-v2",
                    "-namespace",
                    "k8s.io",
                    "-address",
                    "/tmp/node-x/containerd.sock",
                ]),
                true,
            ),
            (
                cmd(&[
                    "/usr/bin/containerd-shim-runc-v2",
                    "-address",
                    "/run/containerd/containerd.sock",
                ]),
                false,
            ),
            (
                cmd(&["containerd", "--config", "/tmp/node-x/containerd.sock"]),
                false,
            ),
            (Vec::new(), false),
        ] {
            assert_eq!(
                is_shim_of(&cmdline, ours),
                want,
                "{}",
                String::from_utf8_lossy(&cmdline)
            );
        }
    }

    #[test]
    fn containerd_config_points_everything_at_the_node() {
        let dir = Path::new("/tmp/node-x");
        let config = containerd_config(&ContainerdPaths {
            root: dir.join("root"),
            state: dir.join("state"),
            socket: dir.join("containerd.sock"),
            runc: PathBuf::from("/usr/sbin/runc"),
            runc_root: dir.join("runc"),
            cni_bin: PathBuf::from("/usr/lib/cni"),
            cni_conf: dir.join("net.d"),
            registry_hosts: dir.join("certs.d"),
        });
        for line in [
            "root = \"/tmp/node-x/root\"",
            "address = \"/tmp/node-x/containerd.sock\"",
            "sandbox_image = \"registry.airssys.test/pause:3.10\"",
            "netns_mounts_under_state_dir = true",
            "restrict_oom_score_adj = true",
            "SystemdCgroup = false",
            "BinaryName = \"/usr/sbin/runc\"",
            "conf_dir = \"/tmp/node-x/net.d\"",
            "config_path = \"/tmp/node-x/certs.d\"",
        ] {
            assert!(config.contains(line), "no {line:?} in:\n{config}");
        }
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(toml_string("tab\there"), "\"tab\\u0009here\"");
    }

    #[test]
    fn registry_hosts_serve_plain_http() {
        assert_eq!(
            registry_hosts("127.0.0.1:5000"),
            "server = \"http://127.0.0.1:5000\"\n\n[host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        );
    }

    #[test]
    fn kubelet_allows_cgroup_v1_and_keeps_pods_under_its_root() {
        let config = kubelet_config(&KubeletSettings {
            address: Ipv4Addr::new(192, 0, 2, 2),
            port: 10250,
            client_ca: PathBuf::from("/pki/ca.crt"),
            runtime_socket: PathBuf::from("/tmp/node-x/containerd.sock"),
            cgroup_root: "/airssys-node-x".into(),
            pod_cidr: "10.244.7.0/24".into(),
            pod_logs_dir: PathBuf::from("/tmp/node-x/pod-logs"),
        });
        assert_eq!(config["failCgroupV1"], false);
        assert_eq!(config["cgroupDriver"], "cgroupfs");
        assert_eq!(config["cgroupRoot"], "/airssys-node-x");
        assert_eq!(
            config["containerRuntimeEndpoint"],
            "unix:///tmp/node-x/containerd.sock"
        );
        assert_eq!(config["authentication"]["anonymous"]["enabled"], false);
        assert_eq!(config["authorization"]["mode"], "Webhook");
        assert!(config.get("staticPodPath").is_none());
        assert_eq!(config["makeIPTablesUtilChains"], false);
    }

    #[test]
    fn the_pod_network_is_a_bridge_without_masquerading() {
        let conf = cni_conflist(
            "airssys-node-x",
            "airssys-cni7",
            "10.244.7.0/24",
            Path::new("/tmp/node-x/ipam"),
        );
        let bridge = &conf["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["bridge"], "airssys-cni7");
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.244.7.0/24");
        assert_eq!(bridge["ipam"]["dataDir"], "/tmp/node-x/ipam");
        assert_eq!(conf["plugins"][1]["type"], "portmap");
    }
}
