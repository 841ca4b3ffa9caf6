#!/usr/bin/env bash
# Starts and stops Rapport's gRPC services as background processes for `make run`.
#
#   scripts/services.sh start   # every service that exists, each on its port; waits for SERVING;
#                               # then the staff console (HTTP, $RAPPORT_CONSOLE_PORT, default 8060)
#   scripts/services.sh console # the console alone (the services already running)
#   scripts/services.sh stop    # SIGTERM (graceful), SIGKILL after 20 s
#   scripts/services.sh status
#
# Logs and pids under $RAPPORT_STATE/services. The dev API key (all scopes) is created once in
# $RAPPORT_STATE/dev-api-key unless RAPPORT_API_KEYS is set.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RAPPORT_STATE="${RAPPORT_STATE:-$REPO/.state}"
RUN_DIR="$RAPPORT_STATE/services"
PY="$REPO/.venv/bin/python"
# name:grpc port:metrics port — services are added here as they are built.
SERVICES=("identity:50051:9451")
for name in profile decision messaging; do
  case "$name" in
    profile) port=50052; metrics=9452 ;; decision) port=50053; metrics=9453 ;; messaging) port=50054; metrics=9454 ;;
  esac
  [[ -f "$REPO/services/$name/__main__.py" ]] && SERVICES+=("$name:$port:$metrics")
done

log() { echo "services.sh: $*" >&2; }

dev_key() {
  local file="$RAPPORT_STATE/dev-api-key"
  if [[ ! -s "$file" ]]; then
    mkdir -p "$RAPPORT_STATE"
    (umask 077; "$PY" -c 'import secrets; print("rk_dev_" + secrets.token_hex(16))' > "$file")
  fi
  cat "$file"
}

# Decision ids and messaging links are signed; every replica (and restart) must share the key.
secret_of() {
  local file="$RAPPORT_STATE/$1-secret"
  if [[ ! -s "$file" ]]; then
    mkdir -p "$RAPPORT_STATE"
    (umask 077; "$PY" -c 'import secrets; print(secrets.token_hex(32))' > "$file")
  fi
  cat "$file"
}

running() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_serving() {
  local port=$1 deadline=$((SECONDS + 90))
  while (( SECONDS < deadline )); do
    if "$PY" - "$port" <<'PY' 2>/dev/null; then return 0; fi
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
with grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}") as channel:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)
PY
    sleep 0.5
  done
  return 1
}

cmd_start() {
  mkdir -p "$RUN_DIR"
  local key; key="${RAPPORT_API_KEYS:-dev:$(dev_key):*}"
  # The key services present to each other (profile -> identity, ...); the dev key by default.
  local peer_key; peer_key="${RAPPORT_PEER_API_KEY:-$(dev_key)}"
  for entry in "${SERVICES[@]}"; do
    IFS=: read -r name port metrics <<<"$entry"
    local pid_file="$RUN_DIR/$name.pid" log_file="$RUN_DIR/$name.log"
    if running "$pid_file"; then log "$name already running (pid $(cat "$pid_file"))"; continue; fi
    if port_busy "$port"; then
      log "port $port is taken by another process (an old Rapport? see: ss -ltnp | grep $port); $name not started"
      exit 1
    fi
    if [[ "$name" == messaging ]]; then start_smtp_sink; fi
    # exec: the background subshell becomes the service, so $! is its pid and no shell is left
    # holding the caller's stdout open.
    (cd "$REPO" && RAPPORT_API_KEYS="$key" RAPPORT_PORT="$port" RAPPORT_METRICS_PORT="$metrics" \
      RAPPORT_IDENTITY_API_KEY="${RAPPORT_IDENTITY_API_KEY:-$peer_key}" \
      RAPPORT_PROFILE_API_KEY="${RAPPORT_PROFILE_API_KEY:-$peer_key}" \
      RAPPORT_DECISION_API_KEY="${RAPPORT_DECISION_API_KEY:-$peer_key}" \
      RAPPORT_DECISION_SECRET="${RAPPORT_DECISION_SECRET:-$(secret_of decision)}" \
      RAPPORT_MESSAGING_SECRET="${RAPPORT_MESSAGING_SECRET:-$(secret_of messaging)}" \
      PYTHONPATH="$REPO:$REPO/gen" exec setsid nohup "$PY" -m "services.$name") >>"$log_file" 2>&1 </dev/null &
    echo $! >"$pid_file"
    if ! wait_serving "$port" || ! running "$pid_file"; then
      log "$name did not become SERVING on :$port; last log lines:"; tail -n 30 "$log_file" >&2; exit 1
    fi
    echo "  $name  grpc 127.0.0.1:$port  metrics http://127.0.0.1:$metrics/metrics  log $log_file"
  done
  start_console
}

CONSOLE_PORT="${RAPPORT_CONSOLE_PORT:-8060}"

