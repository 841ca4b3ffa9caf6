#!/usr/bin/env bash
# Runs a REAL single-node Apache Cassandra 5.0 (jars from Maven Central, no Docker) for local dev
# and tests.
#
#   scripts/cassandra.sh install   # fetch the jars into $RAPPORT_CACHE/cassandra/lib (once)
#   scripts/cassandra.sh start     # start in the background (if needed) and wait for CQL
#   scripts/cassandra.sh stop      # graceful stop, kill -9 after 30 s
#   scripts/cassandra.sh status    # exit 0 if running and CQL answers, 3 if not running
#   scripts/cassandra.sh wipe      # stop and delete all data
#
# Environment:
#   RAPPORT_CACHE   (default <repo>/.cache)  jars, shared by every work tree that points at it
#   RAPPORT_STATE   (default <repo>/.state)  data, logs and pid under $RAPPORT_STATE/cassandra
#   CASSANDRA_PORT  (default 9042)           CQL port; the other ports are derived from it so a
#                                            second node only needs another CASSANDRA_PORT and
#                                            RAPPORT_STATE: storage = CQL-2042 (7000),
#                                            ssl storage = storage+1 (7001), JMX = CQL-1843 (7199)
#   CASSANDRA_STORAGE_PORT, CASSANDRA_SSL_STORAGE_PORT, CASSANDRA_JMX_PORT  explicit overrides
#   CASSANDRA_START_TIMEOUT (default 180)    seconds to wait for CQL
#   CASSANDRA_UNSAFE_SYSTEM=1                tests only: -Dcassandra.unsafesystem=true (system
#                                            tables skip fsync; faster schema changes). Never in
#                                            anything that keeps data you care about.
#   CASSANDRA_JVM_EXTRA_OPTS                 extra JVM flags (debugging/profiling), space-split
#   Any cassandra.yaml key can be overridden per run with -Dcassandra.settings.<key>=<value>.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONF_DIR="$REPO/deploy/local/cassandra"
RAPPORT_CACHE="${RAPPORT_CACHE:-$REPO/.cache}"
RAPPORT_STATE="${RAPPORT_STATE:-$REPO/.state}"

LIB_DIR="$RAPPORT_CACHE/cassandra/lib"
MARKER="$LIB_DIR/.rapport-complete"      # written only after a successful, verified copy
STATE_DIR="$RAPPORT_STATE/cassandra"
DATA_DIR="$STATE_DIR/data"
LOG_DIR="$STATE_DIR/logs"
PID_FILE="$STATE_DIR/cassandra.pid"
PORT_FILE="$STATE_DIR/cassandra.port"    # CQL port of the node that owns this state dir
VENV_PY="$REPO/.venv/bin/python"

HOST=127.0.0.1
CQL_PORT="${CASSANDRA_PORT:-9042}"
STORAGE_PORT="${CASSANDRA_STORAGE_PORT:-$((CQL_PORT - 2042))}"
SSL_STORAGE_PORT="${CASSANDRA_SSL_STORAGE_PORT:-$((STORAGE_PORT + 1))}"
JMX_PORT="${CASSANDRA_JMX_PORT:-$((CQL_PORT - 1843))}"
START_TIMEOUT="${CASSANDRA_START_TIMEOUT:-180}"
STOP_TIMEOUT=30

# Alive and not a zombie: a daemon orphaned to pid 1 can stay a zombie for a while here, and
# kill -0 still succeeds on zombies.
alive() {
  local st
  st="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
  [[ -n "$st" && "$st" != Z ]]
}

log() { echo "cassandra.sh: $*" >&2; }
die() { log "$*"; exit 1; }

for p in "$CQL_PORT" "$STORAGE_PORT" "$SSL_STORAGE_PORT" "$JMX_PORT"; do
  [[ "$p" =~ ^[0-9]+$ ]] && (( p > 0 && p < 65536 )) || die "bad port '$p' (check CASSANDRA_*PORT)"
done

# Hash of the pom, so a changed Cassandra version invalidates the cached jars.
pom_hash() { sha256sum "$CONF_DIR/pom.xml" | cut -d' ' -f1; }

jars_ok() { [[ -f "$MARKER" && "$(cat "$MARKER")" == "$(pom_hash)" ]]; }

