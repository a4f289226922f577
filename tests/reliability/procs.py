"""Finding (and only ever touching) processes this test process started."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path


def descendants(root: int) -> set[int]:
    """Pids of every live process below `root` (Ray's raylet and workers started by ray.init here)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(proc.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def pids_named(marker: str, root: int | None = None) -> set[int]:
    """Our descendants whose command line (Ray's proctitle, e.g. ray::MapWorker(MapBatches(CTCPredictor)))
    contains `marker`."""
    out = set()
    for pid in descendants(root or os.getpid()):
        try:
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                out.add(pid)
        except OSError:
            continue
    return out


class ActorKiller(threading.Thread):
    """SIGKILLs one (new) actor process named `marker` once `ready()` is true, e.g. once the run has
    written its first output file, so the pool is busy with later batches when it dies; `choose` picks
    which of the candidate pids (None: not yet)."""

    def __init__(self, marker: str, ready, timeout_s: float = 300, choose=min):
        super().__init__(daemon=True)
        self.marker, self.ready, self.timeout_s, self.choose = marker, ready, timeout_s, choose
        self.before = pids_named(marker)
        self.killed: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.time() + self.timeout_s
        while not self.stop.is_set() and time.time() < deadline:
            pids = pids_named(self.marker) - self.before
            pid = self.choose(pids) if pids and self.ready() else None
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                self.killed = pid
                return
            time.sleep(0.05)
