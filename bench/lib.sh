# Shared by bench/run, bench/ab and bench/profile (sourced, not run): the side-by-side setup of
# the external gateway benchmark qbgate is compared with. Loopback only; every process started
# here is recorded and stopped by its PID on exit (TERM, then KILL after a grace period).
#
#   upstream   nginx, one worker, fixed answers: GET /chat/Dialog.json the dialog list, any other
#              path and method the dialog itself (whose owner makes the PUTs)
#   nginx      map of the 1,000 Authorization values -> 401, On-Behalf-Of required -> 400,
#              limit_req per key (never triggers), keepalive upstream, one JSON access line per
#              request to a file; a second listener speaks cleartext HTTP/2 (`listen ... http2`)
#   haproxy    key map (key -> limit) -> 401, On-Behalf-Of -> 400, stick-table http_req_rate
#              per key (never triggers), http-reuse always; no access log unless HAPROXY_LOG=1 (as
#              the external benchmark has it); a second frontend speaks cleartext HTTP/2 (`proto h2`)
#   qbgate     `qbgate run` with bench/inputs.py's policy (policy file format, 1,000 keys, dialog
#              rules enforced), its JSON access log to a file; optionally the Redis store
# Callers set: ROOT (the repository), WORK (a fresh temp dir), and call bench_begin first.

PATH=$PATH:/usr/sbin:/sbin

bench_die() { echo "[bench] ERROR: $*" >&2; exit 1; }
bench_log() { echo "[bench] $*" >&2; }

