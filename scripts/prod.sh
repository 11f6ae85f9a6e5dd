#!/usr/bin/env bash
# The production profile on this machine: PostgreSQL (Debian package, a private cluster), a Prefect
# server on PostgreSQL, an MLflow tracking server on PostgreSQL with its own artifact root, then
# the worker, deployments and mail catcher of scripts/stack.sh pointed at them, and the Evidently
# UI service the drift checks record their dashboard points in.
#   scripts/prod.sh up           start what is not running (cluster, databases, servers, worker,
#                                Prometheus)
#   scripts/prod.sh down         stop what `up` started, by PID (the cluster only if it is ours)
#   scripts/prod.sh status       show what is running
#   scripts/prod.sh env          print the environment to talk to this profile from your shell
#   scripts/prod.sh stack CMD    run scripts/stack.sh CMD (deploy, release, drift, summary, serve)
#                                against this profile
#   scripts/prod.sh pg-up        only the PostgreSQL cluster and the role
#   scripts/prod.sh pg-down      stop the cluster (by the PID in its postmaster.pid)
#   scripts/prod.sh drop-db      drop this profile's databases (FRAUD_PROD_DB_PREFIX)
# Settings (environment): FRAUD_PROD_HOME (default $FRAUD_HOME/prod: all state of the profile),
# FRAUD_PG_PORT (5433), FRAUD_PG_USER (fraud), FRAUD_PG_PASSWORD (else generated once into
# FRAUD_PG_PASSWORD_FILE, default $FRAUD_PROD_HOME/secrets/pg-password, mode 0600),
# FRAUD_PG_DIR (cluster directory, default $FRAUD_PROD_HOME/pg), FRAUD_PROD_DB_PREFIX (fraud),
# FRAUD_PROD_PREFECT_PORT (4201), FRAUD_MLFLOW_PORT (5001), FRAUD_MAIL_PORT (8026),
# FRAUD_PROD_PROMETHEUS_PORT (9091; scripts/prometheus.sh with this profile's home),
# FRAUD_PROD_EVIDENTLY_PORT (8001: the Evidently UI service, workspace $FRAUD_PROD_HOME/evidently).
# Passwords are never printed nor put on a command line: the servers read them from a pgpass file.
set -euo pipefail

usage() { sed -n '2,23p' "${BASH_SOURCE[0]}"; }
case "${1:-}" in
  -h | --help | help) usage; exit 0 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="$ROOT/scripts/stack.sh"
BIN="$ROOT/.venv/bin"
FRAUD_HOME="${FRAUD_HOME:-$ROOT/.fraud}"
PROD_HOME="${FRAUD_PROD_HOME:-$FRAUD_HOME/prod}"
mkdir -p "$PROD_HOME"
PROD_HOME="$(cd "$PROD_HOME" && pwd)"
PG_DIR="${FRAUD_PG_DIR:-$PROD_HOME/pg}"
PG_PORT="${FRAUD_PG_PORT:-5433}"
PG_USER="${FRAUD_PG_USER:-fraud}"
SECRETS="$PROD_HOME/secrets"
PASSWORD_FILE="${FRAUD_PG_PASSWORD_FILE:-$SECRETS/pg-password}"
# keep a given password in a shell variable only: servers, workers and flow runs started below
# must not inherit it through their environment
PG_PASSWORD_GIVEN="${FRAUD_PG_PASSWORD:-}"
unset FRAUD_PG_PASSWORD
PGPASS="$SECRETS/pgpass"
DB_PREFIX="${FRAUD_PROD_DB_PREFIX:-fraud}"
PREFECT_DB="${DB_PREFIX}_prefect"
MLFLOW_DB="${DB_PREFIX}_mlflow"
PREFECT_PORT="${FRAUD_PROD_PREFECT_PORT:-4201}"
MLFLOW_PORT="${FRAUD_MLFLOW_PORT:-5001}"
ARTIFACTS="${FRAUD_MLFLOW_ARTIFACTS:-$PROD_HOME/mlflow-artifacts}"
RUN_DIR="$PROD_HOME/run"
LOG_DIR="$PROD_HOME/logs"
PREFECT_URL="http://127.0.0.1:${PREFECT_PORT}/api"
MLFLOW_URL="http://127.0.0.1:${MLFLOW_PORT}"
PROMETHEUS_PORT="${FRAUD_PROD_PROMETHEUS_PORT:-9091}"
EVIDENTLY_PORT="${FRAUD_PROD_EVIDENTLY_PORT:-8001}"
EVIDENTLY_URL="http://127.0.0.1:${EVIDENTLY_PORT}"

