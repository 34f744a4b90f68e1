#!/usr/bin/env bash
# The pinned tools that validate the Helm chart offline, built or fetched from the Go module
# proxy into .tools/ (nothing else is downloaded):
#   .tools/helm-$HELM_VERSION/helm          go install helm.sh/helm/v4/cmd/helm@$HELM_VERSION
#   .tools/kuberay-$KUBERAY_VERSION/*.yaml  KubeRay's CRDs (RayService, RayJob, RayCluster) from
#                                           the module github.com/ray-project/kuberay/ray-operator
#
# Usage: helm/tools.sh    build or fetch what is missing, then print the two paths
#
# Re-runs are no-ops once both are present. Go's module and build caches (~/go/pkg/mod,
# ~/.cache/go-build) make a repeat build fast but are not needed: a cold build of helm takes
# about 2.5 minutes on 2 cores (empty caches, 2026-11-30).
# Needs Go on PATH or in /usr/local/go (helm v4.3.1 needs 1.26; Go >= 1.21 fetches that
# toolchain from the module proxy by itself, GOTOOLCHAIN=auto).
set -euo pipefail

HELM_VERSION=v4.3.1
KUBERAY_VERSION=v1.5.1

root=$(cd "$(dirname "$0")/.." && pwd)
tools=$root/.tools
helm_dir=$tools/helm-$HELM_VERSION
crd_dir=$tools/kuberay-$KUBERAY_VERSION
mkdir -p "$tools"

if [[ $# -gt 0 ]]; then
  sed -n '2,8p' "$0" >&2
  exit 2
fi

go=$(command -v go || true)
[[ -n $go ]] || { [[ -x /usr/local/go/bin/go ]] && go=/usr/local/go/bin/go; }

# One builder at a time: a second call blocks here until the first is done, then finds the tools.
exec 9>"$tools/.lock"
flock 9

if [[ ! -x $helm_dir/helm ]]; then
  [[ -n $go ]] || { echo "helm/tools.sh: Go is not installed (need Go >= 1.21 on PATH or in /usr/local/go)" >&2; exit 1; }
  echo "helm/tools.sh: building helm $HELM_VERSION with $($go version | cut -d' ' -f3) (~2.5 min with empty Go caches) ..."
  start=$SECONDS
  # The version stamp is what `helm version` prints; go install leaves it at the major.minor.
  GOBIN=$helm_dir.partial GOFLAGS=-buildvcs=false "$go" install \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
  rm -rf "$helm_dir" && mv "$helm_dir.partial" "$helm_dir"
  echo "helm/tools.sh: helm built in $((SECONDS - start)) s"
fi

if [[ ! -f $crd_dir/ray.io_rayservices.yaml ]]; then
  [[ -n $go ]] || { echo "helm/tools.sh: Go is not installed (need Go >= 1.21 on PATH or in /usr/local/go)" >&2; exit 1; }
  mod_dir=$("$go" mod download -json "github.com/ray-project/kuberay/ray-operator@$KUBERAY_VERSION" \
            | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [[ -d $mod_dir/config/crd/bases ]] || { echo "helm/tools.sh: no config/crd/bases in the KubeRay module ($mod_dir)" >&2; exit 1; }
  rm -rf "$crd_dir.partial" && mkdir -p "$crd_dir.partial"
  cp "$mod_dir"/config/crd/bases/ray.io_*.yaml "$crd_dir.partial/"
  chmod u+w "$crd_dir.partial"/*
  rm -rf "$crd_dir" && mv "$crd_dir.partial" "$crd_dir"
fi

"$helm_dir/helm" version --short >/dev/null
echo "HELM=$helm_dir/helm"
echo "KUBERAY_CRDS=$crd_dir"
