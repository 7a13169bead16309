# Source this file (bash): it creates the DuST virtual environment once per machine
# (default ~/.cache/dust-venv, or $DUST_VENV), installs this checkout into it with
# the test extra, and activates it. pip's cache makes repeated runs fast.
_dust_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DUST_VENV="${DUST_VENV:-$HOME/.cache/dust-venv}"
if [ ! -x "$DUST_VENV/bin/python" ]; then
    echo "creating virtual environment $DUST_VENV (first run on this machine: torch takes a few minutes)" >&2
    python3 -m venv "$DUST_VENV" || return 1
fi
"$DUST_VENV/bin/python" -m pip install -q -e "$_dust_root[test]" || return 1
. "$DUST_VENV/bin/activate"
unset _dust_root
