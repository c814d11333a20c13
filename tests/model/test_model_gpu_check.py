"""bench/gpu_check.py runs end to end on CPU with tiny shapes (the GPU run is the lead's, on a lent card)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_cpu_smoke_prints_one_json_line_and_writes_out(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--cpu-smoke"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["errors"] == {}
    assert report["parity"]["ok"] is True
    assert report["decode_7b"]["eager"]["tok_s"] > 0
    assert report["train_1b"]["tok_s"] > 0
    assert report["generate"]["seeded_sampling_reproducible"] is True
