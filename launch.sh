#!/usr/bin/env bash
# jtl launcher. Sets up .venv on first use (and the Fashion-MNIST package when run
# as root), then:
#   ./launch.sh CONFIG[:ARGS] [--config.FIELD=VALUE ...] --workdir DIR   one run
#   ./launch.sh experiments/NAME.py [ARGS ...]                           a study or benchmark
#   ./launch.sh sweep experiments/NAME.py [--workdir DIR] [--print_commands]   a study's grid
#   ./launch.sh report DIR                                               RESULTS.md of a sweep
#   ./launch.sh test [PYTEST ARGS ...]                                   the tests
set -euo pipefail
cd "$(dirname "$0")"

setup() {
  if [[ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]] && [[ $(id -u) == 0 ]]; then
    echo "jtl: installing Debian's dataset-fashion-mnist ..." >&2
    (apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }) >&2
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
  sed -n '2,8p' "$0"; exit 2
fi
if [[ $1 == -h || $1 == --help ]]; then
  sed -n '2,8p' "$0"; echo "  CONFIG --help shows a config's arguments and fields; .venv/bin/jtl list shows what exists."; exit 0
fi
setup
export PYTHONUNBUFFERED=1
case "$1" in
  test) shift; exec .venv/bin/python -m pytest "$@" ;;
  sweep|report) exec .venv/bin/python -m jtl.cli "$@" ;;
  experiments/*.py) exec .venv/bin/python "$@" ;;
  *) config="$1"; shift; exec .venv/bin/python -m jtl.main --config="$config" "$@" ;;
esac
