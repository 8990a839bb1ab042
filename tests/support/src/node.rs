//! A real Kubernetes node beside the test control plane: containerd (Debian's, with its own
//! root, state and socket under the node's temp directory), runc, a CNI bridge network with
//! its own subnet, kubelet (client certificate for `system:node:<name>`, cgroup v1 allowed)
//! and kube-proxy (iptables mode), all from `tests/cluster/node.sh`.
//!
//! One machine can run several Nodes (each has its own bridge, subnet, cgroup root, ports and
//! directories), but kube-proxy's iptables chains are machine-wide, so at most one Node per
//! machine runs kube-proxy at a time: the others wait for a lock file.
//!
//! [`Node::shared`] is a process-wide Node on the shared control plane. A Node that is never
//! dropped (that one) or whose process is killed is cleaned up by an exit script instead.
//!
//! [`Node::stop`] (also run on drop) undoes everything: kube-proxy's rules, the processes
//! (including the containers and the shims containerd leaves behind), the mounts under the
//! temp directory (overlay root filesystems, network namespaces, volumes), the bridge, the
//! cgroups and the Node object.

use std::ffi::OsStr;
use std::fs::File;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node as NodeObject;
use kube::Api;
use kube::api::{Patch, PatchParams};
use tempfile::TempDir;

use crate::control_plane::{UserAuth, write_kubeconfig};
use crate::node_config::{self, ContainerdPaths, KubeletSettings};
use crate::ports::free_ports;
use crate::process::{ExitScript, Supervised};
use crate::tools::{self, find_program};
use crate::wait::condition_status;
use crate::{ControlPlane, Error};

const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(30);
const READY_TIMEOUT: Duration = Duration::from_secs(180);
const KUBE_PROXY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a Node waits for another Node's kube-proxy to go.
const PROXY_LOCK_TIMEOUT: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_millis(250);
const CGROUP_FS: &str = "/sys/fs/cgroup";
/// The name of the process-wide [`Node::shared`].
pub const SHARED_NODE_NAME: &str = "airssys-node";

/// [`Node::stop`] in bash, for a process that ends without dropping its Node (a static, a
/// panic with `panic = abort`, SIGKILL). Runs once stdin reaches end of file, after the daemons'
/// own watchdogs stopped them. Arguments: the node's directory, containerd's socket, the
/// bridge, the kube-proxy binary, the kube-proxy lock file, the subnet lock file, `1` to keep
/// the directory, then the node's cgroup roots.
const EXIT_SCRIPT: &str = r#"read -r _ || true
sleep 6
dir=$1 socket=$2 bridge=$3 kube_proxy=$4 lock=$5 subnet_lock=$6 keep=$7
shift 7
if [ -f "$dir/kube-proxy.yaml" ]; then
    # Under the lock, so another Node's kube-proxy never loses its rules to this clean-up.
    flock -w 600 "$lock" bash -c '
        "$1" --config="$2" --cleanup
        for t in iptables ip6tables; do
            $t -w -D INPUT -j KUBE-FIREWALL; $t -w -D OUTPUT -j KUBE-FIREWALL
            $t -w -F KUBE-FIREWALL && $t -w -X KUBE-FIREWALL
        done' _ "$kube_proxy" "$dir/kube-proxy.yaml" >/dev/null 2>&1
fi
for _ in 1 2 3 4 5 6 7 8 9 10; do
    pids=$(for cg in "$@"; do find "$cg" -name cgroup.procs -exec cat {} +; done 2>/dev/null)
    [ -z "$pids" ] && break
    kill -KILL $pids 2>/dev/null
    sleep 0.5
done
# Shims: the program must be a containerd shim (this script's own command line names one too).
for p in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
    prog=${cmd%% *}
    case "${prog##*/}" in containerd-shim*) ;; *) continue ;; esac
    case "$cmd " in *" $socket "*) kill -KILL "${p#/proc/}" 2>/dev/null ;; esac
