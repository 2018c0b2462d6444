#!/usr/bin/env bash
# Stop every service `make up` started: SIGTERM to each process group, SIGKILL after a grace period.
set -uo pipefail
cd "$(dirname "$0")/.."
RUN="${FRAUD_STATE_DIR:-$PWD/.state}/run"
[ -d "$RUN" ] || exit 0
for pidfile in "$RUN"/*.pid; do
  [ -e "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  name=$(basename "$pidfile" .pid)
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    echo "stopped $name"
  fi
  rm -f "$pidfile"
done
# Ray's own daemons (GCS, raylet) outlive a killed driver; stop them too.
[ -x .venv/bin/ray ] && .venv/bin/ray stop --force >/dev/null 2>&1 || true
