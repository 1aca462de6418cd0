#!/usr/bin/env bash
# Install what hivecore needs, only what is missing; quiet and idempotent.
#   - Debian/Ubuntu as root: git, nix-bin, nats-server, chromium (and python3-venv if venv is missing) via apt
#   - a virtualenv in .venv with hivecore installed editable, with its dev extra
# Usage: .ci/setup.sh [--no-browser]
set -euo pipefail
cd "$(dirname "$0")/.."

want_browser=1
[ "${1:-}" = "--no-browser" ] && want_browser=0
python=${PYTHON:-python3}

# Every user can run it: the file and each directory above it have the "others" x bit.
world_runnable() {
    local p
    p=$(readlink -f "$(command -v "$1" 2>/dev/null || echo "$1")") || return 1
    [ -e "$p" ] || return 1
    while [ "$p" != / ]; do
        [ -n "$(find "$p" -maxdepth 0 -perm -o+x 2>/dev/null)" ] || return 1
        p=$(dirname "$p")
    done
}
# As root, agents run as their own uids and the bundled harness runs on the venv's Python: a
# Python under a private home (/root/.pyenv) cannot start for them. Prefer the system one then.
if [ "$(id -u)" = 0 ] && [ -z "${PYTHON:-}" ] && ! world_runnable "$python" &&
    world_runnable /usr/bin/python3 &&
    /usr/bin/python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "setup: using /usr/bin/python3 ($python is under a directory other users cannot enter)"
    python=/usr/bin/python3
fi
if [ "$(id -u)" = 0 ] && [ -f .venv/pyvenv.cfg ] && [ ! -L .venv ]; then
    home=$(sed -n 's/^home *= *//p' .venv/pyvenv.cfg)
    if [ -n "$home" ] && ! world_runnable "$home" && world_runnable "$python"; then
        echo "setup: re-creating .venv: its Python ($home) is not reachable by agents' uids"
        rm -rf .venv
    fi
fi

missing=()
command -v git >/dev/null 2>&1 || missing+=(git)
command -v nix >/dev/null 2>&1 || missing+=(nix-bin)
# the swarm's tests start a real JetStream server (tests/nats_server.py); Debian's is 2.9
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
if [ "$want_browser" = 1 ] && ! command -v chromium >/dev/null 2>&1; then missing+=(chromium); fi
if [ ! -x .venv/bin/python ] && ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing ${missing[*]} (apt)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null || echo "setup: warning: apt-get update failed" >&2
        if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
            # one unavailable package must not block the others
            for pkg in "${missing[@]}"; do
                apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null 2>&1 ||
                    echo "setup: warning: could not install $pkg with apt" >&2
            done
        fi
    else
        echo "setup: warning: missing ${missing[*]}; install them (as root on Debian: apt-get install ${missing[*]})" >&2
    fi
fi

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: hivecore needs Python >= 3.11; $("$python" --version 2>&1) found (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi

stamp=".venv/.hivecore-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -e "$stamp" ]; then
    echo "setup: preparing .venv (pip install -e '.[dev]')"
    [ -x .venv/bin/python ] || "$python" -m venv .venv
    log=.venv/pip-install.log
    if ! { .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip &&
           .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'; } >"$log" 2>&1; then
        cat "$log" >&2
        echo "setup: pip install failed (log above, also in $log)" >&2
        exit 1
    fi
    rm -f .venv/.hivecore-*
    touch "$stamp"
fi

# The Claude Code CLI the agents run (hivecore/harness.py finds it here, after HIVE_CLAUDE_BIN and
# before PATH), pinned, in a project-local prefix (never a global install). Agents run as their own
# uids under a root daemon: the prefix is left world-readable and its binary world-executable.
claude_version=2.1.332
claude_prefix=.venv/node
if [ "$(cat "$claude_prefix/.claude-code-version" 2>/dev/null)" != "$claude_version" ] ||
   [ ! -x "$claude_prefix/node_modules/.bin/claude" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "setup: warning: npm is missing; the claude CLI is not installed (agents cannot run turns;" \
             "install Node.js >= 18, then re-run .ci/setup.sh)" >&2
    else
        echo "setup: installing @anthropic-ai/claude-code@$claude_version into $claude_prefix"
        mkdir -p "$claude_prefix"
        log="$claude_prefix/npm-install.log"
        if npm install --prefix "$claude_prefix" --no-fund --no-audit --loglevel=error \
               "@anthropic-ai/claude-code@$claude_version" >"$log" 2>&1 &&
           "$claude_prefix/node_modules/.bin/claude" --version >>"$log" 2>&1; then
            echo "$claude_version" >"$claude_prefix/.claude-code-version"
        else
            cat "$log" >&2
            echo "setup: warning: could not install the claude CLI (log above, also in $log)" >&2
        fi
    fi
    chmod -R a+rX "$claude_prefix" 2>/dev/null || true
fi
