#!/usr/bin/env bash
# Run a hierclr job on a Ray started on this machine, the way it runs on a cluster: the same
# `ray job submit --working-dir .` command and entrypoint, with the local runtime env (installs nothing:
# the job uses the Python environment that runs this script, e.g. the activated .venv).
#
#   cluster_configs/local/run-local.sh pretrain --config demo
#   cluster_configs/local/run-local.sh pretrain --laptop --config imagenet-r50-200ep   # any preset, shrunk
#   cluster_configs/local/run-local.sh sweep --space demo-sweep
#
# --laptop (pretrain only) adds the overrides of cluster_configs/local/laptop.overrides; later --set win.
# Results go where `hierclr pretrain` puts them (./hierclr_runs, ./hierclr_sweeps, sqlite:///mlflow.db in
# the repository) unless overridden; data paths must be absolute (the job runs in a copy of the repository).
# Ray: the one answering at $RAY_API_SERVER_ADDRESS (default http://127.0.0.1:8265); if none does, this
# starts one on loopback with $HIERCLR_LOCAL_CPUS logical CPUs (default 4) and leaves it running for the
# next job: `ray job list`, `ray job logs -f ID`, `ray job stop ID`, and `ray stop` when done (Ray 2.60's
# `ray stop` has no --address: it stops every Ray process of yours on this machine, not only this head).
set -euo pipefail

verb=${1:?usage: run-local.sh pretrain|sweep [--laptop] ARGS...}
shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
[[ -f "$repo/pipelines/$verb.py" ]] || { echo "run-local.sh: no pipelines/$verb.py" >&2; exit 2; }
address=${RAY_API_SERVER_ADDRESS:-http://127.0.0.1:8265}

defaults=()
case "$verb" in
  pretrain) defaults=(--set "checkpoint.storage_path=$repo/hierclr_runs" --set "tracking.uri=sqlite:///$repo/mlflow.db") ;;
  sweep) defaults=(--set "storage_path=$repo/hierclr_sweeps" --set "set.tracking.uri=sqlite:///$repo/mlflow.db") ;;
esac
if [[ "${1:-}" == --laptop ]]; then
  shift
  [[ "$verb" == pretrain ]] || { echo "run-local.sh: --laptop applies to pretrain only" >&2; exit 2; }
  while IFS= read -r line; do
    line=${line%%#*}
    line=${line//[[:space:]]/}
    [[ -n "$line" ]] && defaults+=(--set "$line")
  done < "$here/laptop.overrides"
fi

# Token authentication (Ray 2.59+) on, as `ray.init()` does locally: the head and the job CLI use the same
# token (RAY_AUTH_TOKEN, else ~/.ray/auth_token, created here once if missing). RAY_AUTH_MODE=disabled opts out.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
if [[ "$RAY_AUTH_MODE" == token && -z "${RAY_AUTH_TOKEN:-}" && -z "${RAY_AUTH_TOKEN_PATH:-}" \
      && ! -f "$HOME/.ray/auth_token" ]]; then
  ray get-auth-token --generate >/dev/null
fi

if ! ray job list --address "$address" >/dev/null 2>&1; then
  echo "run-local.sh: no Ray job server at $address; starting a local Ray head" >&2
  # Its own --temp-dir: a head registered in /tmp/ray would be joined by every plain ray.init() on this
  # machine (`hierclr pretrain` without a job, pytest), which then fails on its explicit CPU count.
  RAY_API_SERVER_ADDRESS="$address" ray start --head --node-ip-address=127.0.0.1 --num-cpus="${HIERCLR_LOCAL_CPUS:-4}" \
    --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="${address##*:}" \
    --temp-dir="${HIERCLR_RAY_TEMP_DIR:-/tmp/hierclr-ray}" --disable-usage-stats
fi

cd "$repo"
exec ray job submit --address "$address" --working-dir . --runtime-env cluster_configs/runtime_env/local.yaml \
  -- python "pipelines/$verb.py" ${defaults[@]+"${defaults[@]}"} "$@"
