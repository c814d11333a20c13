#!/usr/bin/env bash
# The main job end to end on embedded defaults (SQLite, local Ray, local Docker, a small local model):
#   1. install what is missing (scripts/setup.sh: Docker engine, .venv, sandbox image)
#   2. create a small random Llama checkpoint with its tokenizer (once)
#   3. run the self-instruct pipeline (problems -> tests -> solutions -> sandbox -> triples); rerunning
#      resumes from the database instead of redoing work
#   4. export the triples (Llama 2 chat format) and fine-tune the model on them, with a small bundled
#      instruct seed set added when few triples passed (a random model yields few or none)
#   5. print where everything is
# Everything lands under runs/quickstart/. Extra arguments go to `selfinstruct generate` (e.g. --set ...).
# QUICKSTART_PRESET (default small) and QUICKSTART_FT_STEPS (default 40) shrink it (CI uses tiny / 10).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
say() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
start=$(date +%s)
PRESET="${QUICKSTART_PRESET:-small}"
FT_STEPS="${QUICKSTART_FT_STEPS:-40}"

say "1/5 set-up (scripts/setup.sh)"
scripts/setup.sh
SI=.venv/bin/selfinstruct
OUT=runs/quickstart
DB="sqlite:///$OUT/selfinstruct.db"
mkdir -p "$OUT"

say "2/5 a small random Llama checkpoint (preset '$PRESET') with a freshly trained tokenizer"
if [ ! -f "$OUT/model/config.json" ]; then
  $SI model init --preset "$PRESET" --out "$OUT/model"
else
  echo "already there: $OUT/model"
fi

say "3/5 the self-instruct pipeline (generator/configs/quickstart.yaml; rerun resumes)"
$SI generate --config generator/configs/quickstart.yaml "$@"

say "4/5 export and instruct fine-tuning"
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
ft_args=(--model "$OUT/model" --out "$OUT/finetune" "${data[@]}" --max-steps "$FT_STEPS"
         --set data.seq_len=512 --set train.batch_size=4 --set optim.lr=1e-3
         --set train.log_every=2 --set train.eval_every=10)
if [ -f "$OUT/finetune/summary.json" ]; then
  echo "fine-tuning already finished: $OUT/finetune (delete it to train again)"
else
  [ -d "$OUT/finetune/checkpoints" ] && ft_args+=(--resume)
  $SI finetune "${ft_args[@]}"
fi

say "5/5 where things are"
cat <<INFO
  database        $OUT/selfinstruct.db          (selfinstruct db stats --db $DB)
  funnel plot     $(ls "$OUT"/*-funnel.png | tr '\n' ' ')
  export          $OUT/export/train.jsonl (+ train.val.jsonl)
  fine-tuned      $OUT/finetune/hf  (Hugging Face format; metrics.jsonl, loss.png beside it)
  wall time       $(( $(date +%s) - start )) s

A randomly initialised model writes no usable problems, tests or solutions: the report above shows
the machinery and every parse failure with its reason, not a dataset. For real data, point the
stages at real models with one line each, e.g.
  scripts/quickstart.sh --set 'problems.backend={kind: openai, base_url: "http://127.0.0.1:8000/v1", model: meta-llama/Llama-2-70b-chat-hf}'
or use generator/configs/codellama-paper.yaml on a GPU cluster (README: "Running on a GPU cluster").
INFO