# The pipeline of this profile keeps its state apart from the embedded defaults.
export FRAUD_HOME="$PROD_HOME"
export PREFECT_HOME="$PROD_HOME/prefect" BENTOML_HOME="$PROD_HOME/bentoml"
export FRAUD_MAIL_PORT="${FRAUD_MAIL_PORT:-8026}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false BENTOML_DO_NOT_TRACK=true DO_NOT_TRACK=1

log() { printf '[prod] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
# alive, start_bg, stop_pid, wait_healthy, print_status: by PID, output to log files
source "$ROOT/scripts/lib/process.sh"

for name in PG_USER DB_PREFIX; do
  [[ "${!name}" =~ ^[a-z_][a-z0-9_]*$ ]] || die "$name='${!name}' must be a lower-case SQL identifier ([a-z_][a-z0-9_]*)"
done
for name in PG_PORT PREFECT_PORT MLFLOW_PORT PROMETHEUS_PORT; do
  [[ "${!name}" =~ ^[0-9]+$ ]] || die "$name='${!name}' must be a port number"
done

pg_bin() { # the newest installed PostgreSQL server binaries
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  [[ -n "$dir" && -x "$dir/initdb" ]] || return 1
  echo "$dir"
}

install_postgres() {
  pg_bin >/dev/null && return 0
  [[ "$(id -u)" == 0 ]] || die "PostgreSQL is not installed; as root: apt-get install -y postgresql"
  log "installing PostgreSQL (apt-get install -y postgresql; log: $LOG_DIR/apt.log)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >>"$LOG_DIR/apt.log" 2>&1 \
    || { apt-get update >>"$LOG_DIR/apt.log" 2>&1 \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >>"$LOG_DIR/apt.log" 2>&1; } \
    || { tail -20 "$LOG_DIR/apt.log" >&2; die "apt-get install postgresql failed"; }
  pg_bin >/dev/null || die "PostgreSQL installed but no server binaries under /usr/lib/postgresql"
}

as_postgres() { runuser -u postgres -- "$@"; }

pg_ready() { "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 2 2>/dev/null; }

psql_admin() { # SQL on stdin, as the cluster's superuser over its private socket
  as_postgres "$(pg_bin)/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$PG_DIR/run" -p "$PG_PORT" -d postgres
}

password() { # the role's password: FRAUD_PG_PASSWORD, else the file (generated once, 0600)
  if [[ -n "$PG_PASSWORD_GIVEN" ]]; then
    printf '%s' "$PG_PASSWORD_GIVEN"
    return
  fi
  if [[ ! -s "$PASSWORD_FILE" ]]; then
    mkdir -p "$(dirname "$PASSWORD_FILE")"
    chmod 700 "$(dirname "$PASSWORD_FILE")"
    (umask 077 && "$BIN/python" -c 'import secrets; print(secrets.token_hex(24), end="")' >"$PASSWORD_FILE")
  fi
  chmod 600 "$PASSWORD_FILE"
  cat "$PASSWORD_FILE"
}

write_pgpass() { # the servers read the password from here (PGPASSFILE), never from argv
  mkdir -p "$SECRETS"
  chmod 700 "$SECRETS"
  local pw
  pw="$(password)"
  pw="${pw//\\/\\\\}"
  (umask 077 && printf '127.0.0.1:%s:*:%s:%s\n' "$PG_PORT" "$PG_USER" "${pw//:/\\:}" >"$PGPASS")
  chmod 600 "$PGPASS"
}

scram_verifier() { # SCRAM-SHA-256 verifier of the password (stdin), so the server never sees it
  "$BIN/python" -c '
import base64, hashlib, hmac, os, sys
pw = sys.stdin.read().encode()
salt, it = os.urandom(16), 4096
salted = hashlib.pbkdf2_hmac("sha256", pw, salt, it)
client = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
server = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
b = lambda x: base64.b64encode(x).decode()
print(f"SCRAM-SHA-256${it}:{b(salt)}${b(hashlib.sha256(client).digest())}:{b(server)}", end="")'
}

pg_up() {
  mkdir -p "$LOG_DIR" "$RUN_DIR"
  install_postgres
  local bin data="$PG_DIR/data"
  bin="$(pg_bin)"
  id postgres >/dev/null 2>&1 || die "the system user 'postgres' is missing (it comes with the postgresql package)"
  if [[ ! -f "$data/PG_VERSION" ]]; then
    log "creating the PostgreSQL cluster in $PG_DIR"
    mkdir -p "$PG_DIR/run" "$data"
    chown -R postgres: "$PG_DIR"
    chmod 700 "$data"
    as_postgres test -w "$data" \
      || die "user postgres cannot reach $PG_DIR (a parent folder is private); set FRAUD_PG_DIR to a folder it can reach"
    as_postgres "$bin/initdb" -D "$data" -U postgres -E UTF8 --locale=C \
      --auth-local=peer --auth-host=scram-sha-256 >>"$LOG_DIR/initdb.log" 2>&1 \
      || { tail -20 "$LOG_DIR/initdb.log" >&2; die "initdb failed; see $LOG_DIR/initdb.log"; }
    echo "include_if_exists 'fraud.conf'" >>"$data/postgresql.conf"
  fi
  if ! as_postgres "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    pg_ready && die "port $PG_PORT is taken by another server; set FRAUD_PG_PORT"
    mkdir -p "$PG_DIR/run" && chown postgres: "$PG_DIR/run"
    cat >"$data/fraud.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DIR/run'
password_encryption = 'scram-sha-256'
max_connections = 200
CONF
    chown postgres: "$data/fraud.conf"
    log "starting PostgreSQL on 127.0.0.1:$PG_PORT (log: $PG_DIR/postgres.log)"
    as_postgres setsid "$bin/pg_ctl" -D "$data" -l "$PG_DIR/postgres.log" -w -t 60 start >/dev/null \
      || { tail -20 "$PG_DIR/postgres.log" >&2; die "PostgreSQL did not start; see $PG_DIR/postgres.log"; }
  fi
  for _ in $(seq 1 60); do pg_ready && break; sleep 0.5; done
  pg_ready || die "PostgreSQL does not answer on 127.0.0.1:$PG_PORT"
  local verifier
  verifier="$(password | scram_verifier)"
  psql_admin <<SQL
SELECT format('CREATE ROLE %I LOGIN', '$PG_USER') WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER')\gexec
ALTER ROLE "$PG_USER" LOGIN PASSWORD '$verifier';
SQL
  write_pgpass
}

create_databases() {
  local db
  for db in "$PREFECT_DB" "$MLFLOW_DB"; do
    psql_admin <<SQL
SELECT format('CREATE DATABASE %I OWNER %I', '$db', '$PG_USER') WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$db')\gexec
SQL
  done
}

drop_databases() {
  pg_ready || { log "PostgreSQL is not answering on 127.0.0.1:$PG_PORT; nothing dropped"; return 0; }
  local db
  for db in "$PREFECT_DB" "$MLFLOW_DB"; do
    log "dropping database $db"
    psql_admin <<<"DROP DATABASE IF EXISTS \"$db\" WITH (FORCE);"
  done
}

pg_down() {
  local bin
  bin="$(pg_bin)" || return 0
  [[ -f "$PG_DIR/data/postmaster.pid" ]] || return 0
  log "stopping PostgreSQL (pid $(head -1 "$PG_DIR/data/postmaster.pid"))"
  as_postgres "$bin/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 60 stop >/dev/null || true
}

start_servers() {
  local pg="$PG_USER@127.0.0.1:$PG_PORT"
  if alive prefect-server; then
    log "Prefect server already running (pid $(cat "$RUN_DIR/prefect-server.pid"))"
  else
    log "starting the Prefect server on PostgreSQL ($PREFECT_DB) at 127.0.0.1:$PREFECT_PORT (log: $LOG_DIR/prefect-server.log)"
    PGPASSFILE="$PGPASS" PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://$pg/$PREFECT_DB" \
      start_bg prefect-server "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
  fi
  if alive mlflow-server; then
    log "MLflow server already running (pid $(cat "$RUN_DIR/mlflow-server.pid"))"
  else
    mkdir -p "$ARTIFACTS"
    log "starting the MLflow server on PostgreSQL ($MLFLOW_DB) at $MLFLOW_URL, artifacts in $ARTIFACTS (log: $LOG_DIR/mlflow-server.log)"
    # the tracking server's GenAI job runners are not used by the pipeline
    PGPASSFILE="$PGPASS" MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false start_bg mlflow-server "$BIN/mlflow" server \
      --backend-store-uri "postgresql+psycopg2://$pg/$MLFLOW_DB" \
      --artifacts-destination "$ARTIFACTS" --serve-artifacts \
      --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1
  fi
  if alive evidently-ui; then
    log "Evidently UI already running (pid $(cat "$RUN_DIR/evidently-ui.pid"))"
  else
    mkdir -p "$PROD_HOME/evidently"
    log "starting the Evidently UI service at $EVIDENTLY_URL (log: $LOG_DIR/evidently-ui.log)"
    start_bg evidently-ui "$BIN/evidently" ui --workspace "$PROD_HOME/evidently" \
      --host 127.0.0.1 --port "$EVIDENTLY_PORT"
  fi
  wait_healthy prefect-server "$PREFECT_URL/health" 180 || exit 1
  wait_healthy mlflow-server "$MLFLOW_URL/health" 180 || exit 1
  wait_healthy evidently-ui "$EVIDENTLY_URL/" 120 || exit 1
}

stack() { # scripts/stack.sh against this profile's servers
  PREFECT_API_URL="$PREFECT_URL" MLFLOW_TRACKING_URI="$MLFLOW_URL" \
    FRAUD_EVIDENTLY_URL="$EVIDENTLY_URL" FRAUD_EVIDENTLY_UI_URL="$EVIDENTLY_URL" "$STACK" "$@"
}

prometheus() { # scripts/prometheus.sh with this profile's home and port
  FRAUD_PROMETHEUS_PORT="$PROMETHEUS_PORT" "$ROOT/scripts/prometheus.sh" "$@"
}

up() {
  pg_up
  create_databases
  start_servers
  stack up
  prometheus up
  log "Prefect API $PREFECT_URL, MLflow $MLFLOW_URL, Evidently $EVIDENTLY_URL, Prometheus http://127.0.0.1:$PROMETHEUS_PORT, state in $PROD_HOME"
}

own_cluster() { [[ "$(cd "$PG_DIR" 2>/dev/null && pwd)" == "$PROD_HOME/pg" ]]; }

down() {
  prometheus down || true
  stack down || true
  stop_pid evidently-ui
  stop_pid mlflow-server
  stop_pid prefect-server
  if own_cluster; then pg_down; fi
}

status() {
  if pg_ready; then echo "postgresql: running on 127.0.0.1:$PG_PORT ($PG_DIR)"; else echo "postgresql: stopped"; fi
  print_status prefect-server mlflow-server evidently-ui
  stack status
  prometheus status
  curl -fsS --max-time 2 "$MLFLOW_URL/health" >/dev/null 2>&1 \
    && echo "MLflow: $MLFLOW_URL (healthy)" || echo "MLflow: $MLFLOW_URL (not answering)"
}

env_lines() {
  stack env
  echo "export MLFLOW_TRACKING_URI=$MLFLOW_URL"
  echo "export FRAUD_EVIDENTLY_URL=$EVIDENTLY_URL FRAUD_EVIDENTLY_UI_URL=$EVIDENTLY_URL"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) env_lines ;;
  stack) shift; stack "$@" ;;
  pg-up) pg_up ;;
  pg-down) pg_down ;;
  drop-db) drop_databases ;;
  *) usage; exit 2 ;;
esac
