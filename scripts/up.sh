#!/usr/bin/env bash
# Start the Dagster UI (:3000), the MLflow UI (:5000) and the served model (:8000) on 127.0.0.1,
# until Ctrl-C or SIGTERM; then stop every process group it started. `make down` does the same from outside.
set -euo pipefail
set -m  # job control: each service gets its own process group, so it can be stopped whole
cd "$(dirname "$0")/.."
STATE="${FRAUD_STATE_DIR:-$PWD/.state}"
RUN="$STATE/run"
LOGS="$STATE/logs"
mkdir -p "$STATE/dagster" "$STATE/mlflow/artifacts" "$RUN" "$LOGS"
export DAGSTER_HOME="$STATE/dagster"
"$PWD/.venv/bin/python" -c 'from fraud_assets.orchestration.runner import ensure_dagster_home; ensure_dagster_home()'
# The scoring API needs a key: $FRAUD_API_KEY, else one kept in the state folder (created once, mode 0600).
if [ -z "${FRAUD_API_KEY:-}" ]; then
  if [ ! -s "$STATE/api_key" ]; then
    (umask 077 && "$PWD/.venv/bin/python" -c 'import secrets; print(secrets.token_urlsafe(32))' >"$STATE/api_key")
    echo "generated an API key in ${STATE#"$PWD"/}/api_key"
  fi
  chmod 600 "$STATE/api_key"
  FRAUD_API_KEY=$(cat "$STATE/api_key")
fi
export FRAUD_API_KEY
BIN="$PWD/.venv/bin"
HOST=127.0.0.1

start() {  # name, command...
  local name=$1; shift
  "$@" >"$LOGS/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
  echo "started $name (pid $!, log ${LOGS#"$PWD"/}/$name.log)"
}

stop_all() {
  trap - INT TERM EXIT
  bash scripts/down.sh
}
trap stop_all INT TERM EXIT

# One worker: SQLite serialises writes anyway, and each extra uvicorn worker costs ~250 MB.
start mlflow "$BIN/mlflow" server --host "$HOST" --port 5000 --workers "${FRAUD_MLFLOW_WORKERS:-1}" \
  --backend-store-uri "sqlite:///$STATE/mlflow/mlflow.db" \
  --default-artifact-root "$STATE/mlflow/artifacts"
start dagster "$BIN/dagster" dev -w workspace.yaml -h "$HOST" -p 3000
start serve "$BIN/fraud" serve --host "$HOST"

wait_http() {  # name, url, seconds
  for _ in $(seq "$3"); do
    if curl -fs -o /dev/null "$2"; then echo "$1 ready: $2"; return 0; fi
    sleep 1
  done
  echo "$1 did not answer at $2 within $3 s; see its log in ${LOGS#"$PWD"/}/" >&2
  return 1
}
wait_http "MLflow UI" "http://$HOST:5000/health" 90
wait_http "Dagster UI" "http://$HOST:3000/server_info" 120
wait_http "fraud model" "http://$HOST:8000/ready" 180
echo "all up. Ctrl-C stops everything."
echo "analyst page: http://$HOST:8000/ui/   (sign in with \$FRAUD_ANALYST_KEY if set, else the API key in ${STATE#"$PWD"/}/api_key)"
echo "score: fraud score   (or curl -H \"x-api-key: \$(cat ${STATE#"$PWD"/}/api_key)\" -H 'content-type: application/json' \\"
echo "         -d '{\"transaction_id\":\"t1\",\"tx_datetime\":\"2025-06-01T12:00:00Z\",\"customer_id\":\"c1\",\"terminal_id\":\"k1\",\"amount\":42.0}' http://$HOST:8000/predict)"
wait
