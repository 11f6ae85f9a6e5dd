#!/usr/bin/env bash
# The embedded default stack: a local Prefect server (its own SQLite) and a process worker.
#   scripts/stack.sh up        start what is not running (reuses a healthy server and worker)
#   scripts/stack.sh deploy    create the work pool if needed and deploy prefect.yaml
#   scripts/stack.sh release   run train-and-release/fraud-detector and wait for it
#   scripts/stack.sh drift     run drift-check/fraud-detector now and wait for it
#   scripts/stack.sh serve     bentoml serve the champion on 127.0.0.1:3000 in the background
#   scripts/stack.sh fleet-up [ARGS]  the serving fleet: champion containers behind HAProxy on
#                              127.0.0.1:3000 (installs haproxy when missing; ARGS: fraud fleet up)
#   scripts/stack.sh fleet-down  stop the fleet (balancer by PID, replicas by container id)
#   scripts/stack.sh monitor-ui  the Evidently UI over the drift dashboard on 127.0.0.1:8000
#   scripts/stack.sh install-chromium  apt-get install chromium when missing (the UI tests' browser)
#   scripts/stack.sh install-haproxy  apt-get install haproxy when missing (root), nothing else
#   scripts/stack.sh down      stop what `up` started, by PID
#   scripts/stack.sh status    show what is running
#   scripts/stack.sh summary   where things are: Prefect UI, MLflow run, model versions
#   scripts/stack.sh env       print the environment to talk to this stack from your shell
#                              (eval "$(scripts/stack.sh env)"; it puts .venv/bin and uv on PATH)
# Set PREFECT_API_URL before calling to use an existing Prefect server instead of a local one.
set -euo pipefail

usage() { sed -n '2,19p' "${BASH_SOURCE[0]}"; }
case "${1:-}" in
  -h | --help | help) usage; exit 0 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export FRAUD_PROJECT_DIR="$ROOT"
export FRAUD_HOME="${FRAUD_HOME:-$ROOT/.fraud}"
mkdir -p "$FRAUD_HOME"
FRAUD_HOME="$(cd "$FRAUD_HOME" && pwd)"
export FRAUD_HOME
export PREFECT_HOME="${PREFECT_HOME:-$FRAUD_HOME/prefect}"
export BENTOML_HOME="${BENTOML_HOME:-$FRAUD_HOME/bentoml}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export BENTOML_DO_NOT_TRACK=true
export DO_NOT_TRACK=1
PORT="${FRAUD_PREFECT_PORT:-4200}"
if [[ -n "${PREFECT_API_URL:-}" ]]; then
  EXTERNAL_PREFECT=1
else
  EXTERNAL_PREFECT=0
  export PREFECT_API_URL="http://127.0.0.1:${PORT}/api"
fi
# Drift reports are mailed. Without an SMTP server of your own (FRAUD_SMTP_HOST), the local
# stack runs a mail catcher on 127.0.0.1 that stores every message in $FRAUD_HOME/mail (Maildir).
if [[ -z "${FRAUD_SMTP_HOST:-}" ]]; then
  LOCAL_MAIL=1
  export FRAUD_SMTP_HOST=127.0.0.1 FRAUD_SMTP_PORT="${FRAUD_MAIL_PORT:-8025}"
  export FRAUD_SMTP_RECIPIENTS="${FRAUD_SMTP_RECIPIENTS:-fraud-team@localhost}"
else
  LOCAL_MAIL=0
fi
SERVE_PORT="${FRAUD_SERVE_PORT:-3000}"
POOL="${FRAUD_WORK_POOL:-fraud-pool}"
ALERT_POOL=fraud-alerts  # prefect.yaml: the failure-alert deployment runs on its own worker
# Flow runs send a heartbeat every FRAUD_HEARTBEAT_SECONDS (Prefect's floor is 30 s); a run
# silent for FRAUD_HEARTBEAT_SILENCE_SECONDS is marked Crashed and mailed (flows/cli/automations.py).
export FRAUD_HEARTBEAT_SECONDS="${FRAUD_HEARTBEAT_SECONDS:-30}"
export FRAUD_HEARTBEAT_SILENCE_SECONDS="${FRAUD_HEARTBEAT_SILENCE_SECONDS:-90}"
DEPLOYMENT="${FRAUD_DEPLOYMENT:-train-and-release/fraud-detector}"
RUN_DIR="$FRAUD_HOME/run"
LOG_DIR="$FRAUD_HOME/logs"
BIN="$ROOT/.venv/bin"
mkdir -p "$RUN_DIR" "$LOG_DIR" "$PREFECT_HOME"

log() { printf '[stack] %s\n' "$*" >&2; }
# alive, start_bg, stop_pid, wait_healthy, print_status: by PID, output to log files
source "$ROOT/scripts/lib/process.sh"

healthy() {
  curl -fsS --max-time 2 "${PREFECT_API_URL%/}/health" >/dev/null 2>&1
}

