#!/usr/bin/env bash
# Provide a local Docker engine and the `python:3.11-slim` base image on a machine that has
# neither an engine nor a reachable container registry (see docs/operations.md, "Docker engine").
#
# Usage (as root):
#   scripts/docker-engine.sh [start] [STATE_DIR]   install, start dockerd, provide the base image
#   scripts/docker-engine.sh stop [STATE_DIR]      stop the dockerd this script started (by PID)
#   scripts/docker-engine.sh status [STATE_DIR]    exit 0 when the engine answers
#   scripts/docker-engine.sh --help                this text; nothing is started
#
# STATE_DIR (default $FRAUD_DOCKER_DIR or /tmp/fraud-docker) holds dockerd.pid, dockerd.log and
# the build log of the base image. Idempotent: an engine that already answers is reused, and an
# existing base image is kept. dockerd never writes to this script's stdout or stderr.
set -euo pipefail

usage() { sed -n '2,13p' "${BASH_SOURCE[0]}"; }

cmd="start"
case "${1:-}" in
-h | --help | help)
    usage
    exit 0
    ;;
start | stop | status)
    cmd="$1"
    shift
    ;;
esac
if [[ "${1:-}" == -* ]]; then # an option is never a state folder: refuse rather than act
    usage >&2
    printf '[docker-engine] unknown option: %s\n' "$1" >&2
    exit 2
fi
STATE_DIR="${1:-${FRAUD_DOCKER_DIR:-/tmp/fraud-docker}}"
BASE_IMAGE="${FRAUD_BASE_IMAGE:-python:3.11-slim}"
SUITE="${FRAUD_BASE_SUITE:-bookworm}"
BASE_RECIPE=2 # bump when the base image recipe below changes
START_TIMEOUT="${FRAUD_DOCKER_START_TIMEOUT:-60}"
STOP_TIMEOUT="${FRAUD_DOCKER_STOP_TIMEOUT:-30}"
PID_FILE="$STATE_DIR/dockerd.pid"
LOG_FILE="$STATE_DIR/dockerd.log"

log() { printf '[docker-engine] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

engine_up() { docker info >/dev/null 2>&1; }

our_pid() {
    # The PID recorded by this script, if that process is still a dockerd.
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    alive "$pid" || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "dockerd" ]] || return 1
    echo "$pid"
}

alive() {
    # Running and not a zombie (a killed dockerd may linger as one until it is reaped).
    [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null || return 1
    [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != "Z" ]]
}

install_packages() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    if ((${#missing[@]})); then
        [[ "$(id -u)" == 0 ]] || die "installing ${missing[*]} needs root"
        log "installing ${missing[*]}"
        apt-get update -qq >"$STATE_DIR/apt.log" 2>&1 || die "apt-get update failed, see $STATE_DIR/apt.log"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >>"$STATE_DIR/apt.log" 2>&1 ||
            die "apt-get install ${missing[*]} failed, see $STATE_DIR/apt.log"
    fi
    # docker.io ships its own client; the one earlier on PATH (if any) talks to the same socket.
    command -v dockerd >/dev/null 2>&1 || die "dockerd not found after installing docker.io"
}

start_engine() {
    if engine_up; then
        log "engine already answers (docker info); reusing it"
        return 0
    fi
    local pid
    if pid="$(our_pid)"; then
        log "dockerd (pid $pid) is running but does not answer yet"
    else
        log "starting dockerd, log: $LOG_FILE"
        # setsid + redirections: dockerd and its containerd child hold no handle on our stdio.
        setsid dockerd ${FRAUD_DOCKERD_ARGS:-} </dev/null >>"$LOG_FILE" 2>&1 &
        pid=$!
        echo "$pid" >"$PID_FILE"
    fi
    local waited=0
    until engine_up; do
        alive "$pid" || die "dockerd (pid $pid) exited; see $LOG_FILE"
        ((waited >= START_TIMEOUT)) && die "docker info did not answer within ${START_TIMEOUT}s; see $LOG_FILE"
        sleep 1
        waited=$((waited + 1))
    done
    log "engine ready after ${waited}s (pid $pid)"
}

apt_mirror() {
    # The Debian mirror apt already uses on this machine (deb822 or one-line format).
    local uri=""
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        uri="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
    fi
    if [[ -z "$uri" && -f /etc/apt/sources.list ]]; then
        uri="$(awk '$1 == "deb" && $0 !~ /security/ {print ($2 ~ /^\[/ ? $3 : $2); exit}' /etc/apt/sources.list)"
    fi
    echo "$uri"
}

provide_base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        local recipe
        recipe="$(docker image inspect -f '{{ index .Config.Labels "fraud.base-recipe" }}' "$BASE_IMAGE" 2>/dev/null || true)"
        # A pulled image has no recipe label and is kept; one built by an older recipe is rebuilt.
        if [[ -z "$recipe" || "$recipe" == "<no value>" || "$recipe" == "$BASE_RECIPE" ]]; then
            log "base image $BASE_IMAGE present"
            return 0
        fi
        log "base image $BASE_IMAGE was built by recipe $recipe; rebuilding with recipe $BASE_RECIPE"
    fi
    local rootfs="$STATE_DIR/rootfs" build_log="$STATE_DIR/base-image.log" mirror
    mirror="$(apt_mirror)"
    log "building $BASE_IMAGE from Debian $SUITE packages (debootstrap, about a minute), log: $build_log"
    rm -rf "$rootfs"
    # shellcheck disable=SC2086
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        "$SUITE" "$rootfs" $mirror >"$build_log" 2>&1 || die "debootstrap failed; see $build_log"
    # TLS to the package index may be intercepted by a local CA: trust what the host trusts.
    if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
        cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    fi
    rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
    # What a slim image leaves out: package caches, documentation, manual pages, translations.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/usr/share/locale/*
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["python3"]' \
        --change "LABEL fraud.base-recipe=$BASE_RECIPE" \
        - "$BASE_IMAGE" >>"$build_log" 2>&1 || die "docker import failed; see $build_log"
    rm -rf "$rootfs"
    docker run --rm --network host "$BASE_IMAGE" python3 -c 'import sys, venv, ssl; print(sys.version)' \
        >>"$build_log" 2>&1 || die "the imported $BASE_IMAGE does not run python3; see $build_log"
    log "base image $BASE_IMAGE built"
}

stop_engine() {
    local pid
    if ! pid="$(our_pid)"; then
        log "no dockerd started from $STATE_DIR is running"
        rm -f "$PID_FILE"
        return 0
    fi
    log "stopping dockerd (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local waited=0
    while alive "$pid"; do
        if ((waited >= STOP_TIMEOUT)); then
            log "dockerd did not stop within ${STOP_TIMEOUT}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 1
            break
        fi
        sleep 1
        waited=$((waited + 1))
    done
    rm -f "$PID_FILE"
    log "dockerd stopped"
}

mkdir -p "$STATE_DIR"
case "$cmd" in
start)
    install_packages
    start_engine
    provide_base_image
    ;;
stop) stop_engine ;;
status) engine_up ;;
esac
