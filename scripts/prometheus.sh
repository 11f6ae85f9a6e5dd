#!/usr/bin/env bash
# Prometheus for the serving stack (Debian's prometheus package, installed when missing), with the
# project's config and rules (deploy/prometheus/) rendered into $FRAUD_HOME/prometheus/.
#   scripts/prometheus.sh up          render, check and start Prometheus (a running one reloads)
#   scripts/prometheus.sh down        stop it, by PID
#   scripts/prometheus.sh status      show whether it runs, its UI and its scrape targets
#   scripts/prometheus.sh reload      render, check and apply the config to the running server
#   scripts/prometheus.sh check       promtool check config, check rules and test rules
#   scripts/prometheus.sh render DIR  write the config and rules into DIR (nothing is started)
#   scripts/prometheus.sh register NAME HOST:PORT [LABEL=VALUE...]
#                                     write the scrape-target file NAME.json (serve, bento, ...)
#   scripts/prometheus.sh unregister NAME    remove it
# Settings (environment): FRAUD_PROMETHEUS_HOST (127.0.0.1), FRAUD_PROMETHEUS_PORT (9090),
# FRAUD_PROMETHEUS_SCRAPE_INTERVAL (15s), FRAUD_PROMETHEUS_SCRAPE_TIMEOUT (10s, at most the
# interval), FRAUD_PROMETHEUS_EVALUATION_INTERVAL (15s), FRAUD_PROMETHEUS_RETENTION (15d),
# FRAUD_PROMETHEUS_TARGETS_DIR (the file_sd folder, default $FRAUD_HOME/fleet/targets).
# State: $FRAUD_HOME/prometheus/ (prometheus.yml, rules/, data/); log $FRAUD_HOME/logs/prometheus.log.
set -euo pipefail

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}"; }
case "${1:-}" in
  -h | --help | help) usage; exit 0 ;;
  up | down | status | reload | check | render | register | unregister) ;;
  *) usage; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SOURCE="$ROOT/deploy/prometheus"
FRAUD_HOME="${FRAUD_HOME:-$ROOT/.fraud}"
HOST="${FRAUD_PROMETHEUS_HOST:-127.0.0.1}"
PORT="${FRAUD_PROMETHEUS_PORT:-9090}"
SCRAPE_INTERVAL="${FRAUD_PROMETHEUS_SCRAPE_INTERVAL:-15s}"
EVALUATION_INTERVAL="${FRAUD_PROMETHEUS_EVALUATION_INTERVAL:-15s}"
RETENTION="${FRAUD_PROMETHEUS_RETENTION:-15d}"

log() { printf '[prometheus] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

seconds_of() { # seconds_of DURATION: whole seconds of 500ms, 15s, 2m, 1h, 15d (rounded up)
  local n="${1%%[a-z]*}" unit="${1##*[0-9]}"
  case "$unit" in
    ms) echo $(((n + 999) / 1000)) ;;
    s) echo "$n" ;;
    m) echo $((n * 60)) ;;
    h) echo $((n * 3600)) ;;
    d) echo $((n * 86400)) ;;
  esac
}

check_settings() {
  [[ "$PORT" =~ ^[0-9]+$ ]] && ((PORT > 0 && PORT < 65536)) \
    || die "FRAUD_PROMETHEUS_PORT='$PORT' must be a port number (1-65535)"
  [[ "$HOST" =~ ^[A-Za-z0-9.:_-]+$ ]] || die "FRAUD_PROMETHEUS_HOST='$HOST' must be a host name or address"
  local name
  for name in SCRAPE_INTERVAL EVALUATION_INTERVAL RETENTION; do
    [[ "${!name}" =~ ^[1-9][0-9]*(ms|s|m|h|d)$ ]] \
      || die "FRAUD_PROMETHEUS_$name='${!name}' must be a duration such as 500ms, 15s, 2m, 1h or 15d"
  done
  SCRAPE_TIMEOUT="${FRAUD_PROMETHEUS_SCRAPE_TIMEOUT:-}"
  if [[ -z "$SCRAPE_TIMEOUT" ]]; then  # Prometheus' 10 s, or the interval when that is shorter
    SCRAPE_TIMEOUT=10s
    (($(seconds_of "$SCRAPE_INTERVAL") < 10)) && SCRAPE_TIMEOUT="$SCRAPE_INTERVAL"
  fi
  [[ "$SCRAPE_TIMEOUT" =~ ^[1-9][0-9]*(ms|s|m|h)$ ]] \
    || die "FRAUD_PROMETHEUS_SCRAPE_TIMEOUT='$SCRAPE_TIMEOUT' must be a duration such as 5s"
}

