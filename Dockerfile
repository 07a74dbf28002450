# Multi-stage build: compile with the Rust toolchain, run on a slim Debian as a non-root user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
COPY workflows ./workflows
COPY config ./config
COPY templates ./templates
COPY assets ./assets
RUN cargo build --release --bin marketflow

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/marketflow marketflow \
    && mkdir -p /var/lib/marketflow/data && chown -R marketflow /var/lib/marketflow
COPY --from=build /src/target/release/marketflow /usr/local/bin/marketflow
COPY --from=build /src/workflows /usr/share/marketflow/workflows
COPY --from=build /src/config /usr/share/marketflow/config
USER marketflow
ENV MARKETFLOW_LISTEN=0.0.0.0:8080 \
    MARKETFLOW_DATA_DIR=/var/lib/marketflow/data \
    MARKETFLOW_LOG_FORMAT=json
VOLUME ["/var/lib/marketflow/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/marketflow"]
CMD ["serve"]
