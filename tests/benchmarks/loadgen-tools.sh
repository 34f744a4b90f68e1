#!/usr/bin/env bash
# The load generators of `make bench-serving`, built from the Go module proxy into .tools/
# (nothing else is downloaded), so the client is never the bottleneck a Python one would be:
#   .tools/ghz-$GHZ_VERSION/ghz          gRPC   go install github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION
#   .tools/vegeta-$VEGETA_VERSION/vegeta HTTP   go install github.com/tsenart/vegeta/v12@$VEGETA_VERSION
#
# Usage: tests/benchmarks/loadgen-tools.sh    build what is missing, then print the two paths
#
# Re-runs are no-ops once both are present (about a minute each to build cold on 2 cores).
set -euo pipefail

GHZ_VERSION=v0.93.0
VEGETA_VERSION=v12.13.0

root=$(cd "$(dirname "$0")/../.." && pwd)
tools=$root/.tools
mkdir -p "$tools"
if [[ $# -gt 0 ]]; then
  sed -n '2,8p' "$0" >&2
  exit 2
fi
go=$(command -v go || true)
[[ -n $go ]] || { [[ -x /usr/local/go/bin/go ]] && go=/usr/local/go/bin/go; }
exec 9>"$tools/.lock"
flock 9

build() {  # build NAME VERSION PACKAGE
  local dir=$tools/$1-$2
  [[ -x $dir/$1 ]] && return 0
  [[ -n $go ]] || { echo "loadgen-tools.sh: Go is not installed (need Go >= 1.21)" >&2; exit 1; }
  echo "loadgen-tools.sh: building $1 $2 ..." >&2
  local start=$SECONDS
  GOBIN=$dir.partial GOFLAGS=-buildvcs=false "$go" install -ldflags "-s -w" "$3@$2" >&2
  rm -rf "$dir" && mv "$dir.partial" "$dir"
  echo "loadgen-tools.sh: $1 built in $((SECONDS - start)) s" >&2
}

build ghz "$GHZ_VERSION" github.com/bojand/ghz/cmd/ghz
build vegeta "$VEGETA_VERSION" github.com/tsenart/vegeta/v12
echo "GHZ=$tools/ghz-$GHZ_VERSION/ghz"
echo "VEGETA=$tools/vegeta-$VEGETA_VERSION/vegeta"
