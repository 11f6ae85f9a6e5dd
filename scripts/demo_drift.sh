#!/usr/bin/env bash
# The monitoring story, for a person watching the Prefect UI (run `make run` first):
# the bento serves normal traffic -> drift-check: no drift -> drifted traffic and a labelled
# batch from the drifted period -> drift-check: drift, an email with the report, one
# train-and-release run started -> the new candidate passes every gate or is blocked -> the
# version answering on the served port is the champion (it changed when the release promoted).
set -euo pipefail
case "${1:-}" in
  -h | --help | help) sed -n '2,6p' "${BASH_SOURCE[0]}"; exit 0 ;;
esac
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FRAUD="$ROOT/.venv/bin/fraud"
eval "$("$FRAUD" stack env)"
URL="http://127.0.0.1:${FRAUD_SERVE_PORT:-3000}"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "1/7 serve the champion with bentoml serve ($URL: the model page; it follows the champion)"
"$FRAUD" stack serve
say "2/7 normal traffic: 5,000 transactions like the training data"
"$FRAUD" traffic --url "$URL" --rows 5000 --seed 201 --feedback
sleep "${FRAUD_DEMO_FLUSH_WAIT:-7}"  # the inference log flushes every 5 s
say "3/7 drift-check on the last 5,000 served rows: expect no drift, no retraining"
"$FRAUD" stack drift --param window='{"rows": 5000}'
say "4/7 the world changes: amounts x1.8, half the merchant mix moves to gaming/transfers"
"$FRAUD" generate-data "$FRAUD_HOME/labelled/batch-$(date +%Y%m%d%H%M%S).parquet" \
  --rows 100000 --seed 202 --amount-scale 1.8 --merchant-shift 0.5 --start-day 60 --quiet
echo "a labelled batch from the drifted period landed in $FRAUD_HOME/labelled/"
"$FRAUD" traffic --url "$URL" --rows 5000 --seed 203 --amount-scale 1.8 --merchant-shift 0.5 --feedback
sleep "${FRAUD_DEMO_FLUSH_WAIT:-7}"
say "5/7 drift-check again: expect drift, an email, one train-and-release run started"
"$FRAUD" stack drift --param window='{"rows": 5000}'
say "6/7 the triggered release runs its gates; the served port follows the champion"
"$FRAUD" served --url "$URL" --wait --timeout "${FRAUD_DEMO_RELEASE_TIMEOUT:-1200}"
say "7/7 where to look"
echo "Prefect UI:  ${PREFECT_API_URL%/api}/runs   (drift-check artifact, the triggered train-and-release)"
echo "mail:        ${FRAUD_HOME}/mail/new/   (or your FRAUD_SMTP_HOST)"
echo "reports:     ${FRAUD_HOME}/drift_reports/"
echo "the champion's history: make history"
echo "dashboard:   make monitor-ui, then http://127.0.0.1:${FRAUD_EVIDENTLY_PORT:-8000} (drift and realized F1 over time)"
