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
# A relative path (folder:PATH, --workdir, init=) means the directory you run this from,
# as with .venv/bin/jtl; the repository's configs/ and experiments/ are found from anywhere.
set -euo pipefail
# The command as typed, for a sweep's provenance (jtl/sweep.py typed_command).
export JTL_COMMAND=$(printf '%q ' "$0" "$@")
here=$(cd "$(dirname "$0")" && pwd)   # The repository; the caller's directory stays the cwd.
py=$here/.venv/bin/python

# One line per set-up step; the tools' own output goes to .venv/setup.log, shown on failure.
step() {
  local log=$here/.venv/setup.log
  mkdir -p "$here/.venv"
  echo "+ $*" >>"$log"
  "$@" >>"$log" 2>&1 || { local rc=$?; echo "jtl: error: set-up step failed: $*; the end of $log:" >&2
                          tail -n 25 "$log" >&2; exit $rc; }
}

setup() (
  cd "$here"
  # Debian's packages, when run as root: Fashion-MNIST's files, and oneDNN, whose CPU
  # convolutions jtl/ops compiles against on first use (without it jtl uses XLA's).
  local want=()
  [[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]] || want+=(dataset-fashion-mnist)
  [[ -f /usr/include/oneapi/dnnl/dnnl.hpp || -f /usr/include/dnnl.hpp ]] || want+=(libdnnl-dev)
  if [[ ${#want[@]} -gt 0 && $(id -u) == 0 ]]; then
    echo "jtl: installing Debian's ${want[*]} ..." >&2
    step bash -c 'apt-get install -y -q "$@" || { apt-get update -q && apt-get install -y -q "$@"; }' \
      apt "${want[@]}"
  fi
  if [[ ! -x .venv/bin/python ]]; then
    echo "jtl: creating .venv ..." >&2
    python3 -m venv .venv
  fi
  # Reinstall only when pyproject.toml changed since the last install.
  if [[ ! -f .venv/.jtl-installed || pyproject.toml -nt .venv/.jtl-installed ]]; then
    echo "jtl: installing jtl and its packages into .venv (log: .venv/setup.log) ..." >&2
    step .venv/bin/python -m pip install -q --upgrade pip
    step .venv/bin/python -m pip install -q -e ".[test]"
    touch .venv/.jtl-installed
  fi
)

# gloo's line per process ("[Gloo] Rank 0 is connected to 1 peer ranks...") says nothing to a user.
quiet_gloo() { grep --line-buffered -v '^\[Gloo\] Rank [0-9]* is connected to' || true; }

if [[ $# -eq 0 ]]; then
  sed -n '2,16p' "$0"; exit 2
fi
if [[ $1 == -h || $1 == --help ]]; then
  sed -n '2,16p' "$0"; echo "  CONFIG --help shows a config's arguments and fields; .venv/bin/jtl list shows what exists."; exit 0
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
# glibc's malloc on transparent huge pages: XLA:CPU's step buffers are faulted in 2 MiB, not
# 4 KiB, at a time (1.1-1.4x faster train steps here; see jtl/start.py). A hugetlb setting
# of the caller's own is kept.
[[ ${GLIBC_TUNABLES:-} == *glibc.malloc.hugetlb* ]] ||
  export GLIBC_TUNABLES=${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1
# This checkout's jtl, whichever directory the command is typed in.
export PYTHONPATH=$here${PYTHONPATH:+:$PYTHONPATH}
case "$1" in
  --slurm)
    shift; config="$1"; shift
    command -v srun >/dev/null || { echo "jtl: error: --slurm runs srun, which is not here; use it inside a SLURM allocation (sbatch or salloc)." >&2; exit 2; }
    exec srun --kill-on-bad-exit=1 env JTL_DISTRIBUTED=1 "$py" -m jtl.main --config="$config" "$@" ;;
  --processes)
    [[ $# -ge 3 && $2 =~ ^[1-9][0-9]*$ ]] || { echo "usage: ./launch.sh --processes N CONFIG ..." >&2; exit 2; }
    n=$2 config=$3; shift 3
    port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    pids=()
    for ((i = 0; i < n; i++)); do
      JTL_NUM_PROCESSES=$n JTL_PROCESS_ID=$i JTL_COORDINATOR=127.0.0.1:$port \
        "$py" -m jtl.main --config="$config" "$@" > >(quiet_gloo) 2> >(quiet_gloo >&2) &
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
  test) shift; cd "$here"; exec "$py" -m pytest "$@" ;;
  adapt|sweep|report|diagnose|recommend) exec "$py" -m jtl.cli "$@" ;;
  experiments/*.py)
    script=$1; shift
    [[ -f $script || ! -f $here/$script ]] || script=$here/$script   # the repository's own
    exec "$py" "$script" "$@" ;;
  *) config="$1"; shift; exec "$py" -m jtl.main --config="$config" "$@" ;;
esac