done
sleep 1
awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m"; done
# Unless another Node has claimed the subnet (and so the bridge name) since this one died.
flock -n "$subnet_lock" ip link delete "$bridge" 2>/dev/null
for cg in "$@"; do find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null; done
[ "$keep" = 1 ] || rm -rf -- "$dir""#;

static SHARED: tokio::sync::OnceCell<Node> = tokio::sync::OnceCell::const_new();

/// What [`Node::start`] brings up.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Run kube-proxy (iptables mode), so Services answer on this machine.
    pub kube_proxy: bool,
    /// Keep the temp directory (logs, configs) after stopping; also set by
    /// `AIRSSYS_KEEP_TMP=1`.
    pub keep_dir: bool,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            kube_proxy: true,
            keep_dir: std::env::var_os("AIRSSYS_KEEP_TMP").is_some_and(|v| v != "0"),
        }
    }
}

/// A running node, registered and Ready. Stopped and cleaned up on drop.
#[derive(Debug)]
pub struct Node {
    name: String,
    dir: PathBuf,
    tempdir: Option<TempDir>,
    /// containerd, kubelet, kube-proxy: stopped in reverse order.
    processes: Mutex<Vec<Supervised>>,
    socket: PathBuf,
    registry_hosts: PathBuf,
    bridge: String,
    pod_cidr: String,
    address: Ipv4Addr,
    cgroup_dirs: Vec<PathBuf>,
    admin_kubeconfig: PathBuf,
    kube_proxy: Option<KubeProxy>,
    exit_script: Option<ExitScript>,
    /// `n` of the pod subnet `10.244.<n>.0/24` and the bridge `airssys-cni<n>`.
    subnet: u8,
    /// Held for the Node's life: no other Node on the machine takes its subnet (and bridge).
    _subnet_lock: File,
    keep_dir: bool,
    stopped: bool,
}

#[derive(Debug)]
struct KubeProxy {
    config: PathBuf,
    /// Held while this Node's kube-proxy owns the machine's iptables chains.
    _lock: File,
}

impl ControlPlane {
    /// Starts a [`Node`] named `name` with the default options (kube-proxy on) and waits until
    /// it is Ready.
    pub async fn start_node(&self, name: &str) -> Result<Node, Error> {
        Node::start(self, name, NodeOptions::default()).await
    }
}

