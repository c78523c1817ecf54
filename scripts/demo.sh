#!/bin/sh
# `make run`: makes a demo under ./run (config, self-signed ECDSA certificate,
# one account with a generated password, spool, Maildir) and serves it in the
# foreground on 127.0.0.1:2587 (STARTTLS) and 127.0.0.1:2465 (implicit TLS).
# Existing run/ files (certificate, account, DKIM keys) are kept; the config
# is rewritten. Mail from @example.test is DKIM-signed with both algorithms.
# Nothing leaves the machine: the only transport is the Maildir run/mail/.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$top/build}
run=$top/run
login=demo@example.test
mkdir -p "$run"
chmod 700 "$run"
cd "$run"

if [ ! -f localhost-ecdsa.crt ] || [ ! -f localhost-ecdsa.key ]; then
    sh "$top/scripts/mkcert.sh" "$run" localhost ecdsa >/dev/null
fi
if [ ! -f demo-account ] || [ ! -f accounts ]; then
    pass=$(openssl rand -base64 24 | tr -d '/+=' | cut -c1-20)
    rm -f accounts
    SUBMITD_PASSWORD=$pass "$build/submitctl" -a "$run/accounts" user add "$login" \
        --sender @example.test >/dev/null
    umask 077
    printf '%s %s\n' "$login" "$pass" > demo-account
    chmod 600 demo-account accounts
fi
mkdir -p spool mail
# DKIM keys for the demo domain, both algorithms: mail from @example.test
# arrives with an rsa-sha256 and an ed25519-sha256 signature.
mkdir -p dkim
for kind in rsa ed25519; do
    if [ ! -f dkim/example.test.demo-$kind.key ]; then
        if [ $kind = rsa ]; then opt="--rsa 2048"; else opt=--ed25519; fi
        # shellcheck disable=SC2086
        "$build/submitctl" dkim keygen example.test demo-$kind $opt --dir "$run/dkim" > dkim/demo-$kind.txt
    fi
done

user=$(id -un)
if [ "$(id -u)" -eq 0 ]; then
    # Run as the unprivileged submitd user when it can reach ./run; a
    # checkout under a private home directory cannot be reached, and then the
    # demo stays root (submitd says so in its log).
    if ! id submitd >/dev/null 2>&1; then
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin submitd
    fi
    chown -R submitd:submitd spool mail
    chgrp submitd accounts localhost-ecdsa.key dkim/*.key
    chmod 640 accounts localhost-ecdsa.key dkim/*.key
    chmod 711 "$run"
    if runuser -u submitd -- test -w "$run/mail" 2>/dev/null; then
        user=submitd
    else
        user=root
        chmod 700 "$run"
    fi
fi

cat > submitd.conf <<CONF
# submitd demo configuration, written by scripts/demo.sh (make run).
hostname localhost
user $user
spool-dir $run/spool
accounts $run/accounts
pid-file $run/submitd.pid
log stderr
log-level info

tls {
    certificate $run/localhost-ecdsa.crt $run/localhost-ecdsa.key
}

listener submission {
    address 127.0.0.1
    port 2587
    mode starttls
}

listener submissions {
    address 127.0.0.1
    port 2465
    mode implicit-tls
}

# DKIM: the TXT records to publish are in run/dkim/demo-*.txt
dkim example.test {
    key demo-rsa $run/dkim/example.test.demo-rsa.key
    key demo-ed25519 $run/dkim/example.test.demo-ed25519.key
}

# Every recipient's copy is stored in the Maildir run/mail (new/).
transport demo-maildir {
    type maildir
    path $run/mail
}
route * demo-maildir
CONF

"$build/submitd" -t -c submitd.conf >/dev/null
read -r dlogin dpass < demo-account
cat <<MSG

submitd demo
  STARTTLS:      127.0.0.1:2587     implicit TLS: 127.0.0.1:2465
  login:         $dlogin
  password:      $dpass      (also in run/demo-account)
  may send as:   any @example.test address
  delivered to:  run/mail/new/  (one file per recipient)
  DKIM:          example.test signed with rsa-sha256 + ed25519-sha256 (records: run/dkim/demo-*.txt)
  certificate:   run/localhost-ecdsa.crt (self-signed: use --tls-verify off / curl -k)

Try, from another terminal in $top:
  read LOGIN PASS < run/demo-account
  swaks --server 127.0.0.1:2587 --tls --auth PLAIN --auth-user "\$LOGIN" --auth-password "\$PASS" \\
        --from demo@example.test --to someone@example.net

Ctrl-C stops the server.

MSG
exec "$build/submitd" -c submitd.conf
