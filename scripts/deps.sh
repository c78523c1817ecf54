#!/bin/sh
# Installs the Debian packages submitd needs to build, run and test.
# As root: installs what is missing. Otherwise: prints the exact
# apt-get line and fails. Usage: scripts/deps.sh build|test
# For `test` as root it also creates the unprivileged system user `submitd`
# (the daemon's default user) so that the privilege-drop test can run.
set -eu
what=${1:-build}
build_pkgs="build-essential pkg-config libssl-dev libevent-dev libargon2-dev libcrypt-dev openssl libc-ares-dev libhiredis-dev libsodium-dev"
test_pkgs="libcmocka-dev procps python3 python3-pytest python3-aiosmtpd python3-dkim python3-dnspython swaks libnet-ssleay-perl libio-socket-ssl-perl libauthen-sasl-perl libmail-dkim-perl libnet-dns-perl opendkim dnsmasq-base curl msmtp clang valgrind libclang-rt-14-dev redis-server postfix sasl2-bin libsasl2-modules python3-jsonschema python3-cryptography"
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
add_user() {
    [ "$what" = test ] && [ "$(id -u)" -eq 0 ] || return 0
    id submitd >/dev/null 2>&1 && return 0
    echo "deps: creating system user submitd"
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin submitd
}
if [ -z "$missing" ]; then
    add_user
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    echo "deps: installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    # Packages with services (postfix, redis-server) must not start system-wide
    # instances: the tests run private ones. Forbid service starts during the
    # install unless a policy is already in place; Postfix gets no system config.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections 2>/dev/null || true
    apt-get update -q >/dev/null
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing >/dev/null
    add_user
else
    echo "deps: missing packages. Run as root:"
    echo "  apt-get install -y$missing"
    exit 1
fi