impl Node {
    /// The process-wide node [`SHARED_NODE_NAME`] on [`ControlPlane::shared`], with kube-proxy,
    /// started on first use. It lives in a static, so it is never dropped: its exit script
    /// cleans up when the test process ends. It holds the machine's kube-proxy lock until then,
    /// so a test binary that uses it should start no other Node with kube-proxy.
    pub async fn shared() -> Result<&'static Node, Error> {
        SHARED
            .get_or_try_init(|| async {
                let cp = ControlPlane::shared().await?;
                Node::start(cp, SHARED_NODE_NAME, NodeOptions::default()).await
            })
            .await
    }

    /// Starts containerd, kubelet and (if asked) kube-proxy for a node called `name` against
    /// `cp`, and waits until the Node is Ready (and kube-proxy serving).
    pub async fn start(cp: &ControlPlane, name: &str, options: NodeOptions) -> Result<Node, Error> {
        let started = Instant::now();
        let bin = tokio::task::spawn_blocking(|| tools::node_bin_dir().map(Path::to_path_buf))
            .await
            .map_err(|e| Error::Invalid(format!("node tool lookup task failed: {e}")))??;
        let mut tempdir = tempfile::Builder::new()
            .prefix("airssys-node-")
            .tempdir()
            .map_err(Error::io("creating the node's temp dir"))?;
        if options.keep_dir {
            tempdir.disable_cleanup(true);
        }
        let dir = tempdir.path().to_path_buf();
        let routes = read("/proc/net/route")?;
        let (n, subnet_lock) = claim_subnet(&routes, start_hint(&dir))?;
        let [a, b] = node_config::POD_NETWORK_PREFIX;
        let pod_cidr = format!("{a}.{b}.{n}.0/24");
        let address = node_address(&routes)?;
        let cgroup_root = format!("airssys-{}-{n}", sanitize(name));
        let mut node = Node {
            name: name.to_owned(),
            socket: dir.join("containerd.sock"),
            registry_hosts: dir.join("certs.d"),
            bridge: format!("airssys-cni{n}"),
            pod_cidr,
            address,
            cgroup_dirs: Vec::new(),
            admin_kubeconfig: cp.kubeconfig_path().to_path_buf(),
            processes: Mutex::new(Vec::new()),
            kube_proxy: None,
            exit_script: None,
            subnet: n,
            _subnet_lock: subnet_lock,
            keep_dir: options.keep_dir,
            stopped: false,
            dir,
            tempdir: Some(tempdir),
        };
        node.cgroup_dirs = create_cgroup_root(&cgroup_root)?;
        node.exit_script = Some(node.spawn_exit_script(&bin)?);
        node.start_containerd(&bin).await?;
        tracing::info!(node = name, elapsed = ?started.elapsed(), "containerd ready");
        node.start_kubelet(cp, &bin, &cgroup_root).await?;
        node.wait_ready(cp).await?;
        cp.ensure_scheduler(&bin)?;
        tracing::info!(node = name, elapsed = ?started.elapsed(), "kubelet registered, node Ready");
        if options.kube_proxy {
            node.start_kube_proxy(cp, &bin).await?;
            tracing::info!(node = name, elapsed = ?started.elapsed(), "kube-proxy serving");
        }
        tracing::info!(
            node = name,
            dir = %node.dir.display(),
            pod_cidr = %node.pod_cidr,
            address = %node.address,
            elapsed = ?started.elapsed(),
            "node started"
        );
        Ok(node)
    }

    fn spawn_exit_script(&self, bin: &Path) -> Result<ExitScript, Error> {
        let kube_proxy = bin.join("kube-proxy");
        let lock = proxy_lock_path();
        let subnet_lock = subnet_lock_path(self.subnet);
        let keep = if self.keep_dir { "1" } else { "0" };
        let mut args: Vec<&OsStr> = vec![
            self.dir.as_os_str(),
            self.socket.as_os_str(),
            OsStr::new(&self.bridge),
            kube_proxy.as_os_str(),
            lock.as_os_str(),
            subnet_lock.as_os_str(),
            OsStr::new(keep),
        ];
        args.extend(self.cgroup_dirs.iter().map(|d| d.as_os_str()));
        ExitScript::spawn(EXIT_SCRIPT, &args, &tools::path_with_sbin())
    }

    async fn start_containerd(&mut self, bin: &Path) -> Result<(), Error> {
        let paths = ContainerdPaths {
            root: self.dir.join("containerd/root"),
            state: self.dir.join("containerd/state"),
            socket: self.socket.clone(),
            runc: find_program("runc")?,
            runc_root: self.dir.join("containerd/runc"),
            cni_bin: tools::cni_bin_dir()?,
            cni_conf: self.dir.join("net.d"),
            registry_hosts: self.registry_hosts.clone(),
        };
        create_dir(&paths.registry_hosts)?;
        let config = self.dir.join("containerd.toml");
        write(&config, &node_config::containerd_config(&paths))?;
        let conflist = node_config::cni_conflist(
            &format!("airssys-{}", sanitize(&self.name)),
            &self.bridge,
            &self.pod_cidr,
            &self.dir.join("ipam"),
        );
        write(
            &paths.cni_conf.join("10-airssys.conflist"),
            &conflist.to_string(),
        )?;
        let mut cmd = Command::new(find_program("containerd")?);
        cmd.arg("--config")
            .arg(&config)
            .env("PATH", tools::path_with_sbin());
        self.spawn("containerd", cmd)?;

        let deadline = Instant::now() + CONTAINERD_TIMEOUT;
        loop {
            self.check_processes()?;
            if self.socket.exists() && self.ctr(&["version"]).await?.status.success() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "containerd to answer on its socket".into(),
                    timeout: CONTAINERD_TIMEOUT,
                    last: self.log_tail("containerd", 30),
                });
            }
            tokio::time::sleep(POLL).await;
        }
        // The sandbox image is never pulled: the one node.sh built is imported once.
        let pause = bin.join("images/pause.tar");
        self.import_image(&pause).await
    }

    async fn start_kubelet(
        &mut self,
        cp: &ControlPlane,
        bin: &Path,
        cgroup_root: &str,
    ) -> Result<(), Error> {
        let stem = format!("node-{}", sanitize(&self.name));
        let cert = cp.pki().client(
            &stem,
            &format!("system:node:{}", self.name),
            Some("system:nodes"),
        )?;
        let kubeconfig = self.dir.join("kubelet.kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            cp.server(),
            &cp.ca_cert_path(),
            &format!("system:node:{}", self.name),
            UserAuth::Cert(&cert),
            None,
        )?;
        // kubelet listens on the node's address, so the port must be free there.
        let port = std::net::TcpListener::bind((self.address, 0))
            .and_then(|l| l.local_addr())
            .map_err(Error::io(format!(
                "finding a free port on {}",
                self.address
            )))?
            .port();
        let config = node_config::kubelet_config(&KubeletSettings {
            address: self.address,
            port,
            client_ca: cp.ca_cert_path(),
            runtime_socket: self.socket.clone(),
            cgroup_root: format!("/{cgroup_root}"),
            pod_cidr: self.pod_cidr.clone(),
            pod_logs_dir: self.dir.join("pod-logs"),
        });
        let config_path = self.dir.join("kubelet.yaml");
        write(&config_path, &config.to_string())?;
        let mut cmd = Command::new(bin.join("kubelet"));
        cmd.arg(format!("--config={}", config_path.display()))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--root-dir={}", self.dir.join("kubelet").display()))
            .arg(format!(
                "--cert-dir={}",
                self.dir.join("kubelet-pki").display()
            ))
            .arg(format!("--hostname-override={}", self.name))
            .arg(format!("--node-ip={}", self.address))
            .arg("--v=2")
            .env("PATH", tools::path_with_sbin());
        self.spawn("kubelet", cmd)
    }

    /// Waits until the Node object is Ready, then does what kube-controller-manager's node IPAM
    /// and node lifecycle controllers would (the test control plane leaves them off, since
    /// other tests make Nodes by hand): records the node's pod subnet and lifts the
    /// `node.kubernetes.io/not-ready` taint that admission put on the new Node (with it, no
    /// DaemonSet would place a Pod here).
    async fn wait_ready(&self, cp: &ControlPlane) -> Result<(), Error> {
        let api: Api<NodeObject> = Api::all(cp.client().await?);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_processes()?;
            let last = match api.get_opt(&self.name).await {
                Ok(Some(node)) if condition_status(&node, "Ready").as_deref() == Some("True") => {
                    break;
                }
                Ok(Some(node)) => serde_yaml::to_string(&node.status).unwrap_or_default(),
                Ok(None) => "<not registered>".into(),
                Err(e) => format!("<get failed: {e}>"),
            };
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("Node {} to be Ready", self.name),
                    timeout: READY_TIMEOUT,
                    last: format!(
                        "{last}\n--- kubelet log:\n{}\n--- containerd log:\n{}",
                        self.log_tail("kubelet", 40),
                        self.log_tail("containerd", 20)
                    ),
                });
            }
            tokio::time::sleep(POLL).await;
        }
        // Optimistic concurrency: kubelet writes the Node too; retry on a conflict.
        let mut attempt = 0;
        loop {
            let node = api.get(&self.name).await?;
            let Some(patch) = node_config::ready_node_patch(&node, &self.pod_cidr) else {
                return Ok(());
            };
            match api
                .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Err(kube::Error::Api(e)) if e.code == 409 && attempt < 5 => attempt += 1,
                result => return result.map(drop).map_err(Error::from),
            }
        }
    }

    async fn start_kube_proxy(&mut self, cp: &ControlPlane, bin: &Path) -> Result<(), Error> {
        let lock = acquire_proxy_lock().await?;
        let cert = cp.pki().client(
            &format!("kube-proxy-{}", sanitize(&self.name)),
            "system:kube-proxy",
            None,
        )?;
        let kubeconfig = self.dir.join("kube-proxy.kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            cp.server(),
            &cp.ca_cert_path(),
            "system:kube-proxy",
            UserAuth::Cert(&cert),
            None,
        )?;
        let ports = free_ports(2)?;
        let config = node_config::kube_proxy_config(
            &kubeconfig,
            &self.name,
            &self.pod_cidr,
            ports[0],
            ports[1],
        );
        let config_path = self.dir.join("kube-proxy.yaml");
        write(&config_path, &config.to_string())?;
        self.kube_proxy = Some(KubeProxy {
            config: config_path.clone(),
            _lock: lock,
        });
        let mut cmd = Command::new(bin.join("kube-proxy"));
        cmd.arg(format!("--config={}", config_path.display()))
            .arg("--v=2")
            .env("PATH", tools::path_with_sbin());
        self.spawn("kube-proxy", cmd)?;

        let deadline = Instant::now() + KUBE_PROXY_TIMEOUT;
        loop {
            self.check_processes()?;
            if http_status(("127.0.0.1", ports[0]), "/healthz") == Some(200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "kube-proxy /healthz".into(),
                    timeout: KUBE_PROXY_TIMEOUT,
                    last: self.log_tail("kube-proxy", 30),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn spawn(&self, name: &str, cmd: Command) -> Result<(), Error> {
        let log = self.dir.join("logs").join(format!("{name}.log"));
        let process = Supervised::spawn(name, cmd, &log)?;
        self.lock_processes().push(process);
        Ok(())
    }

    fn lock_processes(&self) -> std::sync::MutexGuard<'_, Vec<Supervised>> {
        self.processes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Fails with the log tail of the first node process that has exited.
    pub fn check_processes(&self) -> Result<(), Error> {
        self.lock_processes()
            .iter_mut()
            .try_for_each(Supervised::check_running)
    }

    /// The last `lines` lines of a component's log (`containerd`, `kubelet`, `kube-proxy`).
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        crate::process::log_tail(&self.dir.join("logs").join(format!("{name}.log")), lines)
    }

    /// The node's name (its Node object's and its kubelet's `--hostname-override`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's pod subnet, e.g. `10.244.7.0/24`.
    pub fn pod_cidr(&self) -> &str {
        &self.pod_cidr
    }

    /// The node's InternalIP (the machine's address on its default route).
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The Linux bridge the node's pods are attached to.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The temp directory holding configs, logs and the daemons' state.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// containerd's socket (`ctr -a <socket> -n k8s.io ...`).
    pub fn containerd_socket(&self) -> &Path {
        &self.socket
    }

    /// Lets containerd pull from the plain-HTTP registry at `address` (`host:port`), as a real
    /// node's `certs.d/<host>/hosts.toml` does. Takes effect on the next pull.
    pub fn allow_registry(&self, address: &str) -> Result<(), Error> {
        write(
            &self.registry_hosts.join(address).join("hosts.toml"),
            &node_config::registry_hosts(address),
        )
    }

    /// Imports an OCI archive into containerd's `k8s.io` namespace (what the CRI sees).
    pub async fn import_image(&self, archive: &Path) -> Result<(), Error> {
        let out = self
            .ctr(&["images", "import", &archive.display().to_string()])
            .await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "ctr images import {}: {}",
                archive.display(),
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }

    /// Runs `ctr` against this node's containerd in the `k8s.io` namespace.
    pub async fn ctr(&self, args: &[&str]) -> Result<Output, Error> {
        let mut cmd = tokio::process::Command::new(find_program("ctr")?);
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd.output().await.map_err(Error::io("running ctr"))
    }

    /// Whether kube-proxy has programmed a Service rule for `cluster_ip` into the machine's
    /// `nat` table (`KUBE-SERVICES`), i.e. whether connecting to it gets translated here.
    pub async fn proxies(&self, cluster_ip: &str) -> Result<bool, Error> {
        let mut cmd = tokio::process::Command::new(find_program("iptables-save")?);
        cmd.args(["-t", "nat"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = cmd
            .output()
            .await
            .map_err(Error::io("running iptables-save"))?;
        let rules = String::from_utf8_lossy(&out.stdout);
        let needle = format!("-d {cluster_ip}/32");
        Ok(rules
            .lines()
            .any(|l| l.starts_with("-A KUBE-SERVICES") && l.contains(&needle)))
    }

    /// Stops the node and undoes what it did to the machine. Idempotent; also run on drop.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let mut processes = std::mem::take(&mut *self.lock_processes());
        // kube-proxy first, then its rules go while the lock still keeps other Nodes off them.
        if let Some(proxy) = self.kube_proxy.take() {
            stop_named(&mut processes, "kube-proxy");
            self.cleanup_kube_proxy(&proxy.config);
        }
        stop_named(&mut processes, "kubelet");
        self.delete_node_object();
        // Containers and their pause processes live in the node's cgroups, outside any of our
        // process groups; shims daemonize. Both must go before containerd can be stopped cleanly.
        kill_cgroup_processes(&self.cgroup_dirs);
        kill_shims(&self.socket);
        while let Some(mut process) = processes.pop() {
            process.stop();
        }
        self.unmount_all();
        self.delete_bridge();
        remove_cgroups(&self.cgroup_dirs);
        if let Some(mut script) = self.exit_script.take() {
            script.disarm();
        }
        if self.keep_dir {
            tracing::info!(dir = %self.dir.display(), "kept node directory");
        }
        // Dropping the TempDir removes the directory unless cleanup was disabled.
        drop(self.tempdir.take());
    }

    fn cleanup_kube_proxy(&self, config: &Path) {
        let Ok(bin) = tools::node_bin_dir().map(|d| d.join("kube-proxy")) else {
            return;
        };
        let log = self.dir.join("logs/kube-proxy-cleanup.log");
        let result = Command::new(bin)
            .arg(format!("--config={}", config.display()))
            .arg("--cleanup")
            .env("PATH", tools::path_with_sbin())
            .stdin(Stdio::null())
            .output();
        match result {
            Ok(out) => {
                let _ = std::fs::write(&log, [out.stdout, out.stderr].concat());
                if !out.status.success() {
                    tracing::warn!(log = %log.display(), "kube-proxy --cleanup failed");
                }
            }
            Err(e) => tracing::warn!("running kube-proxy --cleanup: {e}"),
        }
        remove_firewall_chain();
    }

    /// Deletes the Node object, so a stopped node is not left looking Ready (there is no node
    /// lifecycle controller to notice). Best effort: the control plane may be gone already.
    fn delete_node_object(&self) {
        let Ok(kubectl) = tools::tool_path("kubectl") else {
            return;
        };
        let result = Command::new(kubectl)
            .args(["delete", "node", &self.name, "--wait=false"])
            .arg("--request-timeout=5s")
            .env("KUBECONFIG", &self.admin_kubeconfig)
            .stdin(Stdio::null())
            .output();
        if let Ok(out) = result
            && !out.status.success()
        {
            tracing::debug!(
                node = %self.name,
                stderr = %String::from_utf8_lossy(&out.stderr),
                "deleting the Node object failed"
            );
        }
    }

    /// Lazily unmounts everything under the node's directory: overlay root filesystems,
    /// network namespaces (which frees their veths) and kubelet's volumes.
    fn unmount_all(&self) {
        let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        for mount in node_config::mounts_under(&mountinfo, &self.dir) {
            let result = Command::new("umount")
                .arg("--lazy")
                .arg(&mount)
                .stdin(Stdio::null())
                .output();
            if let Ok(out) = result
                && !out.status.success()
            {
                tracing::warn!(
                    mount = %mount.display(),
                    stderr = %String::from_utf8_lossy(&out.stderr),
                    "unmount failed"
                );
            }
        }
    }

    fn delete_bridge(&self) {
        let Ok(ip) = find_program("ip") else {
            return;
        };
        let exists = Command::new(&ip)
            .args(["link", "show", &self.bridge])
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success());
        if exists {
            let _ = Command::new(&ip)
                .args(["link", "delete", &self.bridge])
                .stdin(Stdio::null())
                .output();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// kube-proxy (iptables mode) also writes a copy of kubelet's `KUBE-FIREWALL` chain, with
/// jumps from `INPUT` and `OUTPUT`, which `--cleanup` leaves for kubelet; no kubelet here
/// wants it, so it goes too.
fn remove_firewall_chain() {
    const CHAIN: &str = "KUBE-FIREWALL";
    for program in ["iptables", "ip6tables"] {
        let Ok(program) = find_program(program) else {
            continue;
        };
        let run = |args: &[&str]| {
            Command::new(&program)
                .arg("-w")
                .args(args)
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success())
        };
        for hook in ["INPUT", "OUTPUT"] {
            // One jump each is all kube-proxy adds; the bound only guards against a loop.
            for _ in 0..4 {
                if !run(&["-D", hook, "-j", CHAIN]) {
                    break;
                }
            }
        }
        if run(&["-F", CHAIN]) {
            run(&["-X", CHAIN]);
        }
    }
}

fn stop_named(processes: &mut [Supervised], name: &str) {
    for process in processes.iter_mut().filter(|p| p.name() == name) {
        process.stop();
    }
}

/// The address a Node on this machine gets (see [`node_address`]).
pub(crate) fn machine_address() -> Result<Ipv4Addr, Error> {
    node_address(&read("/proc/net/route")?)
}

/// The machine's IPv4 address on its default route (kubelet refuses loopback node IPs), or
/// its first global address.
fn node_address(proc_net_route: &str) -> Result<Ipv4Addr, Error> {
    let ip = find_program("ip")?;
    let mut cmd = Command::new(ip);
    cmd.args(["-4", "-o", "addr", "show", "scope", "global"]);
    if let Some(interface) = node_config::default_route_interface(proc_net_route) {
        cmd.args(["dev", &interface]);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(Error::io("running ip addr"))?;
    node_config::first_inet(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
        Error::Invalid(
            "the machine has no global IPv4 address for the node (kubelet refuses loopback)".into(),
        )
    })
}

/// Creates the node's cgroup root in every hierarchy (cgroup v1 has one per controller;
/// kubelet checks that the root exists in each it uses).
fn create_cgroup_root(name: &str) -> Result<Vec<PathBuf>, Error> {
    let base = Path::new(CGROUP_FS);
    let hierarchies: Vec<PathBuf> = if base.join("cgroup.controllers").exists() {
        vec![base.to_path_buf()]
    } else {
        std::fs::read_dir(base)
            .map_err(Error::io(format!("listing {CGROUP_FS}")))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir() && !p.is_symlink())
            .collect()
    };
    let mut dirs = Vec::new();
    for hierarchy in hierarchies {
        let dir = hierarchy.join(name);
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        // A new v1 cpuset group starts with no CPUs and no memory nodes; give it the parent's.
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = std::fs::read_to_string(hierarchy.join(file)) {
                let _ = std::fs::write(dir.join(file), value.trim());
            }
        }
        dirs.push(dir);
    }
    Ok(dirs)
}

/// SIGKILLs every process in the node's cgroups (pods' pause and containers), until none are
/// left or a few seconds pass.
fn kill_cgroup_processes(roots: &[PathBuf]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids: Vec<i32> = roots
            .iter()
            .flat_map(|root| walk_dirs(root))
            .filter_map(|dir| std::fs::read_to_string(dir.join("cgroup.procs")).ok())
            .flat_map(|procs| {
                procs
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        if pids.is_empty() || Instant::now() >= deadline {
            if !pids.is_empty() {
                tracing::warn!(?pids, "processes left in the node's cgroups");
            }
            return;
        }
        for pid in pids {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kill_shims(socket: &Path) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if node_config::is_shim_of(&cmdline, socket)
            && let Some(pid) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Removes the node's cgroups, children first (cgroupfs directories go with `rmdir`).
fn remove_cgroups(roots: &[PathBuf]) {
    for root in roots {
        let mut dirs = walk_dirs(root);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in dirs {
            if let Err(e) = std::fs::remove_dir(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %dir.display(), "removing a cgroup: {e}");
            }
        }
    }
}

/// `root` and every directory below it.
fn walk_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        stack.extend(
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
        out.push(dir);
    }
    out
}

/// Waits for the machine-wide kube-proxy lock (another test process's Node may hold it).
/// The first subnet no route uses whose lock file this process can take, and that lock.
fn claim_subnet(proc_net_route: &str, start: u8) -> Result<(u8, File), Error> {
    let routes = node_config::route_destinations(proc_net_route);
    for n in node_config::subnet_candidates(&routes, start) {
        let path = subnet_lock_path(n);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Error::io(format!("opening {}", path.display())))?;
        match file.try_lock() {
            Ok(()) => return Ok((n, file)),
            Err(std::fs::TryLockError::WouldBlock) => continue,
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io(format!("locking {}", path.display()))(e));
            }
        }
    }
    Err(Error::Invalid(
        "no free pod subnet in 10.244.0.0/16 (every /24 routed or claimed)".into(),
    ))
}

