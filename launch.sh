#!/usr/bin/env bash
# jtl launcher. Sets up .venv on first use (and Debian's Fashion-MNIST and oneDNN
# packages when run as root), then:
#   ./launch.sh CONFIG[:ARGS] [--config.FIELD=VALUE ...] --workdir DIR   one run
#   ./launch.sh experiments/NAME.py [ARGS ...]                           a study or benchmark
#   ./launch.sh sweep experiments/NAME.py [--workdir DIR] [--print_commands]   a study's grid
#   ./launch.sh report DIR                                               RESULTS.md of a sweep
#   ./launch.sh diagnose CONFIG[:ARGS] [--sources A,B]                   transferability scores
#   ./launch.sh recommend CONFIG[:ARGS]                                  a strategy from cheap signals
#   ./launch.sh test [PYTEST ARGS ...]                                   the tests
# One run on several processes (jtl/distributed.py), before CONFIG:
#   --processes N        N processes on this machine (CPU collectives through gloo)
#   --slurm              srun inside a SLURM allocation (sbatch/salloc), one process per task
#   --tpu NAME --zone Z  every worker of a Cloud TPU VM pod (the repo at ~/jtl there, or $JTL_REMOTE_DIR)
set -euo pipefail
cd "$(dirname "$0")"

setup() {
  # Debian's packages, when run as root: Fashion-MNIST's files, and oneDNN, whose CPU
  # convolutions jtl/ops compiles against on first use (without it jtl uses XLA's).
  local want=()
  [[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]] || want+=(dataset-fashion-mnist)
  [[ -f /usr/include/oneapi/dnnl/dnnl.hpp || -f /usr/include/dnnl.hpp ]] || want+=(libdnnl-dev)
  if [[ ${#want[@]} -gt 0 && $(id -u) == 0 ]]; then
    echo "jtl: installing Debian's ${want[*]} ..." >&2
    (apt-get install -y -q "${want[@]}" || { apt-get update -q && apt-get install -y -q "${want[@]}"; }) >&2
  fi
  if [[ ! -x .venv/bin/python ]]; then
    echo "jtl: creating .venv ..." >&2
    python3 -m venv .venv
  fi
  # Reinstall only when pyproject.toml changed since the last install.
  if [[ ! -f .venv/.jtl-installed || pyproject.toml -nt .venv/.jtl-installed ]]; then
    echo "jtl: installing jtl and its packages into .venv ..." >&2
    .venv/bin/python -m pip install -q --upgrade pip >&2
    .venv/bin/python -m pip install -q -e ".[test]" >&2
    touch .venv/.jtl-installed
  fi
}

if [[ $# -eq 0 ]]; then
  sed -n '2,14p' "$0"; exit 2
fi
if [[ $1 == -h || $1 == --help ]]; then
  sed -n '2,14p' "$0"; echo "  CONFIG --help shows a config's arguments and fields; .venv/bin/jtl list shows what exists."; exit 0
fi
case "$1" in
  --tpu)
    # Every worker runs this script with the same arguments; JAX finds the pod's processes.
    [[ $# -ge 5 && $3 == --zone ]] || { echo "usage: ./launch.sh --tpu NAME --zone ZONE CONFIG ..." >&2; exit 2; }
    name=$2 zone=$4; shift 4
    command -v gcloud >/dev/null || { echo "jtl: error: --tpu runs the gcloud CLI on every worker, and gcloud is not installed here." >&2; exit 2; }
    exec gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all \
      --command="cd ${JTL_REMOTE_DIR:-~/jtl} && JTL_DISTRIBUTED=1 ./launch.sh $(printf '%q ' "$@")" ;;
esac
setup
export PYTHONUNBUFFERED=1
case "$1" in
  --slurm)
    shift; config="$1"; shift
    command -v srun >/dev/null || { echo "jtl: error: --slurm runs srun, which is not here; use it inside a SLURM allocation (sbatch or salloc)." >&2; exit 2; }
    exec srun --kill-on-bad-exit=1 env JTL_DISTRIBUTED=1 .venv/bin/python -m jtl.main --config="$config" "$@" ;;
  --processes)
    [[ $# -ge 3 && $2 =~ ^[1-9][0-9]*$ ]] || { echo "usage: ./launch.sh --processes N CONFIG ..." >&2; exit 2; }
    n=$2 config=$3; shift 3
    port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    pids=()
    for ((i = 0; i < n; i++)); do
      JTL_NUM_PROCESSES=$n JTL_PROCESS_ID=$i JTL_COORDINATOR=127.0.0.1:$port \
        .venv/bin/python -m jtl.main --config="$config" "$@" &
      pids+=($!)
    done
    trap 'kill "${pids[@]}" 2>/dev/null' INT TERM
    # The first process to fail ends the others, which would wait on it forever.
    for ((i = 0; i < n; i++)); do
      wait -n || { rc=$?; kill "${pids[@]}" 2>/dev/null; wait; exit $rc; }
    done
    exit 0 ;;
esac
case "$1" in
  test) shift; exec .venv/bin/python -m pytest "$@" ;;
  sweep|report|diagnose|recommend) exec .venv/bin/python -m jtl.cli "$@" ;;
  experiments/*.py) exec .venv/bin/python "$@" ;;
  *) config="$1"; shift; exec .venv/bin/python -m jtl.main --config="$config" "$@" ;;
esac
