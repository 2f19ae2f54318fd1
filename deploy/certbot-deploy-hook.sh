#!/bin/sh
# /etc/letsencrypt/renewal-hooks/deploy/letterbox: run by certbot after each
# renewal. Copies the new pair where the vmail user can read it, then asks
# Letterbox to reload (it keeps the old pair if the new one is broken).
set -eu
# certbot names the renewed certificate's folder in RENEWED_LINEAGE.
lineage="${RENEWED_LINEAGE:-/etc/letsencrypt/live/mx.example.com}"
install -d -m 0750 -o root -g vmail /etc/letterbox/tls
# Key first, then certificate: Letterbox reloads once the folder is quiet,
# and checks that the two belong together before using them.
install -m 0640 -o root -g vmail "$lineage/privkey.pem" /etc/letterbox/tls/privkey.pem
install -m 0640 -o root -g vmail "$lineage/fullchain.pem" /etc/letterbox/tls/fullchain.pem
systemctl reload letterbox || true
