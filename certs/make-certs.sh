#!/bin/sh
# Makes a development CA and a leaf certificate for localhost and 127.0.0.1,
# for `make run` with --tls-cert and for the tests. A CA plus a leaf, not one
# self-signed certificate: Deno's TLS client rejects a CA used as a server
# certificate (CaUsedAsEndEntity). Keys are generated here and never committed.
set -eu
cd "$(dirname "$0")"
[ -f leaf.pem ] && [ -f leaf-key.pem ] && [ -f ca.pem ] && exit 0
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
  -subj "/CN=Letterbox Test CA" -keyout ca-key.pem -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=localhost" -keyout leaf-key.pem -out leaf.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' > leaf.ext
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 3650 \
  -extfile leaf.ext -out leaf.pem 2>/dev/null
rm -f leaf.csr leaf.ext ca.srl
chmod 600 ca-key.pem leaf-key.pem
echo "certs: made ca.pem, leaf.pem and leaf-key.pem in $(pwd)"
