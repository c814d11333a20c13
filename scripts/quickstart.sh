#!/usr/bin/env bash
# The main job end to end on embedded defaults (SQLite, local Ray, local Docker, a small local model):
#   1. install what is missing (scripts/setup.sh: Docker engine, .venv, sandbox image)
#   2. the demo model, once: a random 1.3M-parameter Llama (`model init --preset demo`) taught the recipe's
#      three formats by the recipe warm-up on the bundled corpus (finetune/configs/recipe-warmup-demo.yaml)
#   3. the self-instruct pipeline with the demo model as every stage's LLM (problems -> tests ->
#      solutions -> sandbox -> triples); rerunning resumes from the database instead of redoing work
#   4. export the triples (Llama 2 chat format) and fine-tune the demo model on them (with the bundled
#      rehearsal mix; the corpus's instruct examples only when fewer than 20 triples passed)
#   5. the paper's Table 8 comparison: the demo model before and after that fine-tuning, greedy, on the
#      recipe corpus's held-out split and HumanEval, scored in the same sandbox (`selfinstruct eval`)
#   6. the run report again, and where everything is
# Everything lands under runs/quickstart/. Extra arguments go to `selfinstruct generate` (e.g. --set ...).
# Smaller runs (CI): QUICKSTART_WARMUP_PROBLEMS (default 48), QUICKSTART_WARMUP_STEPS (540),
# QUICKSTART_FT_STEPS (40), QUICKSTART_EVAL_LIMIT (20 problems per benchmark).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
say() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
start=$(date +%s)
step_start=$start
took() { local now; now=$(date +%s); echo "($1: $((now - step_start)) s)" >&2; step_start=$now; }
WARMUP_PROBLEMS="${QUICKSTART_WARMUP_PROBLEMS:-48}"
WARMUP_STEPS="${QUICKSTART_WARMUP_STEPS:-540}"
FT_STEPS="${QUICKSTART_FT_STEPS:-40}"
EVAL_LIMIT="${QUICKSTART_EVAL_LIMIT:-20}"

say "1/6 set-up (scripts/setup.sh)"
scripts/setup.sh
SI=.venv/bin/selfinstruct
OUT=runs/quickstart
DB="sqlite:///$OUT/selfinstruct.db"
mkdir -p "$OUT"
took set-up

say "2/6 the demo model: a random Llama ('demo' preset) taught the recipe's formats (once; reused on rerun)"
if [ ! -f "$OUT/base/config.json" ]; then
  $SI model init --preset demo --out "$OUT/base"
fi
if [ -f "$OUT/demo/hf/config.json" ]; then
  echo "already there: $OUT/demo/hf (delete $OUT/demo to warm up again)"
else
  warm_args=(--config finetune/configs/recipe-warmup-demo.yaml --model "$OUT/base" --out "$OUT/demo"
             --recipe warmup --max-steps "$WARMUP_STEPS" --set "data.recipe.max_problems=$WARMUP_PROBLEMS")
  [ -d "$OUT/demo/checkpoints" ] && warm_args+=(--resume)
  $SI finetune "${warm_args[@]}"
fi
took "demo model"

say "3/6 the self-instruct pipeline (generator/configs/quickstart.yaml; rerun resumes)"
$SI generate --config generator/configs/quickstart.yaml "$@"
took pipeline

say "4/6 export and instruct fine-tuning on the triples"
# every run in the quickstart's database, so `--set run=NAME` (a new recipe) is exported too
$SI export --db "$DB" --format chat --out "$OUT/export/train.jsonl" --split-val 0.1
triples=$(cat "$OUT"/export/train*.jsonl 2>/dev/null | wc -l)
data=()
[ -s "$OUT/export/train.jsonl" ] && data+=(--data "$OUT/export/train.jsonl")
[ -s "$OUT/export/train.val.jsonl" ] && data+=(--val-data "$OUT/export/train.val.jsonl")
if [ "$triples" -lt 20 ]; then
  echo "only $triples triples passed: adding the recipe corpus's train split as instruct examples"
  data+=(--recipe instruct)
fi
ft_args=(--model "$OUT/demo/hf" --out "$OUT/finetune" "${data[@]}" --max-steps "$FT_STEPS"
         --set train.batch_size=4 --set optim.lr=1e-3 --set train.log_every=5 --set train.eval_every=20)
if [ -f "$OUT/finetune/summary.json" ]; then
  echo "fine-tuning already finished: $OUT/finetune (delete it to train again)"
else
  [ -d "$OUT/finetune/checkpoints" ] && ft_args+=(--resume)
  $SI finetune "${ft_args[@]}"
fi
took "export and fine-tuning"

say "5/6 the demo model before and after fine-tuning (Table 8 layout; greedy, $EVAL_LIMIT problems per benchmark)"
evaluate() {  # MODEL OUT LABEL; a finished evaluation is kept on rerun
  if [ -f "$2/summary.json" ]; then echo "already evaluated: $2"; return; fi
  $SI eval --model "$1" --benchmark recipe-heldout --benchmark humaneval --limit "$EVAL_LIMIT" \
    --max-tokens 192 --workers 2 --out "$2" --label "$3"
}
evaluate "$OUT/demo/hf" "$OUT/eval/before" "demo (before)"
evaluate "$OUT/finetune/hf" "$OUT/eval/after" "demo + its triples (after)"
$SI eval --compare "$OUT/eval/before" "$OUT/eval/after"
took evaluation

say "6/6 the run report and where things are"
.venv/bin/python -m generator report --db "$DB" --run quickstart
cat <<INFO
  database        $OUT/selfinstruct.db          (selfinstruct db stats --db $DB)
  demo model      $OUT/demo/hf  (after the recipe warm-up; its loss curve: $OUT/demo/loss.png)
  funnel plot     $(ls "$OUT"/*-funnel.png | tr '\n' ' ')
  export          $OUT/export/train.jsonl (+ train.val.jsonl)
  fine-tuned      $OUT/finetune/hf  (Hugging Face format; metrics.jsonl, loss.png beside it)
  evaluation      $OUT/eval/before, $OUT/eval/after  (every sample and its verdict; selfinstruct eval --compare ...)
  wall time       $(( $(date +%s) - start )) s

The demo model is 1.3M parameters that learned the recipe's formats from the bundled corpus a few minutes
ago: it mostly recalls corpus problems, tests and solutions, imperfectly, and the sandbox sorts what it
writes ("new problems" and "solutions unlike the reference" in the report count what it did not simply
recall). That is the machinery making real triples, not a new dataset. For real data, point the stages at
real models with one line each, e.g.
  scripts/quickstart.sh --set run=real --set 'problems.backend={kind: openai, base_url: "http://127.0.0.1:8000/v1", model: meta-llama/Llama-2-70b-chat-hf}'
or use generator/configs/codellama-paper.yaml on a GPU cluster (README: "Running on a GPU cluster").
INFO
