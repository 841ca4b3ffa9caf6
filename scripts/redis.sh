#!/usr/bin/env bash
# Runs a real redis-server (Debian package) for local dev and tests, without systemd.
#
#   scripts/redis.sh install   # apt-get install redis-server if it is not on PATH
#   scripts/redis.sh start     # daemonize on 127.0.0.1:$REDIS_PORT (if needed) and wait for PING
#   scripts/redis.sh stop      # SHUTDOWN NOSAVE; SIGTERM, then SIGKILL, as fallbacks
#   scripts/redis.sh status    # exit 0 if it answers PING, 3 if not running
#
# Environment: REDIS_PORT (default 6379); RAPPORT_STATE (default <repo>/.state): pid, log and
# working dir under $RAPPORT_STATE/redis. Nothing is persisted (no RDB, no AOF): it is a cache.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RAPPORT_STATE="${RAPPORT_STATE:-$REPO/.state}"
STATE_DIR="$RAPPORT_STATE/redis"
HOST=127.0.0.1
PORT="${REDIS_PORT:-6379}"
PID_FILE="$STATE_DIR/redis-$PORT.pid"   # port in the name: one state dir can host several
LOG_FILE="$STATE_DIR/redis-$PORT.log"
START_TIMEOUT="${REDIS_START_TIMEOUT:-30}"
STOP_TIMEOUT=30

# Alive and not a zombie: a daemon orphaned to pid 1 can stay a zombie for a while here, and
# kill -0 still succeeds on zombies.
alive() {
  local st
  st="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
  [[ -n "$st" && "$st" != Z ]]
}

log() { echo "redis.sh: $*" >&2; }
die() { log "$*"; exit 1; }

[[ "$PORT" =~ ^[0-9]+$ ]] && (( PORT > 0 && PORT < 65536 )) || die "bad REDIS_PORT '$PORT'"

cmd_install() {
  if command -v redis-server >/dev/null; then
    log "redis-server already installed ($(redis-server --version | cut -d' ' -f3))"
    return 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Try without 'apt-get update' first: it is slow and usually the lists are fresh enough.
  if ! apt-get install -y -q redis-server; then
    log "install failed; refreshing package lists and retrying"
    apt-get update -q
    apt-get install -y -q redis-server
  fi
}

# PING via redis-cli if present (it comes with redis-server), else raw RESP over /dev/tcp.
ping_ok() {
  if command -v redis-cli >/dev/null; then
    [[ "$(timeout 5 redis-cli -h "$HOST" -p "$PORT" ping 2>/dev/null)" == "PONG" ]]
  else
    local reply
    reply="$(exec 3<>"/dev/tcp/$HOST/$PORT" && printf 'PING\r\n' >&3 && timeout 2 head -c 5 <&3)" 2>/dev/null || return 1
    [[ "$reply" == "+PONG" ]]
  fi
}

# Pid of our redis if alive; the command line check keeps a recycled pid from being killed.
running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "redis-server.*:$PORT" || return 1
  echo "$pid"
}

cmd_start() {
  command -v redis-server >/dev/null || cmd_install
  mkdir -p "$STATE_DIR"
  exec 9>"$STATE_DIR/.start-$PORT.lock"   # serialise concurrent starts
  flock 9
  if ping_ok; then
    log "already running on $HOST:$PORT"
    return 0
  fi
  local t0
  t0="$(date +%s.%N)"
  # Everything on the command line (no config file to keep in sync); daemonize writes the pid
  # file. 9>&- : the daemon must not inherit (and hold forever) the start lock.
  redis-server \
    --bind "$HOST" --port "$PORT" --protected-mode yes \
    --daemonize yes --pidfile "$PID_FILE" --logfile "$LOG_FILE" --dir "$STATE_DIR" \
    --save "" --appendonly yes --appendfsync everysec \
    9>&- || { tail -n 50 "$LOG_FILE" >&2 2>/dev/null || true; die "redis-server failed to start"; }
  local deadline=$((SECONDS + START_TIMEOUT))
  until ping_ok; do
    if (( SECONDS >= deadline )); then
      log "no PONG on $HOST:$PORT within ${START_TIMEOUT}s; last 50 lines of $LOG_FILE:"
      tail -n 50 "$LOG_FILE" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
  log "ready on $HOST:$PORT after $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}') s"
}

cmd_stop() {
  local pid
  if ! pid="$(running_pid)"; then
    if ping_ok; then
      log "something not started from $STATE_DIR answers on $HOST:$PORT; left alone"
    else
      log "not running"
    fi
    rm -f "$PID_FILE"
    return 0
  fi
  # SHUTDOWN NOSAVE: nothing to persist. Signals only if it is still alive afterwards.
  if command -v redis-cli >/dev/null; then
    timeout 5 redis-cli -h "$HOST" -p "$PORT" shutdown nosave >/dev/null 2>&1 || true
  fi
  local i
  for ((i = 0; i < 20; i++)); do alive "$pid" || break; sleep 0.1; done
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do alive "$pid" || break; sleep 0.1; done
  fi
  if alive "$pid"; then
    log "still alive after ${STOP_TIMEOUT}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PID_FILE"
  log "stopped"
}

cmd_status() {
  local pid=""
  pid="$(running_pid)" || true
  if ping_ok; then
    echo "running${pid:+ pid=$pid} addr=$HOST:$PORT state=$STATE_DIR"
    return 0
  fi
  if [[ -n "$pid" ]]; then
    echo "process $pid alive but not answering PING on $HOST:$PORT"
    return 1
  fi
  echo "not running"
  return 3
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
