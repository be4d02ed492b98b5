#!/usr/bin/env bash
# Set up ecshell on a Debian machine, then start it.
#   ./bootstrap.sh                 check what the shell needs, make .venv, open ecshell on a local cluster
#   ./bootstrap.sh --install-only  also what the test suite needs, then stop (what .ci/run does)
#   ./bootstrap.sh --check         say what is missing, change nothing
# Root is needed only to install a missing system package: with everything present,
# an ordinary user installs nothing as root. Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")"

mode=shell
case "${1:-}" in
    --install-only) mode=install ;;
    --check) mode=check ;;
    "") ;;
    *) echo "usage: $0 [--install-only | --check]" >&2; exit 2 ;;
esac

# Debian puts sshd, ip and iptables in /usr/sbin, which is not on an ordinary user's PATH.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

# package <- the command that shows it is there
have() { command -v "$1" >/dev/null 2>&1; }
shell_missing=()   # what the shell itself needs: Python with venv, the OpenSSH server and client
have python3 || shell_missing+=(python3)
have python3 && { python3 -c "import venv, ensurepip" 2>/dev/null || shell_missing+=(python3-venv); }
have sshd || shell_missing+=(openssh-server)
{ have ssh && have ssh-keygen; } || shell_missing+=(openssh-client)
test_missing=()    # what only the test suite needs
have tmux || test_missing+=(tmux)
have rsync || test_missing+=(rsync)
have ip || test_missing+=(iproute2)
have iptables || test_missing+=(iptables)
have nft || test_missing+=(nftables)
have sudo || test_missing+=(sudo)
have unshare || test_missing+=(util-linux)
have chromium || test_missing+=(chromium)   # renders the notebook HTML in tests
have bwrap || test_missing+=(bubblewrap)   # cloudlets: the sandbox runtime
# the tools the differential corpus runs (tests/corpus/commands.txt) beyond Debian's essential ones
have jq || test_missing+=(jq)
have bc || test_missing+=(bc)
have xxd || test_missing+=(xxd)
have file || test_missing+=(file)
have column || test_missing+=(bsdextrautils)
have xz || test_missing+=(xz-utils)
have bzip2 || test_missing+=(bzip2)
have openssl || test_missing+=(openssl)
have sqlite3 || test_missing+=(sqlite3)
have lsb_release || test_missing+=(lsb-release)

need=("${shell_missing[@]}")
[ "$mode" = install ] && need+=("${test_missing[@]}")

if [ "$mode" = check ]; then
    echo "bootstrap: the shell needs: ${shell_missing[*]:-nothing more}"
    echo "bootstrap: the tests also need: ${test_missing[*]:-nothing more}"
    [ "${#shell_missing[@]}" -eq 0 ]
    exit
fi

if [ "${#need[@]}" -gt 0 ]; then
    install=(apt-get install -y -qq --no-install-recommends "${need[@]}")
    if [ "$(id -u)" -eq 0 ]; then
        SUDO=()
    elif have sudo && { sudo -n true 2>/dev/null || [ -t 0 ]; }; then
        SUDO=(sudo)   # passwordless, or it can ask on this terminal
    else
        echo "bootstrap: missing ${need[*]}; as root, run: apt-get update && ${install[*]}" >&2
        exit 1
    fi
    echo "bootstrap: installing ${need[*]}"
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" "${install[@]}" >/dev/null
fi
if [ "$mode" = shell ] && [ "${#test_missing[@]}" -gt 0 ]; then
    echo "bootstrap: not installed, only the tests use them: ${test_missing[*]} (./bootstrap.sh --install-only as root installs them)"
fi

# Python packages, in a virtual environment of the project's own: no root needed.
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

if [ "$mode" = install ]; then
    exit 0
fi
if [ -x .venv/bin/ecshell ]; then
    exec .venv/bin/ecshell --fabric local
fi
exec .venv/bin/ecshell-demo
