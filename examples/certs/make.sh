#!/bin/sh
# Regenerates the demo certificates of examples/agents.lua: a demo CA and a
# wildcard server certificate for *.observability.internal signed by it, both
# valid 10 years. DEMO ONLY: the key is public in this repository.
#
#   examples/certs/make.sh        (from anywhere; writes next to this script)
#
# Writes ca.pem (the CA agents trust: curl --cacert), and
# observability.internal.pem + observability.internal.key (the listener's
# certificate and key). The CA's own key is deleted once it has signed, so
# nothing else can be signed with it: run the script again for new ones.
set -eu
cd "$(dirname "$0")"
days=3650
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

openssl genpkey -quiet -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/ca.key"
openssl req -x509 -key "$tmp/ca.key" -sha256 -days "$days" \
  -subj "/O=ferry demo/CN=ferry demo CA (not for production)" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out ca.pem

openssl genpkey -quiet -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out observability.internal.key
openssl req -new -key observability.internal.key -sha256 \
  -subj "/O=ferry demo/CN=*.observability.internal" -out "$tmp/server.csr"

cat > "$tmp/server.ext" <<'EXT'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:*.observability.internal
EXT
openssl x509 -req -sha256 -days "$days" -in "$tmp/server.csr" \
  -CA ca.pem -CAkey "$tmp/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
  -extfile "$tmp/server.ext" -out observability.internal.pem

chmod 644 ca.pem observability.internal.pem
chmod 600 observability.internal.key
openssl verify -CAfile ca.pem observability.internal.pem
