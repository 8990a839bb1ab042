#!/usr/bin/env bash
# Builds the test cluster's binaries (kube-apiserver, kube-controller-manager, kubectl, etcd,
# helm, registry, oras, cosign) from the pinned Go modules beside this script, once, into a
# cache directory keyed by a hash of those modules and this script. Prints the bin directory
# as the last line of stdout; everything else goes to stderr.
#
#   AIRSSYS_TOOLS_DIR    cache root (default: $HOME/.cache/airssys-wasm/tools); the binaries
#                        land in $AIRSSYS_TOOLS_DIR/<hash>/bin
#   AIRSSYS_BUILD_JOBS   parallel Go package builds (default: 2)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

# module directory : package : binary name
targets=(
    "k8s:k8s.io/kubernetes/cmd/kube-apiserver:kube-apiserver"
    "k8s:k8s.io/kubernetes/cmd/kube-controller-manager:kube-controller-manager"
    "k8s:k8s.io/kubernetes/cmd/kubectl:kubectl"
    "etcd:go.etcd.io/etcd/server/v3:etcd"
    "helm:helm.sh/helm/v3/cmd/helm:helm"
    "registry:airssys.dev/tests/cluster/registry:registry"
    "oras:oras.land/oras/cmd/oras:oras"
    "cosign:github.com/sigstore/cosign/v2/cmd/cosign:cosign"
)

log() { printf 'tests/cluster/build.sh: %s\n' "$*" >&2; }

command -v go >/dev/null || { log "go is not on PATH; install Go 1.26 or newer"; exit 1; }

# The key covers every input that changes the binaries: the pinned modules, this script and
# the Go toolchain that compiles them.
key="$(
    {
        cat "$here/build.sh"
        for f in "$here"/*/go.mod "$here"/*/go.sum; do
            printf '%s\n' "${f#"$here"/}"
            cat "$f"
        done
        go version
    } | sha256sum | cut -c1-16
)"
root="${AIRSSYS_TOOLS_DIR:-$HOME/.cache/airssys-wasm/tools}"
out="$root/$key"
bin="$out/bin"

complete() {
    local t name
    for t in "${targets[@]}"; do
        name="${t##*:}"
        [[ -x "$bin/$name" ]] || return 1
    done
}

if complete; then
    log "reusing $bin"
    echo "$bin"
    exit 0
fi

mkdir -p "$out"
# Several test binaries may ask for the tools at once; one builds, the others wait here.
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
mkdir -p "$staging"

timer=()
if [[ -x /usr/bin/time ]]; then
    timer=(/usr/bin/time -v -a -o "$out/build-times.log")
fi

# Stamp the Kubernetes version like the release build does, so `kubectl version` and the API
# server's /version report the pinned release instead of v0.0.0-master.
k8s_version="$(grep -oE 'k8s\.io/kubernetes v[0-9]+\.[0-9]+\.[0-9]+' "$here/k8s/go.mod" | head -1 | cut -d' ' -f2)"
[[ -n "$k8s_version" ]] || { log "k8s/go.mod does not require k8s.io/kubernetes"; exit 1; }
k8s_minor="$(cut -d. -f2 <<<"$k8s_version")"
k8s_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
    k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

helm_version="$(grep -oE 'helm\.sh/helm/v3 v[0-9]+\.[0-9]+\.[0-9]+' "$here/helm/go.mod" | head -1 | cut -d' ' -f2)"
helm_ldflags=" -X helm.sh/helm/v3/internal/version.version=$helm_version"
helm_ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"

start=$(date +%s)
log "building into $bin (first time: tens of minutes on 2 cores)"
for t in "${targets[@]}"; do
    IFS=: read -r dir pkg name <<<"$t"
    log "go build $name ($pkg)"
    echo "=== $name" >>"$out/build-times.log"
    ldflags="-s -w"
    [[ "$dir" == k8s ]] && ldflags+="$k8s_ldflags"
    [[ "$dir" == helm ]] && ldflags+="$helm_ldflags"
    (cd "$here/$dir" && "${timer[@]}" go build -p "$jobs" -trimpath -ldflags="$ldflags" \
        -o "$staging/$name" "$pkg")
done
mv "$staging" "$bin.new"
rm -rf "$bin"
mv "$bin.new" "$bin"
log "built in $(($(date +%s) - start))s; per-binary time and memory in $out/build-times.log"
echo "$bin"
