#!/usr/bin/env bash
# Proves the README's main-job command on this checkout as CI gets it (a fresh clone: no .venv, no
# runs/; CI also starts with no Docker daemon running): runs the quickstart at reduced size, checks
# that every artefact it promises exists, then runs it again and checks that the second run resumed
# (no new LLM calls, no new rows) instead of redoing work.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# reduced size: the demo model warmed up on 10 corpus problems (not 40), 4 problem calls, 10 fine-tuning steps
export QUICKSTART_WARMUP_PROBLEMS="${QUICKSTART_WARMUP_PROBLEMS:-10}" QUICKSTART_WARMUP_STEPS="${QUICKSTART_WARMUP_STEPS:-300}"
export QUICKSTART_FT_STEPS="${QUICKSTART_FT_STEPS:-10}"
REDUCED=(--set problems.max_calls=4 --set problems.target=10)
OUT=runs/quickstart
rm -rf "$OUT"

counts() {  # rows per table of the quickstart's SQLite database, one line
  .venv/bin/python - "$OUT/selfinstruct.db" <<'PY'
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
tables = ["runs", "llm_calls", "problems", "tests", "solutions", "executions", "triples"]
print(" ".join(f"{t}={con.execute(f'select count(*) from {t}').fetchone()[0]}" for t in tables))
PY
}

scripts/quickstart.sh "${REDUCED[@]}"
for f in "$OUT/selfinstruct.db" "$OUT/quickstart-funnel.png" "$OUT/export/train.jsonl" \
         "$OUT/finetune/hf/config.json" "$OUT/finetune/metrics.jsonl" "$OUT/finetune/loss.png"; do
  [ -e "$f" ] || { echo "check_fresh_clone: missing $f" >&2; exit 1; }
done
first=$(counts)
echo "after the first run:  $first"
[[ "$first" == *"llm_calls=0 "* ]] && { echo "check_fresh_clone: the pipeline made no LLM calls" >&2; exit 1; }
[[ "$first" == *"triples=0"* ]] && { echo "check_fresh_clone: the warmed demo model made no triples" >&2; exit 1; }

scripts/quickstart.sh "${REDUCED[@]}"
second=$(counts)
echo "after the second run: $second"
[ "$first" = "$second" ] || { echo "check_fresh_clone: the second run changed the database (it should resume)" >&2; exit 1; }
echo "check_fresh_clone: quickstart passed on a fresh checkout and resumed on the second run"