check_settings
mkdir -p "$FRAUD_HOME"
FRAUD_HOME="$(cd "$FRAUD_HOME" && pwd)"
STATE="$FRAUD_HOME/prometheus"
TARGETS_DIR="${FRAUD_PROMETHEUS_TARGETS_DIR:-$FRAUD_HOME/fleet/targets}"
[[ "$TARGETS_DIR" == /* ]] || TARGETS_DIR="$PWD/$TARGETS_DIR"
RUN_DIR="$FRAUD_HOME/run"
LOG_DIR="$FRAUD_HOME/logs"
URL="http://$HOST:$PORT"
mkdir -p "$RUN_DIR" "$LOG_DIR"
# alive, start_bg, stop_pid, wait_healthy, print_status: by PID, output to log files
source "$ROOT/scripts/lib/process.sh"

install_prometheus() { # Debian's package, without node-exporter (Recommends), when missing
  command -v prometheus >/dev/null && command -v promtool >/dev/null && return 0
  [[ "$(id -u)" == 0 ]] || die "Prometheus is not installed; as root: apt-get install -y --no-install-recommends prometheus"
  log "installing Prometheus (apt-get install -y --no-install-recommends prometheus; log: $LOG_DIR/apt.log)"
  local install=(apt-get install -y --no-install-recommends prometheus)
  DEBIAN_FRONTEND=noninteractive "${install[@]}" >>"$LOG_DIR/apt.log" 2>&1 \
    || { apt-get update >>"$LOG_DIR/apt.log" 2>&1 \
         && DEBIAN_FRONTEND=noninteractive "${install[@]}" >>"$LOG_DIR/apt.log" 2>&1; } \
    || { tail -20 "$LOG_DIR/apt.log" >&2; die "apt-get install prometheus failed"; }
  command -v promtool >/dev/null || die "the prometheus package is installed but promtool is not on PATH"
}

render() { # render DIR: the config and the rules, ready to check
  local dir="$1" sep=$'\x01'
  mkdir -p "$dir/rules"
  cp "$SOURCE"/rules/*.yml "$dir/rules/"
  sed -e "s${sep}@SCRAPE_INTERVAL@${sep}$SCRAPE_INTERVAL${sep}g" \
      -e "s${sep}@SCRAPE_TIMEOUT@${sep}$SCRAPE_TIMEOUT${sep}g" \
      -e "s${sep}@EVALUATION_INTERVAL@${sep}$EVALUATION_INTERVAL${sep}g" \
      -e "s${sep}@TARGETS_DIR@${sep}$TARGETS_DIR${sep}g" \
      -e "s${sep}@LISTEN@${sep}$HOST:$PORT${sep}g" \
      "$SOURCE/prometheus.yml" >"$dir/prometheus.yml"
}

promtool_check() { # promtool_check DIR: the rendered config (and the rules it names)
  promtool check config "$1/prometheus.yml" >"$1/check.log" 2>&1 \
    || { cat "$1/check.log" >&2; die "the rendered config does not pass promtool check config"; }
}

install_config() { # render into a staging folder, check it, then put it in place (rename)
  install_prometheus
  mkdir -p "$STATE" "$TARGETS_DIR"
  local next="$STATE/.next"
  rm -rf "$next"
  render "$next"
  promtool_check "$next"
  rm -rf "$STATE/rules.old"
  [[ -d "$STATE/rules" ]] && mv "$STATE/rules" "$STATE/rules.old"
  mv "$next/rules" "$STATE/rules"
  mv "$next/prometheus.yml" "$STATE/prometheus.yml"
  rm -rf "$next" "$STATE/rules.old"
}

ui_pages() { # where the alerts and targets pages are (Debian's build serves the classic UI)
  local home
  home="$(curl -sS -o /dev/null --max-time 2 -w '%{redirect_url}' "$URL/" 2>/dev/null || true)"
  local base="$URL"
  [[ "$home" == */classic/* ]] && base="$URL/classic"
  echo "alerts: $base/alerts, targets: $base/targets, rules: $base/rules"
}

port_taken() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

up() {
  if alive prometheus; then
    reload
    return
  fi
  port_taken && die "$HOST:$PORT is taken by another server (a system prometheus service?); set FRAUD_PROMETHEUS_PORT"
  install_config
  log "starting Prometheus on $URL (config $STATE/prometheus.yml, targets $TARGETS_DIR, log: $LOG_DIR/prometheus.log)"
  start_bg prometheus prometheus \
    --config.file="$STATE/prometheus.yml" \
    --storage.tsdb.path="$STATE/data" \
    --storage.tsdb.retention.time="$RETENTION" \
    --web.listen-address="$HOST:$PORT" \
    --web.console.templates=/etc/prometheus/consoles \
    --web.console.libraries=/etc/prometheus/console_libraries
  wait_healthy prometheus "$URL/-/ready" 60 || exit 1
  log "Prometheus UI: $URL ($(ui_pages))"
}

reload() {
  alive prometheus || die "Prometheus is not running (scripts/prometheus.sh up starts it)"
  install_config
  log "reloading Prometheus (pid $(cat "$RUN_DIR/prometheus.pid")) with $STATE/prometheus.yml"
  kill -HUP "$(cat "$RUN_DIR/prometheus.pid")"
}

down() {
  stop_pid prometheus
}

status() {
  print_status prometheus
  if curl -fsS --max-time 2 "$URL/-/ready" >/dev/null 2>&1; then
    echo "Prometheus UI: $URL (ready; $(ui_pages))"
  else
    echo "Prometheus UI: $URL (not answering)"
  fi
  echo "scrape-target files: $TARGETS_DIR"
}

check() { # everything make lint asks of the config: it renders, parses, and the rules' tests pass
  install_prometheus
  local dir status=0 name
  dir="$(mktemp -d)"
  # scrape-target files of its own, empty, so the check reads no live fleet and warns of none
  mkdir -p "$dir/targets"
  for name in bento serve balancer; do echo '[]' >"$dir/targets/$name.json"; done
  TARGETS_DIR="$dir/targets" render "$dir"
  promtool check config "$dir/prometheus.yml" \
    && promtool check rules "$SOURCE"/rules/*.yml \
    && promtool test rules "$SOURCE"/tests/*.yml || status=$?
  rm -rf "$dir"
  return "$status"
}

register() { # register NAME HOST:PORT [LABEL=VALUE...]: one target in NAME.json, written atomically
  local name="${1:-}" target="${2:-}"
  [[ "$name" =~ ^[a-z][a-z0-9_-]*$ ]] || die "register: NAME='$name' must be a file name such as serve ([a-z][a-z0-9_-]*)"
  [[ "$target" =~ ^[A-Za-z0-9._-]+:[0-9]+$ ]] || die "register: HOST:PORT='$target' must look like 127.0.0.1:3000"
  shift 2
  local labels="" pair key value
  for pair in "$@"; do
    key="${pair%%=*}" value="${pair#*=}"
    [[ "$pair" == *=* && "$key" =~ ^[a-zA-Z_][a-zA-Z0-9_]*$ && "$key" != __* ]] \
      || die "register: label '$pair' must be NAME=VALUE with a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)"
    [[ "$value" =~ ^[A-Za-z0-9._:/@+-]*$ ]] \
      || die "register: the value of label $key='$value' may hold letters, digits and ._:/@+- only"
    labels+="${labels:+, }\"$key\": \"$value\""
  done
  mkdir -p "$TARGETS_DIR"
  local file="$TARGETS_DIR/$name.json"
  printf '[{"targets": ["%s"], "labels": {%s}}]\n' "$target" "$labels" >"$file.tmp"
  mv "$file.tmp" "$file"
  log "registered $target for scraping in $file"
}

unregister() {
  local name="${1:-}"
  [[ "$name" =~ ^[a-z][a-z0-9_-]*$ ]] || die "unregister: NAME='$name' must be a file name such as serve"
  rm -f "$TARGETS_DIR/$name.json"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  reload) reload ;;
  check) check ;;
  render)
    [[ -n "${2:-}" ]] || die "render: give the folder to write into"
    render "$2"
    log "rendered $2/prometheus.yml and $2/rules/"
    ;;
  register) shift; register "$@" ;;
  unregister) shift; unregister "$@" ;;
esac
