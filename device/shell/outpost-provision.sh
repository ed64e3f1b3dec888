#!/bin/sh
# Zero-touch provisioning in POSIX shell: from a claim secret and a serial to this device's
# own account, written to $OUTPOST_STATE_DIR/identity.json (mode 0600), which
# outpost-device.sh then reads. Run it once, before the device script; it does nothing
# when identity.json exists.
#
# Needs openssl (3.x: pkeyutl -rawin, kdf), mosquitto_rr (Debian: mosquitto-clients),
# jq, od. Settings, from the environment:
#   OUTPOST_CLAIM            the claim secret the device was shipped with (opc_<id>_...)
#   OUTPOST_SERIAL           its serial number or MAC address
#   OUTPOST_BROKER_HOST      broker host                       (default 127.0.0.1)
#   OUTPOST_BROKER_PORT      the broker's TLS port              (default 8883)
#   OUTPOST_CA_FILE          CA bundle to verify the broker     (required: TLS only)
#   OUTPOST_STATE_DIR        where the identity key and identity.json are kept (default .)
#   OUTPOST_HARDWARE_MODEL   its hardware model                 (default shell-ap)
#
# The exchange (docs/protocol.md, "Zero-touch provisioning"): an Ed25519 identity key kept
# for life (identity.pem), a fresh X25519 reply key per request; the request is signed
# over its fields plus claim_id (sorted keys, no spaces) and sent by mosquitto_rr with an
# MQTT v5 response topic; the reply's box is opened with X25519 + HKDF-SHA256, checked
# with HMAC-SHA256 and decrypted with AES-256-CTR. Exit status: 0 done, 2 refused (the
# reason on stderr), 1 anything else (retry later).
set -eu

CLAIM=${OUTPOST_CLAIM:?set OUTPOST_CLAIM}
SERIAL=${OUTPOST_SERIAL:?set OUTPOST_SERIAL}
HOST=${OUTPOST_BROKER_HOST:-127.0.0.1}
PORT=${OUTPOST_BROKER_PORT:-8883}
CA=${OUTPOST_CA_FILE:?set OUTPOST_CA_FILE}
DIR=${OUTPOST_STATE_DIR:-.}
MODEL=${OUTPOST_HARDWARE_MODEL:-shell-ap}
INFO="outpost provisioning v1"

CLAIM_ID=$(printf '%s' "$CLAIM" | sed -n 's/^opc_\([0-9a-f]\{12\}\)_[A-Za-z0-9_-]*$/\1/p')
[ -n "$CLAIM_ID" ] || { echo "OUTPOST_CLAIM is not a claim secret" >&2; exit 1; }
umask 077
mkdir -p "$DIR"
[ -f "$DIR/identity.json" ] && exit 0
[ -f "$DIR/identity.pem" ] || openssl genpkey -algorithm ed25519 -out "$DIR/identity.pem"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

b64() { base64 | tr -d '\n'; }
hex() { od -An -v -tx1 | tr -d ' \n'; }
raw_public() { openssl pkey -in "$1" -pubout -outform DER | tail -c 32; }  # raw 32 bytes
token() { openssl rand -base64 18 | tr '+/' '-_' | tr -d '=\n'; }           # 24 characters

openssl genpkey -algorithm x25519 -out "$TMP/reply.pem"
NONCE=$(token)
REPLY_TOPIC="provision/$CLAIM_ID/reply/$(token)$(token)"
UNSIGNED=$(jq -cn --arg s "$SERIAL" --arg m "$MODEL" --arg n "$NONCE" \
    --arg i "$(raw_public "$DIR/identity.pem" | b64)" --arg r "$(raw_public "$TMP/reply.pem" | b64)" \
    '{v: 1, serial: $s, hardware_model: $m, identity_key: $i, reply_key: $r, nonce: $n}')
printf '%s' "$UNSIGNED" | jq -cS --arg c "$CLAIM_ID" '. + {claim_id: $c}' | tr -d '\n' > "$TMP/signed"
SIGNATURE=$(openssl pkeyutl -sign -rawin -inkey "$DIR/identity.pem" -in "$TMP/signed" | b64)
REQUEST=$(printf '%s' "$UNSIGNED" | jq -c --arg s "$SIGNATURE" '. + {signature: $s}')

mosquitto_rr -h "$HOST" -p "$PORT" --cafile "$CA" -u "claim/$CLAIM_ID" -P "$CLAIM" \
    -i "provision-$(token)" -q 1 -W 30 -N -t "provision/$CLAIM_ID/request" -e "$REPLY_TOPIC" \
    -D publish correlation-data "$NONCE" -m "$REQUEST" > "$TMP/reply"

if [ "$(jq -r .status < "$TMP/reply")" != ok ]; then
    echo "refused: $(jq -r '.reason + ": " + (.detail // "")' < "$TMP/reply")" >&2
    exit 2
fi
jq -r .sealed.ephemeral < "$TMP/reply" | base64 -d > "$TMP/ephemeral"
jq -r .sealed.nonce < "$TMP/reply" | base64 -d > "$TMP/iv"
jq -r .sealed.box < "$TMP/reply" | base64 -d > "$TMP/box"

# the api's ephemeral key as a PEM: the fixed DER prefix of an X25519 public key, then it
printf '\060\052\060\005\006\003\053\145\156\003\041\000' | cat - "$TMP/ephemeral" > "$TMP/eph.der"
openssl pkey -pubin -inform DER -in "$TMP/eph.der" -out "$TMP/eph.pem"
openssl pkeyutl -derive -inkey "$TMP/reply.pem" -peerkey "$TMP/eph.pem" -out "$TMP/shared"
SALT=$( { cat "$TMP/ephemeral"; raw_public "$TMP/reply.pem"; } | hex)
KEYS=$(openssl kdf -binary -keylen 64 -kdfopt digest:SHA256 -kdfopt "hexkey:$(hex < "$TMP/shared")" \
    -kdfopt "hexsalt:$SALT" -kdfopt "info:$INFO" HKDF | hex)
ENC_KEY=$(printf '%s' "$KEYS" | cut -c1-64)
MAC_KEY=$(printf '%s' "$KEYS" | cut -c65-128)
SIZE=$(wc -c < "$TMP/box")
head -c $((SIZE - 32)) "$TMP/box" > "$TMP/ciphertext"
EXPECTED=$(tail -c 32 "$TMP/box" | hex)
ACTUAL=$(cat "$TMP/iv" "$TMP/ciphertext" | openssl dgst -sha256 -mac HMAC \
    -macopt "hexkey:$MAC_KEY" -binary | hex)
[ "$ACTUAL" = "$EXPECTED" ] || { echo "the sealed reply does not open" >&2; exit 1; }
openssl enc -d -aes-256-ctr -K "$ENC_KEY" -iv "$(hex < "$TMP/iv")" \
    -in "$TMP/ciphertext" -out "$TMP/identity.json"
mv "$TMP/identity.json" "$DIR/identity.json"
echo "provisioned as $(jq -r .device_id < "$DIR/identity.json")"
