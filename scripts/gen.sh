#!/usr/bin/env bash
# Regenerates the code for proto/ (buf.gen.yaml): Go with pinned tools installed by `go install`,
# Python with Debian's protoc and grpc_python_plugin (apt-get install protobuf-compiler
# protobuf-compiler-grpc; .ci/run installs them), TypeScript with ts-proto pinned in
# client/typescript/package-lock.json (installed here by `npm ci`).
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

# protoc's builtin python/pyi generators are part of protoc: another protoc version writes other
# bytes, so the committed output is tied to the one Debian 12 ships (3.21.12). proto3 `optional`
# (search.proto) needs protoc 3.15 or newer in any case.
PROTOC_WANT="libprotoc 3.21."
if ! command -v protoc >/dev/null || ! command -v grpc_python_plugin >/dev/null; then
  echo "gen.sh: protoc and grpc_python_plugin are missing: apt-get install protobuf-compiler protobuf-compiler-grpc" >&2
  exit 1
fi
if [[ "$(protoc --version)" != "$PROTOC_WANT"* ]]; then
  echo "gen.sh: $(protoc --version) would generate other Python code than the committed ${PROTOC_WANT}x (Debian 12's protobuf-compiler)" >&2
  exit 1
fi

# ts-proto and the TypeScript client's dependencies, exactly as package-lock.json pins them;
# reinstalled only when the lock file changes.
ts=client/typescript
if ! command -v npm >/dev/null; then
  echo "gen.sh: npm is missing: install Node.js 20 or newer with npm (ts-proto generates $ts/src/gen)" >&2
  exit 1
fi
lock_sum=$(sha256sum "$ts/package-lock.json" | cut -d' ' -f1)
if [[ ! -f "$ts/node_modules/.credbroker-lock-$lock_sum" ]]; then
  (cd "$ts" && npm ci --no-audit --no-fund --silent)
  touch "$ts/node_modules/.credbroker-lock-$lock_sum"
fi

export PATH="$bin:$(pwd)/$ts/node_modules/.bin:$PATH"
buf format -w
buf lint
buf generate
