"""A writer process for the crash and concurrency tests: `python db_writer.py URL RUN [--slow-ms MS]`.

Runs the deterministic workload to the end, printing one line per committed batch (the parent
kills it with SIGKILL at chosen points). --slow-ms sleeps before every statement, so most kills
land inside an open transaction rather than between batches.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from db_workload import run_pipeline  # noqa: E402
from sqlalchemy import event  # noqa: E402

from db.engine import init_db, make_engine  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("run")
    ap.add_argument("--slow-ms", type=float, default=0.0)
    ap.add_argument("--batch", type=int, default=5)
    args = ap.parse_args()
    engine = make_engine(args.url)
    init_db(engine)
    if args.slow_ms:
        event.listen(engine, "before_cursor_execute", lambda *a: time.sleep(args.slow_ms / 1000))
    print("ready", flush=True)
    run_pipeline(engine, args.run, batch=args.batch, on_batch=lambda stage: print(stage, flush=True))
    print("done", flush=True)
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
