#!/bin/sh
# Installs the Debian packages submitd needs to build, run and test.
# As root: installs what is missing. Otherwise: prints the exact
# apt-get line and fails. Usage: scripts/deps.sh build|test
set -eu
what=${1:-build}
build_pkgs="build-essential pkg-config libssl-dev libevent-dev libargon2-dev libcrypt-dev openssl"
test_pkgs="libcmocka-dev python3 python3-pytest python3-aiosmtpd python3-dkim python3-dnspython swaks curl msmtp clang valgrind libclang-rt-14-dev"
pkgs=$build_pkgs
[ "$what" = test ] && pkgs="$build_pkgs $test_pkgs"
missing=""
for p in $pkgs; do
    st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$st" in
        *"install ok installed"*) ;;
        *) missing="$missing $p" ;;
    esac
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
    echo "deps: installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing >/dev/null
else
    echo "deps: missing packages. Run as root:"
    echo "  apt-get install -y$missing"
    exit 1
fi
