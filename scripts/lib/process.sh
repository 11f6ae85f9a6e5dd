# shellcheck shell=bash
# Process helpers shared by scripts/stack.sh and scripts/prod.sh (sourced, never run).
# A server is started in its own session with its output in $LOG_DIR/NAME.log (never on the
# caller's stdout) and its PID in $RUN_DIR/NAME.pid; it is checked, waited on and stopped by
# that PID, never by name. The caller sets RUN_DIR and LOG_DIR and defines `log MESSAGE`.

alive() { # alive NAME: the recorded PID is running
  local pid_file="$RUN_DIR/$1.pid"
  [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

start_bg() { # start_bg NAME CMD...: own session, output to a log file, PID recorded
  local name="$1"; shift
  setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/$name.pid"
}

stop_pid() { # stop_pid NAME [GRACE]: SIGTERM the process group, wait GRACE s (20), SIGKILL
  local name="$1" pid_file="$RUN_DIR/$1.pid" grace="${2:-20}" pid
  [[ -f "$pid_file" ]] || return 0
  pid="$(cat "$pid_file")"
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $name (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((grace * 2))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not stop in $grace s; killing it"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pid_file"
}

wait_healthy() { # wait_healthy NAME URL SECONDS: until URL answers; 1 (with the log's tail)
  local name="$1" url="$2" seconds="$3"  # when NAME exits first or SECONDS pass
  for _ in $(seq 1 $((seconds * 2))); do
    curl -fsS --max-time 2 "$url" >/dev/null 2>&1 && return 0
    if ! alive "$name"; then
      tail -30 "$LOG_DIR/$name.log" >&2
      log "$name exited; see $LOG_DIR/$name.log"
      return 1
    fi
    sleep 0.5
  done
  log "$name did not become healthy in $seconds s; see $LOG_DIR/$name.log"
  return 1
}

print_status() { # print_status NAME...: "NAME: running (pid N)" or "NAME: stopped"
  local name
  for name in "$@"; do
    if alive "$name"; then
      echo "$name: running (pid $(cat "$RUN_DIR/$name.pid"))"
    else
      echo "$name: stopped"
    fi
  done
}
