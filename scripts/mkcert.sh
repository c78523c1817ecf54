#!/bin/sh
# Makes a self-signed certificate for testing and the demo.
# Usage: scripts/mkcert.sh DIR NAME [ecdsa|rsa] [DAYS]
# Writes DIR/NAME-KIND.crt and DIR/NAME-KIND.key (mode 0600), with NAME and
# 127.0.0.1/::1 in subjectAltName, valid for DAYS (default 825).
set -eu
dir=${1:?usage: mkcert.sh DIR NAME [ecdsa|rsa] [DAYS]}
name=${2:?usage: mkcert.sh DIR NAME [ecdsa|rsa] [DAYS]}
kind=${3:-ecdsa}
days=${4:-825}
mkdir -p "$dir"
crt="$dir/$name-$kind.crt"
key="$dir/$name-$kind.key"
case "$kind" in
    ecdsa) alg="-newkey ec -pkeyopt ec_paramgen_curve:P-256" ;;
    rsa) alg="-newkey rsa:2048" ;;
    *) echo "mkcert.sh: kind must be ecdsa or rsa" >&2; exit 2 ;;
esac
umask 077
validity="-days $days"
# shellcheck disable=SC2086
openssl req -x509 $alg -nodes -sha256 $validity \
    -subj "/CN=$name" \
    -addext "subjectAltName=DNS:$name,IP:127.0.0.1,IP:::1" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign" \
    -addext "extendedKeyUsage=serverAuth" \
    -keyout "$key" -out "$crt" 2>/dev/null
chmod 600 "$key"
chmod 644 "$crt"
echo "$crt $key"