up() {
  if [[ "$EXTERNAL_PREFECT" == 1 ]]; then
    healthy || { log "PREFECT_API_URL=$PREFECT_API_URL is not answering"; exit 1; }
    log "using the Prefect server at $PREFECT_API_URL"
  elif healthy; then
    log "Prefect server already up at $PREFECT_API_URL"
  else
    alive prefect-server && stop_pid prefect-server
    log "starting the Prefect server on 127.0.0.1:$PORT (log: $LOG_DIR/prefect-server.log)"
    start_bg prefect-server "$BIN/prefect" server start --host 127.0.0.1 --port "$PORT"
    wait_healthy prefect-server "${PREFECT_API_URL%/}/health" 60 || exit 1
  fi
  if [[ "$LOCAL_MAIL" == 1 ]] && ! alive mail-catcher; then
    # a complete Maildir: aiosmtpd's Mailbox creates tmp/new/cur only when the folder is absent
    mkdir -p "$FRAUD_HOME/mail/tmp" "$FRAUD_HOME/mail/new" "$FRAUD_HOME/mail/cur"
    log "starting the local mail catcher on 127.0.0.1:$FRAUD_SMTP_PORT (mail: $FRAUD_HOME/mail)"
    start_bg mail-catcher "$BIN/python" -m aiosmtpd -n -l "127.0.0.1:$FRAUD_SMTP_PORT" \
      -c aiosmtpd.handlers.Mailbox "$FRAUD_HOME/mail"
  fi
  # both pools in one process: each `prefect work-pool` call pays seconds of import time
  "$BIN/fraud" work-pools "$POOL" "$ALERT_POOL" >/dev/null
  if alive prefect-worker; then
    log "worker already running (pid $(cat "$RUN_DIR/prefect-worker.pid"))"
  else
    log "starting a process worker on pool $POOL (log: $LOG_DIR/prefect-worker.log)"
    start_bg prefect-worker env PREFECT_FLOWS_HEARTBEAT_FREQUENCY="$FRAUD_HEARTBEAT_SECONDS" \
      "$BIN/prefect" worker start --pool "$POOL" --type process
  fi
  if ! alive prefect-alert-worker; then
    log "starting the failure-alert worker on pool $ALERT_POOL (log: $LOG_DIR/prefect-alert-worker.log)"
    start_bg prefect-alert-worker "$BIN/prefect" worker start --pool "$ALERT_POOL" --type process
  fi
}

deploy() {
  log "deploying prefect.yaml"
  (cd "$ROOT" && "$BIN/prefect" --no-prompt deploy --all >>"$LOG_DIR/deploy.log" 2>&1) \
    || { log "deploy failed; see $LOG_DIR/deploy.log"; tail -30 "$LOG_DIR/deploy.log" >&2; exit 1; }
  log "creating the crashed-run automations (heartbeat ${FRAUD_HEARTBEAT_SECONDS} s, silence ${FRAUD_HEARTBEAT_SILENCE_SECONDS} s)"
  (cd "$ROOT" && "$BIN/fraud" automations >>"$LOG_DIR/deploy.log" 2>&1) \
    || { log "automations failed; see $LOG_DIR/deploy.log"; tail -30 "$LOG_DIR/deploy.log" >&2; exit 1; }
}

release() {
  local extra=()
  if ! docker info >/dev/null 2>&1; then
    log "WARNING: no Docker engine answers: this release builds the bento but NOT the image"
    log "         (run 'make docker' as root, or start Docker, to containerize and smoke-test)"
    extra=(--param build_image=false)
  fi
  log "running $DEPLOYMENT ${extra[*]} $*"
  "$BIN/prefect" deployment run "$DEPLOYMENT" --watch "${extra[@]}" "$@"
}

drift() {
  log "running drift-check/fraud-detector $*"
  "$BIN/prefect" deployment run "drift-check/fraud-detector" --watch "$@"
}

serve() {
  if alive bento; then
    log "bento already serving on http://127.0.0.1:$SERVE_PORT (pid $(cat "$RUN_DIR/bento.pid"))"
    return 0
  fi
  log "starting bentoml serve (the champion) on http://127.0.0.1:$SERVE_PORT (log: $LOG_DIR/bento.log)"
  (cd "$ROOT" && start_bg bento "$BIN/bentoml" serve --host 127.0.0.1 --port "$SERVE_PORT")
  wait_healthy bento "http://127.0.0.1:$SERVE_PORT/readyz" 60 || exit 1
  # Prometheus (scripts/prometheus.sh) scrapes it from this file while it runs
  "$ROOT/scripts/prometheus.sh" register serve "127.0.0.1:$SERVE_PORT" replica=bentoml-serve
}

monitor_ui() { # the Evidently UI over the workspace every drift check adds its point to
  local port="${FRAUD_EVIDENTLY_PORT:-8000}" ws="${FRAUD_EVIDENTLY_DIR:-$FRAUD_HOME/evidently}"
  if alive evidently-ui; then
    log "Evidently UI already on http://127.0.0.1:$port (pid $(cat "$RUN_DIR/evidently-ui.pid"))"
    return 0
  fi
  mkdir -p "$ws"
  log "starting the Evidently UI on http://127.0.0.1:$port over $ws (log: $LOG_DIR/evidently-ui.log)"
  start_bg evidently-ui "$BIN/evidently" ui --workspace "$ws" --host 127.0.0.1 --port "$port"
  wait_healthy evidently-ui "http://127.0.0.1:$port/" 60 || exit 1
  log "the dashboard: http://127.0.0.1:$port (project: the model's name)"
}

