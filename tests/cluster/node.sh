#!/usr/bin/env bash
# Builds and installs what a test Node runs (tests/support's `Node`), once, into a cache
# directory keyed by a hash of its inputs. Prints the bin directory as the last line of stdout;
# everything else goes to stderr.
#
# - containerd, runc, the CNI plugins and iptables: Debian's packages (installed with apt-get
#   when missing; containerd 1.6 speaks the CRI v1 API kubelet 1.34 needs);
# - kubelet, kube-proxy and kube-scheduler (which a cluster with real nodes needs to place
#   DaemonSet and Deployment Pods; the harness starts it with the first Node): built from the
#   SAME pinned Kubernetes module as the control plane (k8s/), so they reuse its Go build cache;
# - pause and echo: tiny static C programs (node/*.c), each packaged as a one-layer OCI image
#   (reproducible: fixed mtimes, owners and order, gzip without names or times), as an OCI
#   layout directory (images/<name>/, for `oras cp --from-oci-layout`) and an OCI archive
#   (images/<name>.tar, for `ctr images import`).
#
#   AIRSSYS_TOOLS_DIR    cache root (default: $HOME/.cache/airssys-wasm/tools); the output lands
#                        in $AIRSSYS_TOOLS_DIR/node-<hash>/bin
#   AIRSSYS_BUILD_JOBS   parallel Go package builds (default: 2)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

log() { printf 'tests/cluster/node.sh: %s\n' "$*" >&2; }

# command : Debian package that provides it
packages=(
    "containerd:containerd"
    "ctr:containerd"
    "runc:runc"
    "iptables:iptables"
    "iptables-save:iptables"
    "gcc:gcc"
)
cni_dirs=(/usr/lib/cni /opt/cni/bin)
cni_plugins=(bridge host-local loopback portmap)

cni_dir() {
    local d p
    for d in "${cni_dirs[@]}"; do
        for p in "${cni_plugins[@]}"; do
            [[ -x "$d/$p" ]] || continue 2
        done
        echo "$d"
        return 0
    done
    return 1
}

missing=()
for entry in "${packages[@]}"; do
    IFS=: read -r cmd pkg <<<"$entry"
    command -v "$cmd" >/dev/null || missing+=("$pkg")
done
cni_dir >/dev/null || missing+=(containernetworking-plugins)
# gcc -static needs glibc's static archive.
[[ -e /usr/lib/x86_64-linux-gnu/libc.a || -e /usr/lib/aarch64-linux-gnu/libc.a ]] ||
    missing+=(libc6-dev)
if ((${#missing[@]})); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    command -v apt-get >/dev/null ||
        { log "missing ${missing[*]} and no apt-get to install them"; exit 1; }
    log "installing ${missing[*]} with apt-get"
    start=$(date +%s)
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    log "installed in $(($(date +%s) - start))s"
fi
# A system containerd, if the package started one, is harmless: a Node's has its own socket
# and directories.

command -v go >/dev/null || { log "go is not on PATH; install Go 1.26 or newer"; exit 1; }

key="$(
    {
        cat "$here/node.sh" "$here"/node/*.c "$here/k8s/go.mod" "$here/k8s/go.sum"
        go version
        gcc --version | head -1
    } | sha256sum | cut -c1-16
)"
root="${AIRSSYS_TOOLS_DIR:-$HOME/.cache/airssys-wasm/tools}"
out="$root/node-$key"
bin="$out/bin"
outputs=(kubelet kube-proxy kube-scheduler pause echo images/pause.tar images/echo.tar images/echo/index.json)

complete() {
    local f
    for f in "${outputs[@]}"; do
        [[ -e "$bin/$f" ]] || return 1
    done
}

if complete; then
    log "reusing $bin"
    echo "$bin"
    exit 0
fi

mkdir -p "$out"
exec 9>"$out/.lock"
flock 9
if complete; then
    log "reusing $bin (built while waiting)"
    echo "$bin"
    exit 0
fi

export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod"
export GOMAXPROCS="${GOMAXPROCS:-2}"
jobs="${AIRSSYS_BUILD_JOBS:-2}"
staging="$out/bin.partial"
rm -rf "$staging"
mkdir -p "$staging/images"
timer=()
if [[ -x /usr/bin/time ]]; then
    timer=(/usr/bin/time -v -a -o "$out/build-times.log")
fi
start=$(date +%s)

# The same version stamp as build.sh's, so the shared packages' build cache entries match.
k8s_version="$(grep -oE 'k8s\.io/kubernetes v[0-9]+\.[0-9]+\.[0-9]+' "$here/k8s/go.mod" | head -1 | cut -d' ' -f2)"
k8s_minor="$(cut -d. -f2 <<<"$k8s_version")"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
for name in kubelet kube-proxy kube-scheduler; do
    log "go build $name"
    echo "=== $name" >>"$out/build-times.log"
    (cd "$here/k8s" && "${timer[@]}" go build -p "$jobs" -trimpath -ldflags="$ldflags" \
        -o "$staging/$name" "k8s.io/kubernetes/cmd/$name")
done

for name in pause echo; do
    log "gcc -static $name"
    gcc -static -O2 -Wall -Wextra -Werror -o "$staging/$name" "$here/node/$name.c"
    strip "$staging/$name"
done

case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    *) log "unsupported machine $(uname -m)"; exit 1 ;;
esac

# Archives that depend only on their files' names, modes and bytes.
det_tar() { tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=ustar "$@"; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# image NAME REF: a one-layer OCI image whose layer holds /NAME and whose entrypoint is /NAME,
# named REF in the archive (containerd's image name) and tagged with REF's tag in the layout.
image() {
    local name="$1" ref="$2" work layout blobs layer_gz diff_id config manifest
    work="$(mktemp -d)"
    layout="$staging/images/$name"
    blobs="$layout/blobs/sha256"
    mkdir -p "$work/rootfs" "$blobs"
    install -m 0755 "$staging/$name" "$work/rootfs/$name"
    det_tar -C "$work/rootfs" -cf "$work/layer.tar" "$name"
    diff_id="$(sha "$work/layer.tar")"
    gzip -n -9 -c "$work/layer.tar" >"$work/layer.tar.gz"
    layer_gz="$(sha "$work/layer.tar.gz")"
    cp "$work/layer.tar.gz" "$blobs/$layer_gz"
    printf '{"architecture":"%s","os":"linux","config":{"Entrypoint":["/%s"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
        "$arch" "$name" "$diff_id" >"$work/config.json"
    config="$(sha "$work/config.json")"
    cp "$work/config.json" "$blobs/$config"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
        "$config" "$(size "$work/config.json")" "$layer_gz" "$(size "$work/layer.tar.gz")" \
        >"$work/manifest.json"
    manifest="$(sha "$work/manifest.json")"
    cp "$work/manifest.json" "$blobs/$manifest"
    printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
        "$manifest" "$(size "$work/manifest.json")" "$ref" "${ref##*:}" >"$layout/index.json"
    det_tar -C "$layout" -cf "$staging/images/$name.tar" oci-layout index.json blobs
    rm -rf "$work"
    log "image $ref: manifest sha256:$manifest"
}
# The names tests/support uses: the sandbox image containerd is configured with, and a
# workload image tests push to their registry.
image pause "registry.airssys.test/pause:3.10"
image echo "registry.airssys.test/echo:1"

mv "$staging" "$bin.new"
rm -rf "$bin"
mv "$bin.new" "$bin"
log "built in $(($(date +%s) - start))s; per-binary time and memory in $out/build-times.log"
echo "$bin"
