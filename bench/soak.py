"""The long chaos soak: N sales on one real machine under faults, then the money invariants.

    .venv/bin/python bench/soak.py                      # 10000 sales, seed 1
    .venv/bin/python bench/soak.py --sales 500 --seed 7 --workdir /tmp/soak7

Prints a table of every fault injected and story played, a table of every invariant checked,
each violation with its evidence, and exits 1 on any violation (2 if the books never settled).
The rig's directory (journal.db, daemon.log, broker log) is kept for a post-mortem when anything
failed, or always with --workdir.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vending.sandbox.chaos import FAULTS, STORIES, Chaos, ChaosOptions  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sales", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", default=None, help="keep the rig here (default: a temp dir, "
                    "deleted after a clean run)")
    ap.add_argument("--corrupt-rate", type=float, default=0.02)
    ap.add_argument("--drop-rate", type=float, default=0.02)
    ap.add_argument("--min-kills", type=int, default=10)
    ap.add_argument("--min-power-cycles", type=int, default=5)
    ap.add_argument("--min-broker-restarts", type=int, default=3)
    ap.add_argument("--progress", type=int, default=100, help="print progress every N sales")
    ap.add_argument("--without", action="append", default=[], metavar="FAULT_OR_STORY",
                    choices=sorted(set(FAULTS) | set(STORIES)),
                    help="switch one fault or story off (repeatable), e.g. --without brownout")
    a = ap.parse_args(argv)
    opts = ChaosOptions(sales=a.sales, seed=a.seed, workdir=a.workdir, corrupt_rate=a.corrupt_rate,
                        drop_rate=a.drop_rate, min_kills=a.min_kills,
                        min_power_cycles=a.min_power_cycles,
                        min_broker_restarts=a.min_broker_restarts, progress_every=a.progress,
                        faults={k: (0 if k in a.without else v) for k, v in FAULTS.items()},
                        stories={k: (0 if k in a.without else v) for k, v in STORIES.items()})
    result = Chaos(opts, log=lambda s: print(s, flush=True)).run()
    print(result.summary())
    settled = not any(result.outstanding.values())
    if result.ok and settled and a.workdir is None:
        shutil.rmtree(result.workdir, ignore_errors=True)
    if not result.ok:
        print(f"FAIL: {len(result.report.violations)} invariant violation(s); rig kept in "
              f"{result.workdir}")
        return 1
    if not settled:
        print(f"FAIL: the books did not settle; rig kept in {result.workdir}")
        return 2
    print("OK: no invariant violated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
