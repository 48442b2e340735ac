#!/usr/bin/env bash
# Rate-limit accuracy benchmark (issue 4, item 7). Not a timed test: run it by hand.
#
# One key at per_second 100, burst 10, offered RATE r/s (default 1000) for SECS seconds (default
# 10) on loopback. Expected allowed = burst + 100 x (span of the offered load), i.e. about 1,010.
#   memory store, one gateway:        within 1%
#   redis store, two gateways (load split between them): within 2%
#
# Usage: bench/ratelimit-accuracy.sh [memory|redis|both]     (default: both)
# Env:   QBGATE=path/to/qbgate (default target/release/qbgate, else target/debug/qbgate)
#        RATE=1000 SECS=10
# Needs: python3 (stdlib only); redis-server for the redis run. Everything binds 127.0.0.1 and
# every process started here is stopped on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
MODE=${1:-both}
RATE=${RATE:-1000}
SECS=${SECS:-10}
if [[ -z "${QBGATE:-}" ]]; then
  if [[ -x target/release/qbgate ]]; then QBGATE=target/release/qbgate
  elif [[ -x target/debug/qbgate ]]; then QBGATE=target/debug/qbgate
  else echo "build qbgate first (cargo build --release)" >&2; exit 2; fi
fi

STATUS=0
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() { # port, what
  for _ in $(seq 1 200); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "$2 did not start on port $1" >&2; exit 1
}

KEY=bench-rate-limit-key-0001
DIGEST=$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)

# Upstream: answers 200 {} to everything, keep-alive.
UP_PORT=$(free_port)
python3 - "$UP_PORT" >"$WORK/upstream.log" 2>&1 <<'PY' &
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def _ok(self):
        n = int(self.headers.get("content-length") or 0)
        if n: self.rfile.read(n)
        body = b'{"items":[]}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_PUT = do_DELETE = _ok
    def log_message(self, *a): pass
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
PIDS+=($!)
wait_port "$UP_PORT" upstream

policy() { # store section -> file
  cat >"$WORK/policy-$1.yaml" <<YAML
version: 1
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
upstream:
  url: http://127.0.0.1:$UP_PORT
  api_key: { env: QB_API_KEY }
$2
keys:
  - id: bench
    sha256: $DIGEST
    on_behalf_of: none
    rate_limit: { per_second: 100, burst: 10 }
YAML
  echo "$WORK/policy-$1.yaml"
}

start_gate() { # policy file -> sets GATE_PORT (no subshell, so its pid is recorded for cleanup)
  local port admin
  port=$(free_port); admin=$(free_port)
  QB_API_KEY=bench-upstream RUST_LOG=warn "$QBGATE" run --policy "$1" \
    --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" >>"$WORK/qbgate.log" 2>&1 &
  PIDS+=($!)
  wait_port "$port" qbgate
  GATE_PORT=$port
}

# Open-loop load: RATE r/s for SECS s, spread round-robin over the given gateway ports, from a
# pool of keep-alive connections. Args: tolerance (%), ports. Prints the counts, the expected
# count and PASS/FAIL; exits 1 on FAIL.
load() {
  python3 - "$RATE" "$SECS" "$KEY" "$@" <<'PY'
import http.client, sys, threading, time
rate, secs, key, tol = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], float(sys.argv[4])
ports = [int(p) for p in sys.argv[5:]]
total = int(rate * secs)
workers = 64
lock = threading.Lock()
counts = {"allowed": 0, "limited": 0, "other": 0}
first, last = [None], [None]
start = time.monotonic() + 0.5
def run(w):
    conns = {}
    for i in range(w, total, workers):
        at = start + i / rate
        d = at - time.monotonic()
        if d > 0: time.sleep(d)
        port = ports[i % len(ports)]
        for attempt in range(2):
            try:
                c = conns.get(port) or http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conns[port] = c
                t = time.monotonic()
                c.request("GET", "/chat/Dialog.json", headers={"Authorization": "ApiKey " + key})
                r = c.getresponse(); r.read()
                status = r.status
                break
            except (OSError, http.client.HTTPException):
                conns.pop(port, None); status = None
        with lock:
            first[0] = t if first[0] is None else min(first[0], t)
            last[0] = t if last[0] is None else max(last[0], t)
            k = "allowed" if status == 200 else "limited" if status == 429 else "other"
            counts[k] += 1
ts = [threading.Thread(target=run, args=(w,)) for w in range(workers)]
for t in ts: t.start()
for t in ts: t.join()
span = last[0] - first[0]
expected = 10 + 100 * span
err = (counts["allowed"] - expected) / expected * 100
print(f'offered {total} in {span:.3f}s ({total/span:.0f} r/s achieved): allowed {counts["allowed"]}, '
      f'429 {counts["limited"]}, other {counts["other"]}; expected {expected:.1f} '
      f'(10 + 100 x span), error {err:+.2f}% (tolerance {tol}%)')
if abs(err) > tol or counts["other"]:
    print("FAIL"); sys.exit(1)
print("PASS")
PY
}

if [[ $MODE == memory || $MODE == both ]]; then
  start_gate "$(policy memory "")"; P=$GATE_PORT
  echo "== memory store, one gateway (port $P)"
  load 1 "$P" || STATUS=1
fi

if [[ $MODE == redis || $MODE == both ]]; then
  if ! command -v redis-server >/dev/null; then
    echo "== redis store: SKIPPED (redis-server not installed)"
  else
    RP=$(free_port)
    redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 &
    PIDS+=($!)
    wait_port "$RP" redis-server
    POL=$(policy redis "rate_limit:
  store: redis
  redis:
    url: redis://127.0.0.1:$RP
    on_error: deny")
    start_gate "$POL"; A=$GATE_PORT
    start_gate "$POL"; B=$GATE_PORT
    echo "== redis store, two gateways (ports $A, $B) sharing redis on $RP"
    load 2 "$A" "$B" || STATUS=1
  fi
fi
exit $STATUS
