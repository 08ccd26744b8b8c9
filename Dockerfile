# syntax=docker/dockerfile:1
# buildcluster-worker: a static-ish Rust binary on a distroless, non-root runtime.
#
#   docker build -t buildcluster-worker:dev .
#   docker run --rm buildcluster-worker:dev --help
#
# Builder and runtime are both Debian 12 (bookworm), so the binary's glibc matches the
# runtime's. TLS is rustls (ring): no OpenSSL is needed at build or run time.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# The whole workspace (every member's Cargo.toml is needed to resolve it); .dockerignore keeps
# target/ and .git/ out. The cache mounts keep the registry and target/ between builds.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p buildcluster-worker \
    && install -D -m 0755 target/release/buildcluster-worker /out/buildcluster-worker

# cc: glibc, libgcc and CA certificates, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/buildcluster-worker /usr/local/bin/buildcluster-worker
# 65532 is distroless's `nonroot`; numeric so that runAsNonRoot can verify it.
USER 65532:65532
# /metrics, /healthz, /readyz
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/buildcluster-worker"]
CMD ["run", "--config", "/etc/bcw/config.yaml"]
