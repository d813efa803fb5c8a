#!/usr/bin/env bash
# Create .venv and install one profile of the pair-trading application.
#
#   ./install.sh [core|lstm|live|advanced|full]     (default: full)
#
# Profiles (each adds to core):
#   core      pandas, numpy, XGBoost, bundled data (skfolio), CLI   -> requirements.txt
#   lstm      + TensorFlow (CPU)                                     -> requirements-lstm.txt
#   live      + alpaca-py, yfinance, pandas_market_calendars        -> requirements-live.txt
#   advanced  + scipy, statsmodels (drift and statistics)            -> requirements-advanced.txt
#   full      everything, with Streamlit and the test tools          -> requirements-full.txt
#
# Idempotent: an existing .venv is reused and pip installs only what is missing.
# Environment: PYTHON (interpreter to use, default python3), VENV (default .venv).
set -euo pipefail

cd "$(dirname "$0")"

fail() {
  echo "install.sh: error: $*" >&2
  exit 1
}

profile="${1:-full}"
case "$profile" in
  core) req=requirements.txt ;;
  lstm | live | advanced | full) req="requirements-${profile}.txt" ;;
  -h | --help)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *) fail "unknown profile '$profile' (choose core, lstm, live, advanced or full)" ;;
esac
[ -f "$req" ] || fail "$req is missing; is this a complete checkout?"

python="${PYTHON:-python3}"
venv="${VENV:-.venv}"

command -v "$python" >/dev/null 2>&1 || fail "'$python' not found; install Python 3.11 or newer (or set PYTHON=/path/to/python3)"
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' ||
  fail "Python 3.11+ required, found $("$python" --version 2>&1); set PYTHON=/path/to/python3.11"

if [ -x "$venv/bin/python" ] && ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  echo "install.sh: $venv is broken (its interpreter does not run); recreating it" >&2
  rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "==> creating $venv with $("$python" --version 2>&1)"
  "$python" -m venv "$venv" || fail "could not create $venv (on Debian/Ubuntu: apt-get install python3-venv)"
fi

echo "==> installing profile '$profile' from $req (pinned, with constraints.txt)"
"$venv/bin/python" -m pip install --disable-pip-version-check --quiet \
  -r "$req" -c constraints.txt ||
  fail "pip could not install $req; see the messages above (network to the package index? disk space?)"

# The project's own modules, editable: any process started from this venv (a `dask worker`, a loky
# worker, a script run elsewhere) imports them from this checkout and sees a `git pull` that
# changes them at once (one that adds a module needs this script again).
# Offline like the step above: pip fetches the pinned build backend (pyproject.toml) from the same
# indexes.
echo "==> installing the project's modules into $venv (editable)"
"$venv/bin/python" -m pip install --disable-pip-version-check --quiet --no-deps -e . ||
  fail "pip could not install the project's modules (pyproject.toml); see the messages above"

mkdir -p data models logs results
echo "==> profile '$profile' installed in $venv"
echo "    next: $venv/bin/python main.py check      (what each profile has)"
echo "          $venv/bin/python main.py process    (build features from the bundled data)"
echo "          $venv/bin/python -m pytest          (run the tests)"
