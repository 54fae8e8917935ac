#!/usr/bin/env bash
# ctest install_consumer: install the build tree into a fresh prefix, build tests/consumer against
# that prefix only (find_package(loraserve CONFIG)), start the installed `loraserve` on the
# build's built-in model and run the consumer and the installed `loractl` against it.
#
# usage: run_consumer_test.sh BUILD_DIR [CMAKE [GENERATOR [CXX_COMPILER]]]
set -euo pipefail

build_dir=$(cd "$1" && pwd)
cmake=${2:-cmake}
generator=${3:-}
cxx=${4:-}
src_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/loraserve-consumer.XXXXXX")
server_pid=
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  for log in "$tmp"/*.log; do
    [[ -f "$log" ]] && { echo "---- $(basename "$log")" >&2; tail -n 40 "$log" >&2; }
  done
  exit 1
}

prefix="$tmp/prefix"
"$cmake" --install "$build_dir" --prefix "$prefix" >"$tmp/install.log" 2>&1 ||
  fail "cmake --install"

# Exactly the documented files: no tests, no third-party headers or libraries.
unexpected=$(cd "$prefix" && find . \( -type f -o -type l \) | sed 's|^\./||' | grep -Ev \
  '^(bin/(loraserve|loractl|loraserve-mkmodel)|include/loraserve/client\.h|share/loraserve/default-(model/([a-z_.]+|LICENSE|README\.md)|adapters/demo-[a-z]+/adapter_[a-z_.]+)|lib[^/]*(/[^/]+)?/(libloraserve_client\.so(\.[0-9]+)*|cmake/loraserve/loraserve(Config|ConfigVersion|Targets(-[a-z]+)?)\.cmake))$' ||
  true)
[[ -z "$unexpected" ]] || fail "unexpected installed files:"$'\n'"$unexpected"
[[ -x "$prefix/bin/loraserve" && -x "$prefix/bin/loractl" && -f "$prefix/include/loraserve/client.h" ]] ||
  fail "installed tree is incomplete"

# Configure with the install prefix as the only place to look: no package registries, no
# environment hints, so the build tree can never be picked up instead.
consumer_build="$tmp/consumer-build"
configure=(-S "$src_dir" -B "$consumer_build" -DCMAKE_BUILD_TYPE=Release
  "-DCMAKE_PREFIX_PATH=$prefix"
  -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON -DCMAKE_FIND_PACKAGE_NO_SYSTEM_PACKAGE_REGISTRY=ON)
[[ -n "$generator" ]] && configure+=(-G "$generator")
[[ -n "$cxx" ]] && configure+=("-DCMAKE_CXX_COMPILER=$cxx")
if command -v ccache >/dev/null; then
  configure+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  # Paths under the temp dir are hashed relative to it, so reruns hit the cache.
  export CCACHE_BASEDIR="$tmp" CCACHE_NOHASHDIR=true
fi
env -u CMAKE_PREFIX_PATH -u loraserve_DIR -u loraserve_ROOT -u LORASERVE_ROOT \
  "$cmake" "${configure[@]}" >"$tmp/configure.log" 2>&1 || fail "configuring the consumer"
found_dir=$(sed -n 's/^loraserve_DIR:PATH=//p' "$consumer_build/CMakeCache.txt")
[[ "$found_dir" == "$prefix"/* ]] || fail "find_package found loraserve in '$found_dir', not in $prefix"
"$cmake" --build "$consumer_build" -j2 >"$tmp/build.log" 2>&1 || fail "building the consumer"
consumer="$consumer_build/loraserve_consumer"
client_lib=$(ldd "$consumer" | sed -n 's/.*libloraserve_client[^ ]* => \([^ ]*\).*/\1/p')
[[ "$client_lib" == "$prefix"/* ]] || fail "consumer loads libloraserve_client from '$client_lib'"

# The installed server, without --model: it must serve the installed built-in demo model (its
# start-up line names the model directory).
[[ -f "$prefix/share/loraserve/default-model/config.json" ]] || fail "the demo model is not installed"
port_file="$tmp/port"
OMP_NUM_THREADS=1 "$prefix/bin/loraserve" --listen=127.0.0.1:0 \
  --port_file="$port_file" --metrics_listen=127.0.0.1:0 --threads=1 >"$tmp/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 600); do
  [[ -s "$port_file" ]] && break
  kill -0 "$server_pid" 2>/dev/null || fail "loraserve exited before serving"
  sleep 0.1
done
[[ -s "$port_file" ]] || fail "loraserve did not write --port_file within 60 s"
addr="127.0.0.1:$(tr -d '[:space:]' <"$port_file")"
grep -qF "loading $(realpath "$prefix")/share/loraserve/default-model" "$tmp/server.log" ||
  fail "the installed loraserve did not pick the installed demo model"

"$consumer" "$addr" >"$tmp/consumer.log" 2>&1 || fail "the consumer failed"
cat "$tmp/consumer.log"
grep -q '^health: SERVING$' "$tmp/consumer.log" || fail "consumer output: no health"
grep -q '^generate: 4 tokens (4 streamed), finish=length' "$tmp/consumer.log" ||
  fail "consumer output: no generation"
grep -q '^consumer OK$' "$tmp/consumer.log" || fail "consumer output: not OK"

"$prefix/bin/loractl" --addr "$addr" health >"$tmp/loractl.log" 2>&1 ||
  fail "the installed loractl failed"
echo "installed loractl: $(tr '\n' ' ' <"$tmp/loractl.log")"
echo "install_consumer OK"