# The staff console (services/console): it signs staff in with any key of RAPPORT_API_KEYS that has
# the console.view scope (the dev key has every scope) and reads the services with the peer key.
start_console() {
  [[ -f "$REPO/services/console/__main__.py" ]] || return 0
  mkdir -p "$RUN_DIR"
  local pid_file="$RUN_DIR/console.pid" log_file="$RUN_DIR/console.log"
  if running "$pid_file"; then log "console already running (pid $(cat "$pid_file"))"; return 0; fi
  if port_busy "$CONSOLE_PORT"; then
    log "port $CONSOLE_PORT is taken by another process (see: ss -ltnp | grep $CONSOLE_PORT); console not started"
    exit 1
  fi
  local key; key="${RAPPORT_API_KEYS:-dev:$(dev_key):*}"
  local peer_key; peer_key="${RAPPORT_PEER_API_KEY:-$(dev_key)}"
  (cd "$REPO" && RAPPORT_API_KEYS="$key" RAPPORT_CONSOLE_PORT="$CONSOLE_PORT" \
    RAPPORT_CONSOLE_SECRET="${RAPPORT_CONSOLE_SECRET:-$(secret_of console)}" \
    RAPPORT_IDENTITY_API_KEY="${RAPPORT_IDENTITY_API_KEY:-$peer_key}" \
    RAPPORT_PROFILE_API_KEY="${RAPPORT_PROFILE_API_KEY:-$peer_key}" \
    RAPPORT_DECISION_API_KEY="${RAPPORT_DECISION_API_KEY:-$peer_key}" \
    RAPPORT_MESSAGING_API_KEY="${RAPPORT_MESSAGING_API_KEY:-$peer_key}" \
    PYTHONPATH="$REPO:$REPO/gen" exec setsid nohup "$PY" -m services.console) >>"$log_file" 2>&1 </dev/null &
  echo $! >"$pid_file"
  local deadline=$((SECONDS + 30))
  until "$PY" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)" \
      "http://127.0.0.1:$CONSOLE_PORT/healthz" 2>/dev/null; do
    if ! running "$pid_file" || (( SECONDS > deadline )); then
      log "the console did not answer on :$CONSOLE_PORT; last log lines:"; tail -n 30 "$log_file" >&2; exit 1
    fi
    sleep 0.3
  done
  echo "  console  http://127.0.0.1:$CONSOLE_PORT/  log $log_file"
}

stop_console() {
  local pid_file="$RUN_DIR/console.pid"
  running "$pid_file" || { rm -f "$pid_file"; return 0; }
  kill -TERM "$(cat "$pid_file")"
  for _ in $(seq 1 20); do running "$pid_file" || break; sleep 0.5; done
  running "$pid_file" && kill -KILL "$(cat "$pid_file")"
  rm -f "$pid_file"
  log "console stopped"
}

# A local SMTP server keeping what messaging sends as files, so the demo's emails are visible
# (RAPPORT_SMTP_HOST/PORT point messaging elsewhere, and then no sink is started).
start_smtp_sink() {
  [[ -n "${RAPPORT_SMTP_HOST:-}" ]] && return 0
  local pid_file="$RUN_DIR/smtp-sink.pid"
  running "$pid_file" && return 0
  (cd "$REPO" && PYTHONPATH="$REPO:$REPO/gen" exec setsid nohup "$PY" -m services.messaging.cli.smtp_sink \
    --port 2525 --dir "$RAPPORT_STATE/mail") >>"$RUN_DIR/smtp-sink.log" 2>&1 </dev/null &
  echo $! >"$pid_file"
  echo "  smtp sink  127.0.0.1:2525  messages in $RAPPORT_STATE/mail"
}

cmd_stop() {
  stop_console
  local index
  for (( index=${#SERVICES[@]}-1; index>=0; index-- )); do  # callers first, identity last
    local entry="${SERVICES[$index]}"
    IFS=: read -r name _ _ <<<"$entry"
    local pid_file="$RUN_DIR/$name.pid"
    running "$pid_file" || { rm -f "$pid_file"; continue; }
    local pid; pid=$(cat "$pid_file")
    kill -TERM "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    rm -f "$pid_file"
    log "$name stopped"
  done
  if running "$RUN_DIR/smtp-sink.pid"; then kill -TERM "$(cat "$RUN_DIR/smtp-sink.pid")"; log "smtp sink stopped"; fi
  rm -f "$RUN_DIR/smtp-sink.pid"
}

cmd_status() {
  for entry in "${SERVICES[@]}"; do
    IFS=: read -r name port _ <<<"$entry"
    if running "$RUN_DIR/$name.pid"; then echo "$name: running on :$port"; else echo "$name: stopped"; fi
  done
  if running "$RUN_DIR/console.pid"; then echo "console: running on http://127.0.0.1:$CONSOLE_PORT/"; else echo "console: stopped"; fi
}

case "${1:-}" in
  start) cmd_start ;; console) start_console ;; stop) cmd_stop ;; status) cmd_status ;; dev-key) dev_key ;;
  *) echo "usage: $0 start|console|stop|status|dev-key" >&2; exit 2 ;;
esac
