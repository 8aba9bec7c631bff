#!/usr/bin/env bash
# Developer entry point; every command does its own set-up on a fresh Debian 12.
#   ./dev.sh demo    run a real container under systemd; show its status and logs
#   ./dev.sh test    lint, type-check and run the whole test suite (needs root)
#   ./dev.sh bench   sdshim against conmon, podman and runc; prints the tables (~4 min)
#   ./dev.sh setup   only install what the others need
set -euo pipefail
cd "$(dirname "$0")"

# python3-dbus-fast: Debian's (1.84), so pip keeps it and the suite runs against
# it; the rest builds and checks the .deb and .rpm (`make deb rpm`); podman (with
# tar) only for ./dev.sh bench, which compares sdshim with it.
APT_PACKAGES=(runc crun busybox-static conmon util-linux mount systemd dbus
              python3 python3-pip python3-venv python3-dbus-fast
              make dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all
              python3-setuptools python3-build python3-installer python3-wheel
              rpm lintian man-db podman tar)

setup() {
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" \
            || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        echo "dev.sh: installing ${missing[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
    local pip=(python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore)
    # Debian's own python3 is "externally managed" (PEP 668).
    if [ -e "$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')/EXTERNALLY-MANAGED" ]; then
        pip+=(--break-system-packages)
    fi
    "${pip[@]}" -e '.[test]'
}

case "${1:-}" in
    setup) setup ;;
    demo) setup; exec python3 -m sdshim.demo ;;
    test)
        setup
        shift
        ruff check .
        mypy
        exec python3 -m pytest -q "$@"
        ;;
    bench) setup; shift; exec python3 -m bench.run "$@" ;;
    *) echo "usage: ./dev.sh demo|test|bench|setup" >&2; exit 2 ;;
esac
