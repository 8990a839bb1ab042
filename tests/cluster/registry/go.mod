// The tests' OCI registry (main.go): go-containerregistry's registry handler with blobs on
// disk and optional Basic or token authentication.
module airssys.dev/tests/cluster/registry

go 1.26.0

require github.com/google/go-containerregistry v0.22.1