# need TOOL[:debian-package] ...: fail loudly, naming the package, when a tool is missing.
need() {
  local spec tool pkg missing=()
  for spec in "$@"; do
    tool=${spec%%:*}; pkg=${spec#*:}
    command -v "$tool" >/dev/null || missing+=("$tool (apt-get install -y $pkg)")
  done
  ((${#missing[@]} == 0)) || bench_die "missing tools: ${missing[*]}"
}

BENCH_PIDS=()
bench_stop_all() {
  local i pid p alive
  for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do
    pid=${BENCH_PIDS[i]}
    local tree
    tree=$(bench_tree "$pid")
    # shellcheck disable=SC2086
    kill -TERM $tree 2>/dev/null || true
    for _ in $(seq 30); do
      alive=""
      for p in $tree; do kill -0 "$p" 2>/dev/null && [[ $(ps -o stat= -p "$p") != Z* ]] && alive+=" $p"; done
      [[ -n $alive ]] || break
      sleep 0.1
    done
    # shellcheck disable=SC2086
    [[ -z $alive ]] || kill -KILL $alive 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  BENCH_PIDS=()
}

bench_begin() { # chmod'ed temp dir, exit trap
  chmod 755 "$WORK" # nginx workers run as nobody
  mkdir -p "$WORK/logs" "$WORK/tmp" "$WORK/gen"
  trap 'rc=$?; trap - EXIT; bench_stop_all; [[ -n ${KEEP_WORK:-} ]] || rm -rf "$WORK"; exit $rc' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

bench_tree() { # PID and its descendants, one per line
  local child
  echo "$1"
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do bench_tree "$child"; done
}

# start_pinned NAME CPU CMD...: in the background on CPU, output to $WORK/logs/NAME.log; sets
# LAST_PID (the server itself: the command is exec'ed).
start_pinned() {
  local name=$1 cpu=$2
  shift 2
  (exec taskset -c "$cpu" "$@") >"$WORK/logs/$name.log" 2>&1 &
  LAST_PID=$!
  BENCH_PIDS+=("$LAST_PID")
}

# wait_port NAME PORT PID [TIMEOUT_S]: until 127.0.0.1:PORT accepts, bounded.
wait_port() {
  local name=$1 port=$2 pid=$3 deadline=$((SECONDS + ${4:-20}))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$WORK/logs/$name.log" >&2; bench_die "$name exited before listening on 127.0.0.1:$port"; }
    ((SECONDS < deadline)) || bench_die "$name: 127.0.0.1:$port not open after ${4:-20} s"
    sleep 0.05
  done
}

# check_loopback NAME PID: every socket the process tree listens on is on loopback.
check_loopback() {
  local pids addr users p bad=""
  pids=$(bench_tree "$2")
  while read -r addr users; do
    for p in $pids; do
      [[ $users == *"pid=$p,"* ]] && { [[ $addr == 127.* || $addr == "[::1]"* ]] || bad+=" $addr"; }
    done
  done < <(ss -Hltunp | awk '{print $5, $7}')
  [[ -z $bad ]] || bench_die "$1 listens on non-loopback address(es):$bad"
}

# gen_inputs UPSTREAM_PORT [REDIS_PORT]: bench/inputs.py into $WORK/gen (a directory of its own:
# qbgate watches its policy's directory, and any event there would start a reload).
gen_inputs() {
  python3 "$ROOT/bench/inputs.py" "$WORK/gen" "$@"
  DIALOG_ID=5d75393ba28f9a17e1cb0f9e
  OWNER=104357
  KEY0=$(cat "$WORK/gen/key0")
  GET_PATH="/chat/Dialog.json?limit=10"
  PUT_PATH="/chat/Dialog/$DIALOG_ID.json"
  PUT_BODY='{"name":"New Year 2020 party"}'
  # bench/load.lua's arguments: GET rotating 100,000 users; the judged PUT as the dialog's owner.
  LOAD_GET=("$WORK/gen/load-keys.txt" GET "$GET_PATH" "" rotate)
  LOAD_PUT=("$WORK/gen/load-keys.txt" PUT "$PUT_PATH" "$PUT_BODY" "$OWNER")
}

start_upstream() { # PORT CPU: sets UP_PID
  cat >"$WORK/upstream.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/upstream.pid;
error_log $WORK/logs/upstream.error.log warn;
events { worker_connections 4096; multi_accept on; }
http {
  access_log off;
  server_tokens off;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  client_body_temp_path $WORK/tmp/up_body;
  proxy_temp_path $WORK/tmp/up_proxy;
  fastcgi_temp_path $WORK/tmp/up_fastcgi;
  uwsgi_temp_path $WORK/tmp/up_uwsgi;
  scgi_temp_path $WORK/tmp/up_scgi;
  server {
    listen 127.0.0.1:$1 backlog=4096;
    default_type application/json;
    # The list for GET /chat/Dialog.json (also a rule-checking gateway's lookup by _id);
    # the dialog for any other path and method (the PUT's answer).
    location = /chat/Dialog.json {
      if (\$request_method = GET) { return 200 '$(cat "$WORK/gen/dialogs.json")'; }
      return 200 '$(cat "$WORK/gen/dialog.json")';
    }
    location / { return 200 '$(cat "$WORK/gen/dialog.json")'; }
  }
}
EOF
  start_pinned upstream "$2" nginx -c "$WORK/upstream.conf" -e "$WORK/logs/upstream.error.log"
  UP_PID=$LAST_PID
  wait_port upstream "$1" "$UP_PID"
}

start_nginx() { # PORT H2_PORT UPSTREAM_PORT CPU: sets NGX_PID
  cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/logs/nginx.error.log warn;
events { worker_connections 4096; multi_accept on; }
http {
  # One JSON access line per request, as qbgate writes (the key is never logged).
  log_format gw escape=json '{"time":"\$time_iso8601","method":"\$request_method","path":"\$uri",'
      '"status":\$status,"bytes_in":\$request_length,"bytes_out":\$bytes_sent,'
      '"user_agent":"\$http_user_agent","user":"\$http_on_behalf_of","request_id":"\$request_id",'
      '"duration":\$request_time,"upstream_duration":"\$upstream_response_time"}';
  access_log $WORK/logs/nginx.access.log gw buffer=64k flush=1s;
  server_tokens off;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  client_body_temp_path $WORK/tmp/ngx_body;
  proxy_temp_path $WORK/tmp/ngx_proxy;
  fastcgi_temp_path $WORK/tmp/ngx_fastcgi;
  uwsgi_temp_path $WORK/tmp/ngx_uwsgi;
  scgi_temp_path $WORK/tmp/ngx_scgi;
  map_hash_max_size 4096;
  map_hash_bucket_size 256;
  map \$http_authorization \$key_ok {
    default 0;
    include $WORK/gen/nginx-keys.map;
  }
  # Per-key limits as the external benchmark has them: each key counted in exactly one zone (an
  # empty zone key is not counted), the rate-limited key in its own, lower one.
  map \$http_authorization \$rl_key {
    "ApiKey $(cat "$WORK/gen/rl-key")" \$http_authorization;
    default "";
  }
  map \$http_authorization \$load_key {
    "ApiKey $(cat "$WORK/gen/rl-key")" "";
    default \$http_authorization;
  }
  limit_req_zone \$load_key zone=per_key:10m rate=1000000r/s;
  limit_req_zone \$rl_key zone=per_key_rl:1m rate=100r/s;
  limit_req_status 429;
  limit_req_log_level info;
  upstream api {
    server 127.0.0.1:$3;
    keepalive 128;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
  }
  server {
    listen 127.0.0.1:$1 backlog=4096;
    listen 127.0.0.1:$2 http2;
    if (\$key_ok = 0) { return 401; }
    if (\$http_on_behalf_of = "") { return 400; }
    location / {
      limit_req zone=per_key burst=1000 nodelay;
      limit_req zone=per_key_rl burst=10 nodelay;
      proxy_pass http://api;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
    }
  }
}
EOF
  start_pinned nginx "$4" nginx -c "$WORK/nginx.conf" -e "$WORK/logs/nginx.error.log"
  NGX_PID=$LAST_PID
  wait_port nginx "$1" "$NGX_PID"
}

# HAPROXY_LOG=1: one JSON access line per request, like nginx's and qbgate's (to stdout: a file
# here). Off by default, as in the external benchmark, whose HAProxy figures have no access log.
haproxy_log() { # SECTION: the config lines that section needs for the access log, if any
  [[ ${HAPROXY_LOG:-0} == 1 ]] || return 0
  case $1 in
    global) echo "  log stdout format raw local0" ;;
    defaults) echo "  log global" ;;
    frontend)
      echo "  unique-id-format %{+X}o%ci%cp%rt"
      echo "  http-request capture req.hdr(On-Behalf-Of) len 24"
      cat <<'LOGFORMAT'
  log-format '{"time":"%t","method":"%HM","path":"%{+E}HPO","status":%ST,"bytes_in":%U,"bytes_out":%B,"user":"%[capture.req.hdr(0),json(utf8s)]","request_id":"%ID","duration_ms":%Ta,"upstream_ms":%Tr}'
LOGFORMAT
      ;;
  esac
}

start_haproxy() { # PORT H2_PORT UPSTREAM_PORT CPU: sets HAP_PID
  cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
  pidfile $WORK/haproxy.pid
  tune.bufsize 16384
$(haproxy_log global)
defaults
  mode http
$(haproxy_log defaults)
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 75s
  option http-keep-alive
  http-reuse always
backend per_key
  stick-table type string len 64 size 16k expire 10s store http_req_rate(1s)
frontend gateway
  bind 127.0.0.1:$1
  bind 127.0.0.1:$2 proto h2
$(haproxy_log frontend)
  http-request set-var(txn.key) req.fhdr(Authorization),field(2,' ') if { req.fhdr(Authorization) -m beg "ApiKey " }
  http-request set-var(txn.limit) var(txn.key),map_str_int($WORK/gen/haproxy-keys.map)
  http-request deny deny_status 401 unless { var(txn.limit) -m found }
  http-request deny deny_status 400 unless { req.hdr(On-Behalf-Of) -m found }
  http-request track-sc0 var(txn.key) table per_key
  http-request deny deny_status 429 if { sc_http_req_rate(0),sub(txn.limit) gt 0 }
  default_backend api
backend api
  server upstream 127.0.0.1:$3 maxconn 1000
EOF
  haproxy -c -q -f "$WORK/haproxy.cfg" || bench_die "haproxy rejects its config ($WORK/haproxy.cfg)"
  start_pinned haproxy "$4" haproxy -db -f "$WORK/haproxy.cfg"
  HAP_PID=$LAST_PID
  wait_port haproxy "$1" "$HAP_PID"
}

start_redis() { # PORT CPU: sets REDIS_PID
  start_pinned redis "$2" redis-server --port "$1" --bind 127.0.0.1 --save '' --appendonly no
  REDIS_PID=$LAST_PID
  wait_port redis "$1" "$REDIS_PID"
}

# start_qbgate NAME POLICY PORT ADMIN_PORT CPU: its JSON access log (QBGATE_LOG, default info)
# to $WORK/logs/NAME.log; sets QB_STARTED_PID; waits for /readyz.
start_qbgate() {
  local name=$1 policy=$2 port=$3 admin=$4 cpu=$5
  start_pinned "$name" "$cpu" env QBGATE_LOG="${QBGATE_LOG:-info}" QBGATE_LOG_FORMAT=json "$QBGATE" run \
    --policy "$policy" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin"
  QB_STARTED_PID=$LAST_PID
  wait_port "$name" "$admin" "$LAST_PID" 30
  local deadline=$((SECONDS + 30))
  until curl -s -o /dev/null -f -m 1 "http://127.0.0.1:$admin/readyz"; do
    ((SECONDS < deadline)) || bench_die "$name not ready after 30 s"
    sleep 0.05
  done
}

hwm_kib() { # PID: VmHWM summed over the process tree
  local p total=0 v
  for p in $(bench_tree "$1"); do
    v=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