fn subnet_lock_path(n: u8) -> PathBuf {
    std::env::temp_dir().join(format!("airssys-wasm-subnet-{n}.lock"))
}

fn proxy_lock_path() -> PathBuf {
    std::env::temp_dir().join("airssys-wasm-kube-proxy.lock")
}

async fn acquire_proxy_lock() -> Result<File, Error> {
    let path = proxy_lock_path();
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(Error::io(format!("opening {}", path.display())))?;
    let deadline = Instant::now() + PROXY_LOCK_TIMEOUT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Timeout {
                    what: format!("the kube-proxy lock {}", path.display()),
                    timeout: PROXY_LOCK_TIMEOUT,
                    last: "another Node on this machine runs kube-proxy".into(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io(format!("locking {}", path.display()))(e));
            }
        }
    }
}

/// The status code of `GET path` on `addr`, or `None` if nothing answered.
fn http_status(addr: (&str, u16), path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", addr.0).ok()?;
    let mut head = [0u8; 32];
    let n = stream.read(&mut head).ok()?;
    let text = std::str::from_utf8(&head[..n]).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Where to start looking for a free subnet: differs between concurrent test processes.
fn start_hint(dir: &Path) -> u8 {
    let seed = dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(std::process::id(), |h, b| {
            h.wrapping_mul(31).wrapping_add(u32::from(*b))
        });
    (seed % 254) as u8 + 1
}

/// A node name as it may appear in file and cgroup names.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn read(path: &str) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(Error::io(format!("reading {path}")))
}

fn create_dir(path: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(path).map_err(Error::io(format!("creating {}", path.display())))
}

fn write(path: &Path, contents: &str) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        create_dir(parent)?;
    }
    std::fs::write(path, contents).map_err(Error::io(format!("writing {}", path.display())))
}