install_chromium() { # Debian's chromium: the headless browser the dashboard test looks with
  command -v chromium >/dev/null 2>&1 && return 0
  [[ "$(id -u)" == 0 ]] || { log "the UI test needs chromium: as root, apt-get install chromium"; exit 1; }
  log "installing chromium (log: $LOG_DIR/apt-chromium.log)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends chromium; } >>"$LOG_DIR/apt-chromium.log" 2>&1 \
    || { log "apt-get install chromium failed; see $LOG_DIR/apt-chromium.log"; exit 1; }
}

install_haproxy() { # Debian's haproxy (2.6 on bookworm) for the fleet's balancer, when missing
  command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] && return 0
  [[ "$(id -u)" == 0 ]] || { log "the fleet needs haproxy: as root, apt-get install haproxy"; exit 1; }
  log "installing haproxy (log: $LOG_DIR/apt-haproxy.log)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends haproxy; } >>"$LOG_DIR/apt-haproxy.log" 2>&1 \
    || { log "apt-get install haproxy failed; see $LOG_DIR/apt-haproxy.log"; exit 1; }
}

fleet_up() {
  install_haproxy
  if alive bento && [[ "$*" != *--port* ]]; then
    log "bentoml serve holds port $SERVE_PORT (pid $(cat "$RUN_DIR/bento.pid")): stopping it for the fleet"
    stop_pid bento
  fi
  log "starting the serving fleet (log: $LOG_DIR/balancer.log, replicas: $FRAUD_HOME/fleet/)"
  "$BIN/fraud" fleet up "$@"
}

fleet_down() {
  [[ -f "$FRAUD_HOME/fleet/fleet.json" ]] || return 0
  "$BIN/fraud" fleet down
}

down() {
  fleet_down
  stop_pid bento
  "$ROOT/scripts/prometheus.sh" unregister serve
  # a Prefect process worker does not finish its own shutdown after SIGTERM (it forwards a
  # SIGINT to itself and then waits on its event loop): 5 s of grace, then SIGKILL, both at once
  stop_pid prefect-alert-worker 5 &
  stop_pid prefect-worker 5
  wait
  stop_pid prefect-server
  stop_pid mail-catcher
  stop_pid evidently-ui
}

status() {
  print_status prefect-server prefect-worker prefect-alert-worker mail-catcher bento evidently-ui
  [[ -f "$FRAUD_HOME/fleet/fleet.json" ]] && { "$BIN/fraud" fleet status || true; }
  healthy && echo "Prefect API: $PREFECT_API_URL (healthy)" || echo "Prefect API: $PREFECT_API_URL (not answering)"
}

uv_dir() { # the folder of the uv executable: on PATH, else where `pip install --user uv` puts it
  local uv
  uv="$(command -v uv 2>/dev/null)" || uv="${PYTHONUSERBASE:-$HOME/.local}/bin/uv"
  [[ -x "$uv" ]] && dirname "$uv"
  return 0
}

env_lines() {
  local path="$BIN" dir
  dir="$(uv_dir)"
  [[ -n "$dir" && "$dir" != "$BIN" ]] && path="$path:$dir"
  # the checkout's tools (prefect, bentoml, fraud) and uv, so README commands work as typed
  printf 'export PATH=%q:"$PATH"\n' "$path"
  cat <<ENV
export FRAUD_HOME=$FRAUD_HOME
export PREFECT_HOME=$PREFECT_HOME
export PREFECT_API_URL=$PREFECT_API_URL
export BENTOML_HOME=$BENTOML_HOME
export PREFECT_SERVER_ANALYTICS_ENABLED=false BENTOML_DO_NOT_TRACK=true
ENV
  [[ "$LOCAL_MAIL" == 1 ]] && echo "export FRAUD_SMTP_HOST=$FRAUD_SMTP_HOST FRAUD_SMTP_PORT=$FRAUD_SMTP_PORT FRAUD_SMTP_RECIPIENTS=$FRAUD_SMTP_RECIPIENTS"
  return 0
}

summary() {
  "$BIN/fraud" summary "$@"
}

case "${1:-}" in
  up) up ;;
  summary) shift; summary "$@" ;;
  deploy) deploy ;;
  release) shift; release "$@" ;;
  drift) shift; drift "$@" ;;
  serve) serve ;;
  fleet-up) shift; fleet_up "$@" ;;
  fleet-down) fleet_down ;;
  monitor-ui) monitor_ui ;;
  install-haproxy) install_haproxy ;;
  install-chromium) install_chromium ;;
  down) down ;;
  status) status ;;
  env) env_lines ;;
  *) usage; exit 2 ;;
esac
