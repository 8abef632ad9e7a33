# syntax=docker/dockerfile:1
# phigate's image: the release binary on distroless (glibc, CA certificates, no shell), running
# as a non-root user. Config from a mounted file, secrets from files or the environment, state
# in the /var/lib/phigate volume. See docs/guide/src/deploy.md.
#
#   docker build -t phigate .
#   docker run -v ./phigate.toml:/etc/phigate/phigate.toml:ro -v phigate-data:/var/lib/phigate \
#     -p 6432:6432 -p 6544:6544 phigate

FROM rust:1-bookworm AS build
# libclang: bindgen generates the SQL parser's (libpg_query's) bindings at build time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p phigate \
 && install -m 0755 target/release/phigate /phigate
# The runtime image has glibc, libgcc and libm only: refuse a binary that needs anything else.
RUN ldd /phigate \
 && ! ldd /phigate | grep -vE 'linux-vdso|ld-linux|libc\.so|libm\.so|libgcc_s\.so'
# The data directory, owned by the runtime user so a fresh named volume inherits it.
RUN install -d -m 0700 -o 65532 -g 65532 /out/var/lib/phigate /out/etc/phigate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /phigate /usr/local/bin/phigate
COPY --from=build --chown=65532:65532 /out/ /
USER 65532:65532
VOLUME ["/var/lib/phigate"]
# PostgreSQL clients; HTTP (health, metrics, reviews API, console, MCP).
EXPOSE 6432 6544
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/phigate", "healthcheck", "--url", "http://127.0.0.1:6544/healthz"]
ENTRYPOINT ["/usr/local/bin/phigate"]
CMD ["serve", "--config", "/etc/phigate/phigate.toml"]
