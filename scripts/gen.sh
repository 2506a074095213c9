#!/usr/bin/env bash
# Regenerates the Go code for proto/ with pinned tools installed by `go install`.
# .ci/run calls this and fails if the tree changes afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

BUF_VERSION=v1.75.0
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2

bin="$(pwd)/.tools/bin"
mkdir -p "$bin"
install() { # install PKG VERSION NAME: only when the pinned version is not already there
  local stamp="$bin/.$3-$2"
  if [[ ! -x "$bin/$3" || ! -f "$stamp" ]]; then
    GOBIN="$bin" go install "$1@$2"
    rm -f "$bin/.$3-"*
    touch "$stamp"
  fi
}
install github.com/bufbuild/buf/cmd/buf "$BUF_VERSION" buf
install google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION" protoc-gen-go
install google.golang.org/grpc/cmd/protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION" protoc-gen-go-grpc

export PATH="$bin:$PATH"
buf format -w
buf lint
buf generate
