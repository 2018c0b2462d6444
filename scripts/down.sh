#!/usr/bin/env bash
# Stop every service `make up` started. Each leader gets SIGTERM first, so it can stop its own children
# cleanly (`fraud serve` shuts Ray Serve and its Ray daemons down); whatever is left of a process group
# after the grace period gets SIGTERM, then SIGKILL. Only our own process groups are touched: other Ray
# clusters or Dagster instances on the machine are left alone.
set -uo pipefail
cd "$(dirname "$0")/.."
RUN="${FRAUD_STATE_DIR:-$PWD/.state}/run"
GRACE_S="${FRAUD_STOP_GRACE_S:-15}"
[ -d "$RUN" ] || exit 0

declare -A groups=()
for pidfile in "$RUN"/*.pid; do
  [ -e "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  name=$(basename "$pidfile" .pid)
  if kill -0 "$pid" 2>/dev/null; then
    groups[$name]=$pid
    kill -TERM "$pid" 2>/dev/null
  fi
  rm -f "$pidfile"
done

alive() { [ -n "$(ps -eo pgid= | awk -v g="$1" '$1 == g')" ]; }
wait_groups() {  # seconds
  for _ in $(seq $(($1 * 4))); do
    local left=0
    for name in "${!groups[@]}"; do alive "${groups[$name]}" && left=1; done
    [ "$left" = 0 ] && return 0
    sleep 0.25
  done
  return 1
}

wait_groups "$GRACE_S" || {
  for name in "${!groups[@]}"; do alive "${groups[$name]}" && kill -TERM -- "-${groups[$name]}" 2>/dev/null; done
  wait_groups 3
}
for name in "${!groups[@]}"; do
  if alive "${groups[$name]}"; then
    kill -KILL -- "-${groups[$name]}" 2>/dev/null
    echo "stopped $name (killed: it did not exit within ${GRACE_S}s of SIGTERM)"
  else
    echo "stopped $name"
  fi
done
