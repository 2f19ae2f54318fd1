#!/bin/sh
# /etc/letsencrypt/renewal-hooks/deploy/letterbox: run by certbot after each
# renewal. Copies the new pair where the vmail user can read it, then asks
# Letterbox to reload (it keeps the old pair if the new one is broken).
set -eu
domain=mx.example.com
install -d -m 0750 -o root -g vmail /etc/letterbox/tls
install -m 0640 -o root -g vmail "/etc/letsencrypt/live/$domain/fullchain.pem" /etc/letterbox/tls/fullchain.pem
install -m 0640 -o root -g vmail "/etc/letsencrypt/live/$domain/privkey.pem" /etc/letterbox/tls/privkey.pem
systemctl reload letterbox
