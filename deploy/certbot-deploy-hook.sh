#!/bin/sh
# /etc/letsencrypt/renewal-hooks/deploy/letterbox: run by certbot after each
# renewal. Copies the new pair where the vmail user can read it, then asks
# Letterbox to reload (it keeps the old pair if the new one is broken), and
# Dovecot too when it serves IMAP with the same certificate (deploy/dovecot.conf
# reads it from the lineage): Dovecot reads its certificate only at start or
# reload, so without this it keeps serving the old one until it expires.
set -eu
# certbot names the renewed certificate's folder in RENEWED_LINEAGE.
lineage="${RENEWED_LINEAGE:-/etc/letsencrypt/live/mx.example.com}"
install -d -m 0750 -o root -g vmail /etc/letterbox/tls
# Key first, then certificate: Letterbox reloads once the folder is quiet,
# and checks that the two belong together before using them.
install -m 0640 -o root -g vmail "$lineage/privkey.pem" /etc/letterbox/tls/privkey.pem
install -m 0640 -o root -g vmail "$lineage/fullchain.pem" /etc/letterbox/tls/fullchain.pem
systemctl reload letterbox || true
# Dovecot, when it runs and its ssl_cert names this lineage or our copy.
if systemctl is-active --quiet dovecot 2>/dev/null; then
  cert="$(doveconf -h ssl_cert 2>/dev/null || true)"
  case "$cert" in
    *"$lineage"/* | */etc/letterbox/tls/*) systemctl reload dovecot || true ;;
  esac
fi
