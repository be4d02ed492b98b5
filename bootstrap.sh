#!/usr/bin/env bash
# Install everything ecshell and its tests need on a Debian machine, then start ecshell.
#   ./bootstrap.sh                 install, then open ecshell on a local cluster
#   ./bootstrap.sh --install-only  install only (what .ci/run does)
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")"

install_only=0
[ "${1:-}" = "--install-only" ] && install_only=1

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

# System packages: OpenSSH server (the local machines), tmux (terminal tests),
# rsync (login-shell tests), iproute2/iptables (network-fault tests), venv.
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v tmux >/dev/null || need+=(tmux)
command -v rsync >/dev/null || need+=(rsync)
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
command -v sudo >/dev/null || need+=(sudo)
command -v python3 >/dev/null || need+=(python3)
python3 -c "import venv, ensurepip" 2>/dev/null || need+=(python3-venv)
if [ "${#need[@]}" -gt 0 ]; then
    echo "bootstrap: installing ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Python packages, in a virtual environment of the project's own.
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

if [ "$install_only" -eq 1 ]; then
    exit 0
fi
if [ -x .venv/bin/ecshell ]; then
    exec .venv/bin/ecshell --fabric local
fi
exec .venv/bin/ecshell-demo
