#!/usr/bin/env bash
# Install pyslurm built for the Slurm installed on this machine, for the pyslurm Slurm client and its tests.
#
# pyslurm is version-locked to libslurm: pyslurm M.m.x builds only against Slurm M.0m (22.5.x for Debian 12's
# Slurm 22.05). PyPI carries a few releases only (25.11 and much older ones), so the source is, first found:
# PyPI's pyslurm==M.m.*, else the sdist in third_party/pyslurm/ (22.5.3, tag v22.5.3 of
# github.com/PySlurm/pyslurm: GitHub is not reachable from CI). The wheel is built once against Debian's
# libslurm-dev and kept in ~/.cache/provisioner/wheels/slurm-<version>/; a fresh environment installs it in
# seconds. Idempotent: nothing is done when the installed pyslurm matches `sinfo --version`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
log() { echo "pyslurm: $*"; }

slurm=$(sinfo --version 2>/dev/null | awk '{print $NF}') || true
[[ $slurm =~ ^([0-9]+)\.([0-9]+) ]] || { log "no Slurm here (sinfo --version), nothing to build for"; exit 0; }
mm="${BASH_REMATCH[1]}.$((10#${BASH_REMATCH[2]}))"  # 22.05.8 -> 22.5, as pyslurm numbers its releases

# the version the installed distribution says (importing pyslurm would initialise libslurm)
have=$(python3 -c 'import importlib.metadata as m; print(m.version("pyslurm"))' 2>/dev/null || true)
if [[ $have == "$mm".* ]]; then
  log "pyslurm $have installed, matches Slurm $slurm"
  exit 0
fi

if ! dpkg-query -W -f='${Status}' libslurm-dev 2>/dev/null | grep -q "install ok installed"; then
  log "installing libslurm-dev"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends libslurm-dev >/dev/null
fi

py=$(python3 -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
cache="${XDG_CACHE_HOME:-$HOME/.cache}/provisioner/wheels/slurm-$slurm"
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9  # one build at a time: a second caller waits and installs the first one's wheel
wheel=$(ls "$cache"/pyslurm-"$mm".*-"$py"-*.whl 2>/dev/null | sort -V | tail -1 || true)
if [[ -z $wheel ]]; then
  # pyslurm's setup.py looks for slurm.h and libslurm.so here (it defaults to /usr/lib64)
  export SLURM_INCLUDE_DIR=/usr/include
  SLURM_LIB_DIR="/usr/lib/$(gcc -print-multiarch)"
  export SLURM_LIB_DIR
  t0=$(date +%s)
  sdist=$(ls "$here"/../third_party/pyslurm/pyslurm-"$mm".*.tar.gz 2>/dev/null | sort -V | tail -1 || true)
  log "building pyslurm $mm.* for Slurm $slurm (several minutes: Cython, then C)"
  if ! python3 -m pip wheel -q --no-deps "pyslurm==$mm.*" -w "$cache" 2>"$cache/pypi.log"; then
    [[ -n $sdist ]] || { cat "$cache/pypi.log"; log "no pyslurm $mm.* on PyPI nor in third_party/pyslurm"; exit 1; }
    log "not on PyPI: from $(basename "$sdist")"
    python3 -m pip wheel -q --no-deps "$sdist" -w "$cache"
  fi
  wheel=$(ls "$cache"/pyslurm-"$mm".*-"$py"-*.whl | sort -V | tail -1)
  log "built $(basename "$wheel") in $(( $(date +%s) - t0 )) s"
fi
python3 -m pip install -q --no-deps --force-reinstall "$wheel"
log "installed $(basename "$wheel")"
