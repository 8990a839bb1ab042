// Pins go-containerregistry's small OCI registry (cmd/registry).
module airssys.dev/tests/cluster/registry

go 1.26.0

tool github.com/google/go-containerregistry/cmd/registry

require github.com/google/go-containerregistry v0.22.1 // indirect