cmd_install() {
  if jars_ok; then
    log "jars already in $LIB_DIR"
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found (apt-get install -y maven)"
  mkdir -p "$RAPPORT_CACHE/cassandra"
  # One download at a time, even if several test runs call install at once.
  exec 8>"$RAPPORT_CACHE/cassandra/.install.lock"
  flock 8
  if jars_ok; then log "jars already in $LIB_DIR"; return 0; fi
  local tmp="$LIB_DIR.tmp.$$"
  rm -rf "$tmp"
  log "downloading Cassandra jars via maven into $LIB_DIR ..."
  mvn -B -q -Dstyle.color=never -f "$CONF_DIR/pom.xml" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DoutputDirectory="$tmp" -DincludeScope=runtime
  # Refuse a partial copy rather than fail later with a ClassNotFoundException.
  compgen -G "$tmp/cassandra-all-*.jar" >/dev/null || die "maven copy has no cassandra-all jar"
  compgen -G "$tmp/jamm-*.jar" >/dev/null || die "maven copy has no jamm jar"
  rm -rf "$LIB_DIR"
  mv "$tmp" "$LIB_DIR"
  pom_hash >"$MARKER"
  log "installed $(ls "$LIB_DIR"/*.jar | wc -l) jars"
}

# True if something accepts TCP connections on host:port.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# Pid of our Cassandra if it is alive. Checks the command line too, so a stale pid file whose
# pid was reused by another process is never killed by mistake.
running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "CassandraDaemon" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "-Dcassandra.storagedir=$DATA_DIR " || return 1
  echo "$pid"
}

have_driver() { [[ -x "$VENV_PY" ]] && "$VENV_PY" -c 'import cassandra' 2>/dev/null; }

# A real CQL query: the port opens slightly before the node serves queries reliably.
cql_ready() {
  "$VENV_PY" - "$HOST" "$CQL_PORT" <<'PY' >/dev/null 2>&1
import logging, sys, warnings
logging.disable(logging.CRITICAL)
warnings.simplefilter("ignore")
from cassandra.cluster import Cluster
# protocol_version=5: Cassandra 5.0's default; saves the driver two failed negotiation round trips.
cluster = Cluster([sys.argv[1]], port=int(sys.argv[2]), protocol_version=5,
                  connect_timeout=5, control_connection_timeout=5)
try:
    cluster.connect().execute("SELECT release_version FROM system.local", timeout=5)
finally:
    cluster.shutdown()
PY
}

# system.log is appended to across runs: remember where this run starts so a failure shows
# this run's lines, not the previous run's shutdown.
LOG_OFFSET=0
dump_logs() {
  local f="$LOG_DIR/system.log" off="$LOG_OFFSET"
  (( $(stat -c %s "$f" 2>/dev/null || echo 0) >= off )) || off=0   # rotated meanwhile
  if (( $(stat -c %s "$f" 2>/dev/null || echo 0) > off )); then
    log "---- last 50 lines of $f (this run) ----"
    tail -c +$((off + 1)) "$f" | tail -n 50 >&2
  fi
  f="$LOG_DIR/stdout.log"                       # JVM errors before logging starts land here
  if [[ -s "$f" ]]; then
    log "---- last 50 lines of $f ----"
    tail -n 50 "$f" >&2
  fi
}

# Waits until CQL answers; fails fast if the JVM dies.
wait_ready() {
  local pid="$1" t0="$2" driver=0
  have_driver && driver=1
  local deadline=$((SECONDS + START_TIMEOUT))
  while (( SECONDS < deadline )); do
    if [[ -n "$pid" ]] && ! alive "$pid"; then
      log "Cassandra (pid $pid) exited during startup"
      dump_logs
      exit 1
    fi
    if port_open "$HOST" "$CQL_PORT"; then
      if (( driver )); then
        if cql_ready; then break; fi
      else
        sleep 3   # no driver to ask: give the node a moment past the port opening
        break
      fi
    fi
    sleep 0.25
  done
  if (( SECONDS >= deadline )); then
    log "CQL did not answer on $HOST:$CQL_PORT within ${START_TIMEOUT}s${pid:+ (pid $pid still running; 'stop' kills it)}"
    dump_logs
    exit 1
  fi
  local t1
  t1="$(date +%s.%N)"
  log "ready on $HOST:$CQL_PORT after $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s"
}

