# syntax=docker/dockerfile:1
#
# One image per function, from this one file:
#   docker build --build-arg FUNCTION=order -t REGION-docker.pkg.dev/PROJECT/saga/order:TAG .
# Why one image per function rather than one image for all: each Cloud Run service then
# ships only the code it runs (a smaller image and attack surface, and the image name says
# what it is), while the five builds share the same cached builder stage, so building all
# five costs one compilation.
#
# The builder runs exactly `cargo build --release` of the five function packages, whose
# binaries are named after the functions (checked by cli/tests/saga/deploy.rs).

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=saga-target \
    cargo build --release --locked \
      -p saga-frontend -p saga-order -p saga-inventory -p saga-payments -p saga-janitor \
 && mkdir -p /out \
 && cp target/release/frontend target/release/order target/release/inventory \
       target/release/payments target/release/janitor /out/

# distroless/cc: glibc, libgcc_s (every Rust binary on glibc links it for unwinding) and CA
# certificates; TLS is rustls, compiled in. No shell, no package manager; runs as the
# unprivileged `nonroot` user. (cli/tests/saga/deploy.rs checks it has what the binaries link.)
FROM gcr.io/distroless/cc-debian12:nonroot
ARG FUNCTION
COPY --from=build /out/${FUNCTION} /function
USER nonroot:nonroot
ENV PORT=8080
EXPOSE 8080
ENTRYPOINT ["/function"]
