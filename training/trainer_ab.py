"""Trainer A/B from one resume state: does a trainer option train as well, and how fast? (issue 16)

Short runs of the second-generation trainer from copies of one resume state, one per variant (extra trainer
flags; default `--bf16 off` vs `--bf16 on`, item 4 of the issue; `--variants "--loader-workers 0"
"--loader-workers 1"` measures the batch-building worker). Batches, augmentation and dropout draws depend only
on the step, so every run sees the same data and the 50-step mean losses differ by the option alone. Prints each
run's log lines and its time per step.
Run (nothing else on the CPU): python -m training.trainer_ab [--state training/state/gen_resume.pt] [--steps 150]
"""
from __future__ import annotations

import argparse
import re
import shlex
import shutil
import tempfile
import time
from pathlib import Path

from training import train_ctc, train_demo
from training.common import WORK, load_state


def run(state: Path, k: int, variant: str, steps: int) -> tuple[list[str], float]:
    """`steps` steps in the recipe's cycle for that step, from a copy of `state`; (loss lines, s/step)."""
    start = load_state(state)["step"]
    cycle = max(i for i, c in enumerate(train_demo.GEN_CYCLES) if c["start"] <= start)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / f"ab{k}_resume.pt"
        shutil.copy(state, copy)
        args = train_demo.cycle_args(cycle, start + steps)
        args[args.index("--state") + 1] = str(copy)
        args[args.index("--eval-sets") + 1] = "heldout=gen_heldout"
        logfile = WORK / f"train_ab{k}.log"  # train_ctc names it after the state file; it appends
        before = len(logfile.read_text().splitlines()) if logfile.exists() else 0
        t0 = time.time()
        train_ctc.main(args + ["--init", str(train_demo.gen_init()), "--eval-every", "1000000",
                               "--save-every-s", "1e9"] + shlex.split(variant))
        wall = time.time() - t0
        log = logfile.read_text().splitlines()[before:]  # this run's lines only
    return [ln for ln in log if re.search(r"ctc step \d+/", ln)], wall / steps


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state", type=Path, default=train_ctc.COMMITTED / "gen_resume.pt")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--variants", nargs="+", default=["--bf16 off", "--bf16 on"],
                    help="trainer flags of each run, one quoted string per run (a lone flag needs a leading space, "
                         "' --freeze-encoder', or argparse takes it for an option of this script)")
    a = ap.parse_args(argv)
    for k, variant in enumerate(a.variants):
        lines, per_step = run(a.state, k, variant, a.steps)
        print(f"--- {variant}: {per_step:.2f} s/step (wall, model load and the final save included)")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
