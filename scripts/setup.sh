#!/usr/bin/env bash
# Set up everything Lacewing needs on a Debian 12 machine, skipping what is already there.
#
# Before: a Debian machine, run as root (it installs packages). After: the Debian packages
# below are installed, the running kernel has headers BCC can use, and .venv holds the
# project (editable) with its extras and can import BCC's Python module.
# Every step checks first, so a warm run does nothing but check.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(python3-bpfcc bpfcc-tools iproute2 nftables iptables wrk iperf3 haproxy socat
      prometheus nginx-light hey linux-headers-amd64 procps psmisc curl openssl util-linux)
say() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    echo "setup: must run as root (it installs Debian packages and later loads eBPF programs); try: sudo make ${MAKE_TARGET:-test}" >&2
    exit 1
fi

# 1. Debian packages.
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    # policy-rc.d keeps postinst scripts from starting nginx/haproxy/prometheus as services.
    rc=/usr/sbin/policy-rc.d; made_rc=0
    if [ ! -e $rc ]; then printf '#!/bin/sh\nexit 101\n' > $rc; chmod +x $rc; made_rc=1; fi
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    [ $made_rc = 1 ] && rm -f $rc
fi

# 2. Kernel headers for BCC, only when the running kernel has none of its own (PLATFORM.md).
kver=$(uname -r)
if [ ! -e "/lib/modules/$kver/build/include/linux/kconfig.h" ] && [ ! -e "/lib/modules/$kver/build/include/generated/autoconf.h" ]; then
    hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
    if [ -z "$hdr" ] || [ -z "$common" ]; then
        echo "setup: no Debian kernel headers under /usr/src; install linux-headers-amd64" >&2; exit 1
    fi
    mkdir -p "/lib/modules/$kver"
    ln -sfn "$hdr" "/lib/modules/$kver/build"
    ln -sfn "$common" "/lib/modules/$kver/source"
    say "the running kernel $kver has no headers: linked $hdr as its build headers for BCC"
fi

# 3. The venv, with the project and its extras.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    say "creating .venv with $($PY --version)"
    $PY -m venv .venv
fi
stamp=.venv/.lacewing-installed
if [ ! -e $stamp ] || [ pyproject.toml -nt $stamp ]; then
    say "installing the project and its extras into .venv"
    if ! .venv/bin/pip install -q --disable-pip-version-check -e '.[test,perf,dev]' > .venv/pip.log 2>&1; then
        cat .venv/pip.log >&2; echo "setup: pip install failed (log above)" >&2; exit 1
    fi
    touch $stamp
fi

# 4. BCC importable from the venv: a .pth naming a folder that holds only a link to bcc.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
    mkdir -p .venv/bcc-link
    ln -sfn /usr/lib/python3/dist-packages/bcc .venv/bcc-link/bcc
    echo "$(pwd)/.venv/bcc-link" > "$site/lacewing-bcc.pth"
    say "linked Debian's BCC module into .venv"
fi
.venv/bin/python -c 'import bcc' || { echo "setup: BCC does not import from .venv" >&2; exit 1; }

# 5. The waypoint's compiled fast lane (Cython), rebuilt only when its source changed.
.venv/bin/python -m waypoint.fastlane.build >/dev/null || { echo "setup: building waypoint/fastlane failed" >&2; exit 1; }
say "ready"
