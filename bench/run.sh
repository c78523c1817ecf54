#!/bin/sh
# `make bench`: the side-by-side benchmark of issue 7 (and the DKIM figure of
# issue 4). Installs what is missing (as root: Debian's postfix + Cyrus SASL
# tools with a policy-rc.d so that no system service starts; Haraka from the
# npm registry into a private prefix under $BUILD/bench), then hands over to
# bench/bench.py, which configures private loopback instances of Postfix,
# Haraka and submitd, runs the scenarios, and writes docs/performance.md.
# Environment: BUILD (default build), BENCH_SECONDS (per run, default 8),
# BENCH_RUNS (3), BENCH_ONLY (comma list of scenarios, default a,b,c,d,e,f,g),
# BENCH_SERVERS (default submitd,postfix,haraka), BENCH_CONC (sessions, 50),
# BENCH_IDLE (sessions held in (d), 10000), BENCH_IDLE_RUNS (1),
# BENCH_CLIENT_THREADS (loadgen threads, default one per core), BENCH_NO_DOC=1 (leave
# docs/performance.md alone), HARAKA_VERSION (3.3.4).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$top" && mkdir -p "${BUILD:-build}" && cd "${BUILD:-build}" && pwd)
bdir=$build/bench
haraka_version=${HARAKA_VERSION:-3.3.4}
mkdir -p "$bdir"

skip=""  # servers left out because they could not be installed
missing=""
for p in postfix sasl2-bin libsasl2-modules; do
    case "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" in
        *"install ok installed"*) ;;
        *) missing="$missing $p" ;;
    esac
done
command -v npm >/dev/null 2>&1 || missing="$missing npm"
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bench: missing packages. Run as root:  apt-get install -y$missing" >&2
        exit 1
    fi
    own_prc=0
    echo "bench: installing:$missing (no service is started)"
    # policy-rc.d 101 = "action not allowed": the packages' maintainer
    # scripts start no daemon. Ours is removed again afterwards.
    prc=/usr/sbin/policy-rc.d
    own_prc=0
    if [ ! -e $prc ]; then
        printf '#!/bin/sh\nexit 101\n' > $prc
        chmod 755 $prc
        own_prc=1
    fi
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    # shellcheck disable=SC2086
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >"$bdir/apt.log" 2>&1; then
        tail -20 "$bdir/apt.log" >&2
        echo "bench: apt-get install failed: going on without Postfix" >&2
        skip="$skip postfix"
    fi
    if [ $own_prc = 1 ]; then rm -f $prc; fi
fi

if [ ! -x "$bdir/haraka/node_modules/.bin/haraka" ]; then
    echo "bench: npm install Haraka@$haraka_version into $bdir/haraka"
    mkdir -p "$bdir/haraka"
    (cd "$bdir/haraka" && [ -f package.json ] || printf '{"name":"submitd-bench-haraka","private":true}\n' > package.json)
    if ! (cd "$bdir/haraka" && npm install --no-audit --no-fund --loglevel=error "Haraka@$haraka_version" >"$bdir/npm.log" 2>&1); then
        tail -20 "$bdir/npm.log" >&2
        echo "bench: npm install failed: going on without Haraka" >&2
        skip="$skip haraka"
    fi
fi

BENCH_SKIP=$skip exec /usr/bin/python3 "$top/bench/bench.py" --build "$build"
