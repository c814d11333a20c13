#!/usr/bin/env bash
# Regenerates docs/quickstart/: a fresh quickstart run's full output (report.txt), its funnel plot
# and the fine-tuning loss curve. Takes as long as the quickstart (about 10 minutes on 2 cores).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
rm -rf runs/quickstart
mkdir -p docs/quickstart
scripts/setup.sh   # installs first, so that report.txt holds the quickstart's own output
scripts/quickstart.sh 2>&1 | sed -e 's/\x1b\[[0-9;]*m//g' | tee docs/quickstart/report.txt
cp runs/quickstart/quickstart-funnel.png docs/quickstart/funnel.png
cp runs/quickstart/finetune/loss.png docs/quickstart/loss.png
.venv/bin/selfinstruct db stats --db sqlite:///runs/quickstart/selfinstruct.db | tee docs/quickstart/db-stats.txt
