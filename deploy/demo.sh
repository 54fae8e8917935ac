#!/usr/bin/env bash
# make demo: start loraserve on the built-in default model, drive it with loractl, stop it cleanly.
# Usage: deploy/demo.sh [BUILD_DIR]
set -euo pipefail
BUILD_DIR=${1:-build}
BIN="$BUILD_DIR/server/loraserve"
CTL="$BUILD_DIR/client/loractl"
MKMODEL="$BUILD_DIR/tools/loraserve-mkmodel"
MODEL="$BUILD_DIR/default-model"
VENDORED="$(dirname "$0")/../models/stories260K"  # the real stories260K (llama2.c, MIT)
WORK=$(mktemp -d /tmp/loraserve-demo.XXXXXX)
SERVER_PID=""
trap '[ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; rm -rf "$WORK"' EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# Prints a command the way it could be typed (arguments with spaces or quotes in single quotes), then
# runs it.
run() {
  local line='$' arg q="'"
  for arg in "$@"; do
    if [[ -z "$arg" || "$arg" =~ [^A-Za-z0-9_./:=,@%+-] ]]; then
      line+=" '${arg//$q/$q\\$q$q}'"
    else
      line+=" $arg"
    fi
  done
  printf '%s\n' "$line"
  "$@"
}

ADAPTER_ROOT="$BUILD_DIR/default-adapters"  # PEFT adapters for the demo model, one dir each
if [ ! -f "$MODEL/config.json" ] || [ ! -d "$ADAPTER_ROOT" ]; then
  step "copying the built-in model (stories260K) and writing its demo adapters"
  rm -rf "$ADAPTER_ROOT" "$MODEL"
  run cp -r "$VENDORED" "$MODEL"
  run "$MKMODEL" --model "$MODEL" --adapters "$ADAPTER_ROOT"
fi

step "starting loraserve on $MODEL (gRPC and /metrics on free ports)"
SERVER_ARGS=(--model="$MODEL" --adapter_root="$ADAPTER_ROOT" --listen=127.0.0.1:0
             --metrics_listen=127.0.0.1:0 --port_file="$WORK/port"
             --metrics_port_file="$WORK/metrics_port" --shutdown_grace=5s)
printf '$ %s %s\n' "$BIN" "${SERVER_ARGS[*]}"
"$BIN" "${SERVER_ARGS[@]}" 2>"$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 1 300); do
  [ -s "$WORK/port" ] && [ -s "$WORK/metrics_port" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
if [ ! -s "$WORK/port" ]; then
  echo "server did not start"; cat "$WORK/server.log"; exit 1
fi
ADDR="127.0.0.1:$(cat "$WORK/port")"
METRICS="127.0.0.1:$(cat "$WORK/metrics_port")"
echo "gRPC on $ADDR, /metrics on http://$METRICS/metrics"
ctl() { run "$CTL" --addr "$ADDR" "$@"; }

step "health (grpc.health.v1)"
ctl health

step "tokenize, score and generate with the base model (stories260K: a real, tiny story model)"
ctl tokenize "Once upon a time"
ctl score --top_logprobs 2 "Once upon a time"
ctl generate --max_new_tokens 48 --temperature 0 "Once upon a time"
ctl generate --max_new_tokens 48 --seed 7 "Once upon a time"
ctl --json generate --max_new_tokens 4 --seed 7 --logprobs "Once upon a time"

ADAPTERS=()
for d in "$ADAPTER_ROOT"/*/; do [ -f "$d/adapter_config.json" ] && ADAPTERS+=("$(basename "$d")"); done
[ ${#ADAPTERS[@]} -gt 0 ] || { echo "no demo adapters under $ADAPTER_ROOT"; exit 1; }

step "adapters: load from --adapter_root, list, generate with each"
for a in "${ADAPTERS[@]}"; do ctl adapters load "$a" "$a"; done
ctl adapters list
for a in "${ADAPTERS[@]}"; do
  ctl generate --adapter "$a" --max_new_tokens 16 --temperature 0 "Once upon a time"
done

step "one prompt, side by side: the base model and two adapters (greedy; the demo adapters have random weights)"
PROMPT="Lily wanted to play with the ball"
for a in "" demo-qv demo-mlp; do
  [ -z "$a" ] || [ -d "$ADAPTER_ROOT/$a" ] || continue
  printf '%-10s ' "${a:-base}"
  "$CTL" --addr "$ADDR" --quiet generate ${a:+--adapter "$a"} --max_new_tokens 32 --temperature 0 "$PROMPT" | head -1
done

step "the same over the OpenAI-compatible HTTP API (curl http://$METRICS/v1/completions)"
run curl -s "http://$METRICS/v1/models"
run curl -s "http://$METRICS/v1/completions" -H 'Content-Type: application/json' \
  -d "{\"model\": \"demo-qv\", \"prompt\": \"$PROMPT\", \"max_tokens\": 24, \"temperature\": 0}"
echo

A=${ADAPTERS[0]}
[ -d "$ADAPTER_ROOT/demo-qv" ] && A=demo-qv
step "merge $A into the base weights (its answers stay the same), then unmerge"
ctl adapters merge "$A"
ctl generate --adapter "$A" --max_new_tokens 16 --temperature 0 "Once upon a time"
ctl adapters unmerge "$A"

if [ -d "$ADAPTER_ROOT/demo-qv" ] && [ -d "$ADAPTER_ROOT/demo-mlp" ]; then
  step "combine two adapters (PEFT add_weighted_adapter, svd) and generate with the result"
  ctl adapters combine demo-mix demo-qv:0.7 demo-mlp:0.3 --type svd
  ctl generate --adapter demo-mix --max_new_tokens 16 --temperature 0 "Once upon a time"
fi

step "save $A into a local dir, upload that copy back (chunks with SHA-256), export a merged model"
ctl adapters save "$A" "$WORK/saved-$A" --progress
ctl adapters upload "${A}-copy" "$WORK/saved-$A" --progress
ctl adapters list
ctl adapters export "$WORK/merged-$A" "$A" --progress

step "delete the copy, unload everything"
ctl adapters delete "${A}-copy"
ctl adapters unload-all

step "errors carry gRPC codes (loractl exits with the code): an unknown adapter, human and --json"
ctl adapters get no-such-adapter || echo "exit code $?"
ctl --json adapters get no-such-adapter || echo "exit code $?"

step "metrics (http://$METRICS/metrics)"
ctl metrics --metrics_addr "$METRICS" loraserve_requests_total
ctl metrics --metrics_addr "$METRICS" loraserve_generated_tokens_total

step "stopping the server with SIGTERM (drains, exits 0)"
kill -TERM "$SERVER_PID"
status=0
wait "$SERVER_PID" || status=$?
SERVER_PID=""
echo "server exited with status $status"
echo "--- server log (access lines: one per RPC) ---"
cat "$WORK/server.log"
exit "$status"
