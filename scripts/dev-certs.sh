#!/usr/bin/env bash
# Create a local development CA and a certificate for localhost and 127.0.0.1, signed by it,
# unless they exist already. Usage: scripts/dev-certs.sh [DIR] (default certs/dev).
# Trust the CA in Node-based clients (Claude Code) with NODE_EXTRA_CA_CERTS=DIR/ca.crt.
set -euo pipefail
dir="${1:-certs/dev}"
mkdir -p "$dir"
cd "$dir"
if [[ -s sluice.crt && -s sluice.key && -s ca.crt ]]; then
    exit 0
fi
command -v openssl >/dev/null || { echo "dev-certs: openssl is required (apt-get install openssl)" >&2; exit 1; }
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 825 \
    -subj "/CN=Sluice development CA" -keyout ca.key -out ca.crt \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=localhost" -keyout sluice.key -out sluice.csr 2>/dev/null
cat > sluice.ext <<'EXT'
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
EXT
openssl x509 -req -in sluice.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
    -extfile sluice.ext -out sluice.crt 2>/dev/null
rm -f sluice.csr sluice.ext ca.srl
chmod 600 ca.key sluice.key
echo "dev-certs: created $dir/ca.crt (trust this CA) and $dir/sluice.crt for localhost, 127.0.0.1"
