#!/usr/bin/env bash
# Runs the official MCP conformance suite (server side, --suite all) against the fixture server
# directly, then through Tollgate (HTTP front -> HTTP upstream, and HTTP front -> stdio
# upstream), and fails if any scenario that passes directly fails through Tollgate.
#
# Needs: the workspace built (cargo build), and `npm install --prefix tests/peers`.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${TOLLGATE_TARGET_DIR:-${CARGO_TARGET_DIR:-$root/target}/debug}
peers=$root/tests/peers/node_modules
node_dir=$peers/node/bin
[ -x "$node_dir/node" ] || { echo "node 22 missing: npm install --prefix tests/peers" >&2; exit 1; }
export PATH=$node_dir:$PATH
suite=$peers/.bin/conformance
out=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$out"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listening on port $1" >&2
  return 1
}

# Prints "<scenario> <passed> <failed>" for each scenario of one suite run.
run_suite() {
  local label=$1 url=$2
  node "$suite" server --url "$url" --suite all -o "$out/$label" >"$out/$label.log" 2>&1 || true
  sed -n 's/^[✓✗] \([a-z0-9-]*\): \([0-9]*\) passed, \([0-9]*\) failed.*/\1 \2 \3/p' "$out/$label.log" >"$out/$label.txt"
  if [ ! -s "$out/$label.txt" ]; then
    echo "the suite produced no summary for $label:" >&2
    tail -30 "$out/$label.log" >&2
    exit 1
  fi
}

fixture_port=$(free_port)
"$bin/tollgate-fixture" http "127.0.0.1:$fixture_port" >/dev/null 2>&1 &
pids+=($!)
wait_port "$fixture_port"
run_suite direct "http://127.0.0.1:$fixture_port/mcp"

start_tollgate() {
  local label=$1 upstream=$2 port
  port=$(free_port)
  cat >"$out/$label.toml" <<TOML
# The suite checks the relay: policy is off, by name.
[policy]
mode = "allow-all"

[front.http]
listen = "127.0.0.1:$port"

[[upstream]]
name = "fixture"
$upstream
TOML
  RUST_LOG=${RUST_LOG:-warn} "$bin/tollgate" run --config "$out/$label.toml" 2>"$out/$label.stderr" &
  pids+=($!)
  wait_port "$port"
  run_suite "$label" "http://127.0.0.1:$port/mcp"
}

start_tollgate via-http "url = \"http://127.0.0.1:$fixture_port/mcp\""
start_tollgate via-stdio "command = \"$bin/tollgate-fixture\"
args = [\"stdio\"]"

status=0
printf '%-34s %-10s %-10s %-10s\n' scenario direct via-http via-stdio
while read -r scenario passed failed; do
  direct="$passed/$((passed + failed))"
  row=$(printf '%-34s %-10s' "$scenario" "$direct")
  for label in via-http via-stdio; do
    line=$(grep "^$scenario " "$out/$label.txt" || echo "$scenario 0 1")
    read -r _ p f <<<"$line"
    row+=$(printf ' %-10s' "$p/$((p + f))")
    if [ "$failed" = 0 ] && { [ "$f" != 0 ] || [ "$p" != "$passed" ]; }; then
      status=1
      row+=" REGRESSION($label)"
    fi
  done
  echo "$row"
done <"$out/direct.txt"

count() { awk '{p+=$2; f+=$3} END {print p" passed, "f" failed"}' "$1"; }
echo "direct:    $(count "$out/direct.txt")"
echo "via-http:  $(count "$out/via-http.txt")"
echo "via-stdio: $(count "$out/via-stdio.txt")"
if [ "$status" != 0 ]; then
  for label in via-http via-stdio; do
    echo "--- $label: tollgate stderr (tail)" >&2
    tail -20 "$out/$label.stderr" >&2 || true
  done
  echo "conformance: scenarios that pass directly fail through tollgate" >&2
fi
exit "$status"
