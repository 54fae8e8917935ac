#!/usr/bin/env bash
# make demo: start loraserve on the built-in default, drive it with loractl, stop it cleanly.
set -euo pipefail
BUILD_DIR=${1:-build}
BIN="$BUILD_DIR/server/loraserve"
CTL="$BUILD_DIR/client/loractl"
WORK=$(mktemp -d /tmp/loraserve-demo.XXXXXX)
trap 'kill "$SERVER_PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "starting loraserve (gRPC on a free port)"
"$BIN" --listen=127.0.0.1:0 --port_file="$WORK/port" 2>"$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 1 100); do [ -s "$WORK/port" ] && break; sleep 0.1; done
[ -s "$WORK/port" ] || { echo "server did not start"; cat "$WORK/server.log"; exit 1; }
ADDR="127.0.0.1:$(cat "$WORK/port")"
echo "listening on $ADDR"

step "loractl --addr $ADDR health"
"$CTL" --addr "$ADDR" health

step "stopping the server with SIGTERM"
kill -TERM "$SERVER_PID"
wait "$SERVER_PID"
echo "server exited with status $?"
echo "--- server log ---"
cat "$WORK/server.log"
