#!/usr/bin/env bash
# Creates the Python Celery virtualenvs the interop tests run against:
#
#   <dir>/celery-5.7.0   celery[redis]==5.7.0 + packaging (kombu 5.7's Redis transport imports it)
#   <dir>/celery-5.4.0   celery[redis]==5.4.0 with kombu 5.4.2 (the pre-5.7 transport: no binding_permanent keys)
#
# <dir> is $CELERIAC_INTEROP_DIR, or target/interop under the workspace root.
# Idempotent: a venv whose stamp file names the same requirements is kept as
# it is, so a second run takes well under a second.
#
# Usage: crates/celeriac-interop/python/setup.sh [PYTHON]   (default: python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
dir="${CELERIAC_INTEROP_DIR:-$root/target/interop}"
python="${1:-${PYTHON:-python3}}"

if ! command -v "$python" >/dev/null 2>&1; then
    echo "setup.sh: $python not found; install CPython 3 (3.8 or later)" >&2
    exit 1
fi

# name|requirements (space separated, passed to pip as they are)
venvs=(
    "celery-5.7.0|celery[redis]==5.7.0 packaging"
    "celery-5.4.0|celery[redis]==5.4.0 kombu==5.4.2"
)

mkdir -p "$dir"
for entry in "${venvs[@]}"; do
    name="${entry%%|*}"
    reqs="${entry#*|}"
    venv="$dir/$name"
    stamp="$venv/.celeriac-stamp"
    want="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])') $reqs"
    if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        echo "setup.sh: $name is ready ($venv)"
        continue
    fi
    echo "setup.sh: creating $name in $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    # shellcheck disable=SC2086 # the requirements are split on purpose
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $reqs
    "$venv/bin/python" -c 'import celery, kombu, redis; print("setup.sh: celery", celery.__version__, "kombu", kombu.__version__, "redis-py", redis.__version__)'
    echo "$want" >"$stamp"
done
