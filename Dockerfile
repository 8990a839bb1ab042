# syntax=docker/dockerfile:1
# Images for users who build with Docker (or Podman/BuildKit); one target per binary:
#
#   docker build --target airssys-operator -t airssys-operator .
#   docker build --target airssys-agent -t airssys-agent .
#
# The project itself builds its images without a container engine, reproducibly:
# `cargo run --release -p xtask -- image --binary NAME ...` (README, "Images"). Both give the
# same runtime layout: the binary at /usr/local/bin/NAME, user 65532, no shell.

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release --bin airssys-operator --bin airssys-agent \
    && install -D -t /out target/release/airssys-operator target/release/airssys-agent

# distroless/cc: glibc and libgcc as the binaries link them, nothing else; user nonroot (65532).
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG REVISION=unknown
LABEL org.opencontainers.image.source="https://github.com/airsstack/airssys-wasm" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 65532:65532
WORKDIR /

FROM runtime AS airssys-agent
LABEL org.opencontainers.image.title="airssys-agent"
COPY --from=build /out/airssys-agent /usr/local/bin/airssys-agent
ENTRYPOINT ["/usr/local/bin/airssys-agent"]
CMD ["run"]

FROM runtime AS airssys-operator
LABEL org.opencontainers.image.title="airssys-operator"
COPY --from=build /out/airssys-operator /usr/local/bin/airssys-operator
ENTRYPOINT ["/usr/local/bin/airssys-operator"]
CMD ["run"]
