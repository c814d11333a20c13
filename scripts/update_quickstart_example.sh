#!/usr/bin/env bash
# Regenerates docs/quickstart/ from a fresh quickstart run: the first run's set-up and demo-model
# warm-up (warmup.txt), the whole output of a run on that model (report.txt), the funnel plot and both
# loss curves. Takes about as long as the quickstart twice over minus the warm-up (15 minutes on 2 cores).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
rm -rf runs/quickstart
mkdir -p docs/quickstart
scripts/setup.sh   # installs first, so that report.txt holds the quickstart's own output
strip() { sed -e 's/\x1b\[[0-9;]*m//g'; }
scripts/quickstart.sh 2>&1 | strip | sed -n '1,/==> 3\/6/p' | sed '$d' > docs/quickstart/warmup.txt
# the report: the same demo model, the rest from scratch, so that report.txt is one run's whole output
rm -rf runs/quickstart/selfinstruct.db* runs/quickstart/export runs/quickstart/finetune runs/quickstart/eval
scripts/quickstart.sh 2>&1 | strip | tee docs/quickstart/report.txt
cp runs/quickstart/demo/loss.png docs/quickstart/warmup-loss.png
cp runs/quickstart/quickstart-funnel.png docs/quickstart/funnel.png
cp runs/quickstart/finetune/loss.png docs/quickstart/loss.png
.venv/bin/selfinstruct db stats --db sqlite:///runs/quickstart/selfinstruct.db | tee docs/quickstart/db-stats.txt
