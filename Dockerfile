# syntax=docker/dockerfile:1
#
# fusionrag: one static binary (serve, engine, ingest, bench, demo) on a small
# Alpine base (for wget in healthchecks and CA certificates), run as a
# non-root user. The cgo backends (openblas, cuda) are not built here: the
# image is the pure-Go CPU build.
#
#   docker build -t fusionrag:local .
#   docker run --rm fusionrag:local demo --quick

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ENV CGO_ENABLED=0
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -ldflags="-s -w" -o /out/fusionrag ./cmd/fusionrag

FROM alpine:3.22
RUN apk add --no-cache ca-certificates \
 && addgroup -S -g 10001 fusionrag \
 && adduser -S -D -H -u 10001 -G fusionrag fusionrag \
 && mkdir -p /models /data \
 && chown fusionrag:fusionrag /models /data
COPY --from=build /out/fusionrag /usr/local/bin/fusionrag
USER 10001:10001
WORKDIR /data
# 8000: engine, 8080: sidecar.
EXPOSE 8000 8080
ENTRYPOINT ["/usr/local/bin/fusionrag"]
CMD ["demo", "--quick"]
