#!/bin/sh
# A complete Outpost device in POSIX shell: mosquitto_sub listens, mosquitto_pub reports.
#
# Needs mosquitto_pub, mosquitto_sub (Debian: mosquitto-clients), jq, and ping
# (iputils-ping) for its ping command. Settings, from the
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
# (this device installs no firmware). Commands: reboot (answer, say offline with reason
# reboot, start over) and ping; any other name is answered "unknown". The listener keeps a
# persistent session (-c), so a command sent while the device was away arrives when it is
# back, unless it expired. See docs/protocol.md.
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

send() {  # send <channel suffix> <json> [retain] [correlation data]
    retain=""
    [ "${3:-}" = retain ] && retain="-r"
    suffix=$1 body=$2
    if [ -n "${4:-}" ]; then
        set -- -D publish correlation-data "$4"
    else
        set --
    fi
    mosquitto_pub -V mqttv5 -h "$HOST" -p "$PORT" --cafile "$CA" -u "$ID" -P "$PW" -i "$ID" \
        -q 1 $retain -t "devices/$ID/$suffix" -m "$body" "$@"
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
    # written whole, then renamed: a reader never sees half a file (the same retained
    # config may come twice, to the session's first subscription and to the listener's)
    printf '%s' "$1" | jq -c .config > "$DIR/config.json.tmp"
    mv "$DIR/config.json.tmp" "$DIR/config.json"
    printf '%s' "$1" | jq -c '{version, hash, status: "applied"}' > "$DIR/config-report.tmp"
    mv "$DIR/config-report.tmp" "$DIR/config-report.json"
    state
}

on_job() {  # upgrade command: refused, with the reason
    job=$(printf '%s' "$2" | jq -r .job_id)
    send "jobs/$job/status" "$(jq -cn --arg id "$ID" --arg job "$job" --argjson key "$(key)" \
        --arg fw "$FIRMWARE" '{v: 1, device_id: $id, job_id: $job, key: $key,
        status: "rejected", reason: "this device installs no firmware", firmware: $fw}')"
}

answer() {  # answer <command id> <status> <output json> [error]: the one result
    send "commands/$1/result" "$(jq -cn --arg id "$ID" --arg cid "$1" --argjson key "$(key)" \
        --arg st "$2" --argjson out "$3" --arg err "${4:-}" \
        '{v: 1, device_id: $id, command_id: $cid, key: $key, status: $st, output: $out}
         + (if $err == "" then {} else {error: $err} end)')" "" "$1"
}

do_ping() {  # do_ping <command id> <args json>
    target=$(printf '%s' "$2" | jq -r '.target // ""')
    count=$(printf '%s' "$2" | jq -r '.count // 3')
    case "$target" in
        ""|-*|*[!A-Za-z0-9.:-]*) answer "$1" rejected '{}' "args.target: not a host"; return ;;
    esac
    case "$count" in
        [1-9]|10) ;;
        *) answer "$1" rejected '{}' "args.count: between 1 and 10"; return ;;
    esac
    rtts=$(ping -n -c "$count" -W 1 -i 0.2 "$target" 2>/dev/null \
        | sed -n 's/.*time[=<]\([0-9.]*\) *ms.*/\1/p' | jq -cs .) || rtts="[]"
    [ -n "$rtts" ] || rtts="[]"
    answer "$1" succeeded "$(jq -cn --arg t "$target" --argjson n "$count" --argjson r "$rtts" \
        '{target: $t, sent: $n, received: ($r | length), rtt_ms: $r}')"
}

reboot_now() {  # say offline (as the Will would), drop the listener, start over
    presence offline reboot
    kill "$LISTENER" 2>/dev/null || true
    rm -f "$FIFO"
    exec sh "$0"
}

on_command() {  # a command request: run it once, never after its deadline
    cid=${1##*/}
    grep -qx "$cid" "$DIR/commands" 2>/dev/null && return 0  # a redelivery
    expires=$(printf '%s' "$2" | jq -r '.expires_at // ""')
    deadline=$(date -d "$expires" +%s 2>/dev/null || echo 0)
    [ "$(date +%s)" -lt "$deadline" ] || return 0  # expired: never run late
    echo "$cid" >> "$DIR/commands"
    tail -n 64 "$DIR/commands" > "$DIR/commands.tmp" && mv "$DIR/commands.tmp" "$DIR/commands"
    name=$(printf '%s' "$2" | jq -r '.name // ""')
    case "$name" in
        reboot) answer "$cid" succeeded '{"rebooting": true}'; reboot_now ;;
        ping) do_ping "$cid" "$(printf '%s' "$2" | jq -c '.args // {}')" ;;
        *) answer "$cid" unknown '{}' "unknown command \"$name\"" ;;
    esac
}

WILL=$(jq -cn --arg id "$ID" --argjson s "$SESSION" --argjson w "$WILL_SEQ" \
    '{v: 1, device_id: $id, key: {session: $s, seq: $w}, status: "offline",
      reason: "connection_lost"}')
FIFO="$DIR/inbox"
rm -f "$FIFO"
mkfifo "$FIFO"
listen() {  # the listener's persistent session (-c) and its subscriptions
    mosquitto_sub -V mqttv5 -h "$HOST" -p "$PORT" --cafile "$CA" -u "$ID/listen" -P "$PW" \
        -i "$ID/listen" -c -x 3600 -q 1 -v -t "devices/$ID/config" -t "devices/$ID/jobs/+" \
        -t "devices/$ID/commands/+" "$@"
}
# first the session and its subscriptions (-E: exit once the broker acknowledged them), so
# nothing sent after "online" can miss the listener; the broker keeps it for the listener
listen -E > /dev/null
listen --will-topic "devices/$ID/presence" --will-payload "$WILL" --will-qos 1 --will-retain \
    > "$FIFO" &
LISTENER=$!
trap 'presence offline shutdown; kill $LISTENER 2>/dev/null; rm -f "$FIFO"; exit 0' TERM INT

presence online
state
while read -r topic payload; do
    case "$topic" in
        "devices/$ID/config") on_config "$payload" ;;
        "devices/$ID/jobs/"*) on_job "$topic" "$payload" ;;
        "devices/$ID/commands/"*) on_command "$topic" "$payload" ;;
    esac
done < "$FIFO"