cmd_start() {
  jars_ok || cmd_install
  command -v "${JAVA_HOME:+$JAVA_HOME/bin/}java" >/dev/null || die "java not found"
  local java="${JAVA_HOME:+$JAVA_HOME/bin/}java"
  mkdir -p "$DATA_DIR" "$LOG_DIR"
  # Serialise concurrent starts on one state dir: the second caller just waits for the first.
  exec 9>"$STATE_DIR/.start.lock"
  flock 9

  local t0 pid
  t0="$(date +%s.%N)"
  if pid="$(running_pid)"; then
    local owner
    owner="$(cat "$PORT_FILE" 2>/dev/null || echo "$CQL_PORT")"
    [[ "$owner" == "$CQL_PORT" ]] ||
      die "the node in $STATE_DIR runs on port $owner, not $CQL_PORT; use another RAPPORT_STATE"
    log "already running (pid $pid)"
    wait_ready "$pid" "$t0"
    return 0
  fi
  if port_open "$HOST" "$CQL_PORT"; then
    # Not ours (other state dir or started by hand), but something serves the port: use it.
    log "port $CQL_PORT already in use by another process; checking it speaks CQL"
    wait_ready "" "$t0"
    return 0
  fi
  local p
  for p in "$STORAGE_PORT" "$JMX_PORT"; do
    port_open "$HOST" "$p" && die "port $p is taken; set CASSANDRA_PORT (or CASSANDRA_*_PORT) to avoid it"
  done

  local jamm
  jamm="$(compgen -G "$LIB_DIR/jamm-*.jar" | head -n 1)"
  local args=(
    "@$CONF_DIR/jvm17.args"
    "-javaagent:$jamm"                        # Cassandra measures memtable sizes with jamm
    "-XX:ErrorFile=$LOG_DIR/hs_err_%p.log"
    "-Dcassandra.config=file://$CONF_DIR/cassandra.yaml"
    "-Dcassandra.storagedir=$DATA_DIR"
    "-Dcassandra.logdir=$LOG_DIR"
    "-Dlogback.configurationFile=$CONF_DIR/logback.xml"
    "-Dcassandra.native_transport_port=$CQL_PORT"
    "-Dcassandra.storage_port=$STORAGE_PORT"
    "-Dcassandra.ssl_storage_port=$SSL_STORAGE_PORT"
    "-Dcassandra.jmx.local.port=$JMX_PORT"    # JMX on 127.0.0.1 only (no remote JMX)
    "-Dcassandra-foreground=yes"              # otherwise Cassandra closes stdout/stderr
    "-Dcassandra-pidfile=$PID_FILE"           # Cassandra deletes it on a clean exit
  )
  if [[ "${CASSANDRA_UNSAFE_SYSTEM:-0}" == "1" ]]; then
    args+=("-Dcassandra.unsafesystem=true")
    log "CASSANDRA_UNSAFE_SYSTEM=1: system tables without fsync (tests only)"
  fi
  if [[ -n "${CASSANDRA_JVM_EXTRA_OPTS:-}" ]]; then
    # shellcheck disable=SC2206  # split on spaces on purpose: a list of JVM flags
    args+=(${CASSANDRA_JVM_EXTRA_OPTS})
  fi
  args+=(-cp "$LIB_DIR/*" org.apache.cassandra.service.CassandraDaemon)

  LOG_OFFSET="$(stat -c %s "$LOG_DIR/system.log" 2>/dev/null || echo 0)"
  log "starting Cassandra on $HOST:$CQL_PORT (storage $STORAGE_PORT, JMX $JMX_PORT), state in $STATE_DIR"
  # setsid: own session, so a Ctrl-C in the caller's terminal or test runner does not kill it;
  # 8/9 closed so the node does not hold the install/start locks for its whole life.
  setsid "$java" "${args[@]}" >"$LOG_DIR/stdout.log" 2>&1 </dev/null 8>&- 9>&- &
  pid=$!
  echo "$pid" >"$PID_FILE"
  echo "$CQL_PORT" >"$PORT_FILE"
  wait_ready "$pid" "$t0"
}

cmd_stop() {
  local pid
  if ! pid="$(running_pid)"; then
    log "not running"
    rm -f "$PID_FILE"
    return 0
  fi
  log "stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true   # SIGTERM: Cassandra's shutdown hook drains cleanly
  local i
  for ((i = 0; i < STOP_TIMEOUT * 2; i++)); do
    alive "$pid" || break
    sleep 0.5
  done
  if alive "$pid"; then
    log "still alive after ${STOP_TIMEOUT}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.2; done
  fi
  rm -f "$PID_FILE"
  log "stopped"
}

cmd_status() {
  local pid
  if pid="$(running_pid)"; then
    if port_open "$HOST" "$CQL_PORT"; then
      echo "running pid=$pid cql=$HOST:$CQL_PORT storage=$STORAGE_PORT jmx=$JMX_PORT state=$STATE_DIR"
      return 0
    fi
    echo "starting pid=$pid (CQL $HOST:$CQL_PORT not answering yet)"
    return 1
  fi
  if port_open "$HOST" "$CQL_PORT"; then
    echo "port $HOST:$CQL_PORT is served by a process not started from $STATE_DIR"
    return 0
  fi
  echo "not running"
  return 3
}

cmd_wipe() {
  cmd_stop
  rm -rf "$DATA_DIR" "$PORT_FILE"
  log "wiped $DATA_DIR"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  wipe) cmd_wipe ;;
  *) echo "usage: $0 install|start|stop|status|wipe" >&2; exit 2 ;;
esac
