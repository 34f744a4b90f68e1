#!/usr/bin/env bash
# Provision the local 1-master/2-worker cluster with the project's playbooks, run the
# integration tests on it, tear it down and prove nothing is left running.
# Called by `make test` (and `make test-cluster`); needs root for the network namespaces.
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
SETTINGS=var/cluster/pmkt-cluster.yaml

leftovers() {
  # Every daemon the playbooks start carries one of these in its command line.
  pgrep -af 'pm\.daemon=|org\.apache\.spark\.deploy\.(master|worker)|raylet|gcs_server|ray::' || true
}

teardown() {
  echo "== tearing the cluster down"
  $BIN/pmkt --profile cluster cluster down --wipe || echo "teardown reported an error" >&2
  local left; left=$(leftovers)
  if [ -n "$left" ]; then
    echo "processes left after teardown:" >&2; echo "$left" >&2; return 1
  fi
  if [ -n "$(ip netns list 2>/dev/null)" ]; then
    echo "network namespaces left after teardown: $(ip netns list)" >&2; return 1
  fi
  if compgen -G "/tmp/pmkt-ray/*" >/dev/null; then
    echo "Ray temp folders left after teardown: $(ls /tmp/pmkt-ray)" >&2; return 1
  fi
  echo "== teardown left no daemon, Ray process, namespace or Ray temp folder"
}

if [ "$(id -u)" != 0 ]; then
  echo "the local cluster needs root (network namespaces); run as root or set PMKT_SKIP_CLUSTER=1" >&2
  exit 1
fi

start=$(date +%s)
echo "== provisioning the local cluster (ansible/site.yml)"
if ! $BIN/pmkt --profile cluster cluster up; then
  teardown; exit 1
fi
echo "== cluster healthy after $(( $(date +%s) - start ))s"
$BIN/pmkt --settings "$SETTINGS" cluster status
PMKT_REQUIRE_CLUSTER=1 PMKT_CLUSTER_SETTINGS="$SETTINGS" $BIN/python -m pytest tests/integration --durations=10 "$@"
rc=$?
if [ "$rc" != 0 ]; then
  # The wipe removes the Ray logs: keep what says why a Ray process failed in CI's output.
  for f in /tmp/pmkt-ray/*/session_latest/logs/{ray_client_server*,raylet,gcs_server,serve/controller*}.err; do
    [ -s "$f" ] || continue
    echo "== last lines of $f" >&2; tail -n 25 "$f" >&2
  done
fi
teardown || rc=1
exit $rc
