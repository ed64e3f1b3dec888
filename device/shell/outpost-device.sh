#!/bin/sh
# A complete Outpost device in POSIX shell: mosquitto_sub listens, mosquitto_pub reports.
#
# Needs mosquitto_pub, mosquitto_sub (Debian: mosquitto-clients) and jq. Settings, from the
# environment (the device's registration gave the id and password):
#   OUTPOST_DEVICE_ID        the device id (its MQTT username and client id)
#   OUTPOST_DEVICE_PASSWORD  its password
#   OUTPOST_BROKER_HOST      broker host                       (default 127.0.0.1)
#   OUTPOST_BROKER_PORT      the broker's TLS port              (default 8883)
#   OUTPOST_CA_FILE          CA bundle to verify the broker     (required: TLS only)
#   OUTPOST_STATE_DIR        where the boot counter and config are kept (default .)
#   OUTPOST_FIRMWARE         the firmware it reports            (default 1.0.0-sh)
#   OUTPOST_HARDWARE_MODEL   its hardware model                 (default shell-ap)
#
# Two connections, two client ids of the same device: the listener is "<id>/listen" (same
# password; the api creates that second account at registration) and holds the Last
# Will, so presence follows it; every report is a short "<id>" connection. The ordering
# key is (boot counter, sequence), both kept in OUTPOST_STATE_DIR. A desired config is
# written to config.json and acknowledged in the next state; an upgrade job is rejected
# (this device installs no firmware). See docs/protocol.md.
#
# Out of the box (zero-touch provisioning): a device shipped with only a claim secret and
# its serial runs outpost-provision.sh once (OUTPOST_CLAIM, OUTPOST_SERIAL); it writes
# OUTPOST_STATE_DIR/identity.json, which this script reads when OUTPOST_DEVICE_ID is unset.
set -eu

IDENTITY=${OUTPOST_STATE_DIR:-.}/identity.json  # written by outpost-provision.sh
if [ -z "${OUTPOST_DEVICE_ID:-}" ] && [ -f "$IDENTITY" ]; then
    OUTPOST_DEVICE_ID=$(jq -r .device_id < "$IDENTITY")
    OUTPOST_DEVICE_PASSWORD=$(jq -r .password < "$IDENTITY")
fi
ID=${OUTPOST_DEVICE_ID:?set OUTPOST_DEVICE_ID (or provision: outpost-provision.sh)}
PW=${OUTPOST_DEVICE_PASSWORD:?set OUTPOST_DEVICE_PASSWORD}
HOST=${OUTPOST_BROKER_HOST:-127.0.0.1}
PORT=${OUTPOST_BROKER_PORT:-8883}
CA=${OUTPOST_CA_FILE:?set OUTPOST_CA_FILE}
DIR=${OUTPOST_STATE_DIR:-.}
FIRMWARE=${OUTPOST_FIRMWARE:-1.0.0-sh}
MODEL=${OUTPOST_HARDWARE_MODEL:-shell-ap}
WILL_SEQ=9007199254740991  # 2^53 - 1: the Will's key is newer than anything of its session
STARTED=$(date +%s)

mkdir -p "$DIR"
SESSION=$(( $(cat "$DIR/session" 2>/dev/null || echo 0) + 1 ))
echo "$SESSION" > "$DIR/session"
echo 0 > "$DIR/seq"

next_seq() {
    n=$(( $(cat "$DIR/seq") + 1 ))
    echo "$n" > "$DIR/seq"
    echo "$n"
}

send() {  # send <channel suffix> <json> [retain]
    retain=""
    [ "${3:-}" = retain ] && retain="-r"
    mosquitto_pub -V mqttv5 -h "$HOST" -p "$PORT" --cafile "$CA" -u "$ID" -P "$PW" -i "$ID" \
        -q 1 $retain -t "devices/$ID/$1" -m "$2"
}

key() {  # the next ordering key as JSON
    printf '{"session": %s, "seq": %s}' "$SESSION" "$(next_seq)"
}

presence() {  # presence <online|offline> [reason]
    if [ "$1" = online ]; then
        send presence "$(jq -cn --arg id "$ID" --argjson key "$(key)" \
            '{v: 1, device_id: $id, key: $key, status: "online"}')" retain
    else
        send presence "$(jq -cn --arg id "$ID" --argjson s "$SESSION" --argjson w "$WILL_SEQ" \
            --arg r "$2" '{v: 1, device_id: $id, key: {session: $s, seq: $w},
            status: "offline", reason: $r}')" retain
    fi
}

state() {  # the current state, with the last config report if there is one
    report=$(cat "$DIR/config-report.json" 2>/dev/null || echo null)
    send state "$(jq -cn --arg id "$ID" --argjson key "$(key)" --arg fw "$FIRMWARE" \
        --arg model "$MODEL" --argjson up $(( $(date +%s) - STARTED )) --argjson cfg "$report" \
        '{v: 1, device_id: $id, key: $key, firmware: $fw, hardware_model: $model,
          uptime_s: $up, config: $cfg, counters: {}}')"
}

on_config() {  # a desired config arrived: keep it and acknowledge it
    [ -n "$1" ] || return 0  # an empty retained message clears the topic
    printf '%s' "$1" | jq -c .config > "$DIR/config.json"
    printf '%s' "$1" | jq -c '{version, hash, status: "applied"}' > "$DIR/config-report.json"
    state
}

on_job() {  # upgrade command: refused, with the reason
    job=$(printf '%s' "$2" | jq -r .job_id)
    send "jobs/$job/status" "$(jq -cn --arg id "$ID" --arg job "$job" --argjson key "$(key)" \
        --arg fw "$FIRMWARE" '{v: 1, device_id: $id, job_id: $job, key: $key,
        status: "rejected", reason: "this device installs no firmware", firmware: $fw}')"
}

WILL=$(jq -cn --arg id "$ID" --argjson s "$SESSION" --argjson w "$WILL_SEQ" \
    '{v: 1, device_id: $id, key: {session: $s, seq: $w}, status: "offline",
      reason: "connection_lost"}')
FIFO="$DIR/inbox"
rm -f "$FIFO"
mkfifo "$FIFO"
mosquitto_sub -V mqttv5 -h "$HOST" -p "$PORT" --cafile "$CA" -u "$ID/listen" -P "$PW" \
    -i "$ID/listen" -q 1 -v -t "devices/$ID/config" -t "devices/$ID/jobs/+" \
    --will-topic "devices/$ID/presence" --will-payload "$WILL" --will-qos 1 --will-retain \
    > "$FIFO" &
LISTENER=$!
trap 'presence offline shutdown; kill $LISTENER 2>/dev/null; rm -f "$FIFO"; exit 0' TERM INT

presence online
state
while read -r topic payload; do
    case "$topic" in
        "devices/$ID/config") on_config "$payload" ;;
        "devices/$ID/jobs/"*) on_job "$topic" "$payload" ;;
    esac
done < "$FIFO"
