"""The durable queue's put→ack latency per fsync policy, as a sender of the collector waits for it.

A receiver answers a sender once ``DiskQueue.put`` returns, i.e. once the record is
durable per ``sending_queue.fsync``. This measures exactly that call, on a real disk,
with no gRPC or backend around it:

* **sequential** (``--writers 1``): one writer, one put in flight, like one SDK's batch
  processor. Latency p50/p99 per policy; with ``interval`` the old design waited for the
  next 50 ms tick, group commit should cost one ``fdatasync``.
* **concurrent** (``--concurrent 8``): that many writers at once. Puts per second and how
  many ``fdatasync`` calls they shared (fsyncs per put < 1 means group commit works).

Policies run interleaved, ``--rounds`` times, the order reversed every other round; the
median of the rounds is reported. Raw results (every round) go to ``--output``
(default ``bench/results/queue-fsync-latency.json``) with the git commit.

    .venv/bin/python bench/collector/queue_fsync_latency.py [--puts 1000] [--rounds 3] [--payload 60000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from meshwatch.collector.queue import DiskQueue, disk

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "queue-fsync-latency.json"
POLICIES = ("never", "interval", "always")


@dataclass
class Run:
    policy: str
    mode: str  # sequential | concurrent
    writers: int
    round: int
    puts: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    puts_per_s: float
    fdatasyncs: int
    fsyncs_per_put: float


class _CountingSync:
    """Counts ``os.fdatasync`` calls made while it is installed (the real call still runs)."""

    def __init__(self) -> None:
        self.real = os.fdatasync
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        with self.lock:
            self.calls += 1
        self.real(fd)

    def __enter__(self) -> _CountingSync:
        os.fdatasync = self
        return self

    def __exit__(self, *exc: object) -> None:
        os.fdatasync = self.real


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(folder: Path, policy: str, *, writers: int, puts: int, payload: bytes, round_: int) -> Run:
    queue = DiskQueue(folder, max_items=10**9, max_bytes=1 << 40, fsync=policy, name=f"bench-{policy}")  # type: ignore[arg-type]
    # Records are taken and acknowledged as they come, so segments roll and are deleted as in service.
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            records = queue.get(10_000, 1 << 30, timeout=0.05)
            if records:
                queue.ack(records)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    for _ in range(20):  # warm-up: first segment write, page cache
        queue.put(payload, items=100)
    latencies: list[list[float]] = [[] for _ in range(writers)]
    per_writer = max(1, puts // writers)

    def write(index: int) -> None:
        out = latencies[index]
        for _ in range(per_writer):
            start = time.perf_counter()
            queue.put(payload, items=100)
            out.append(time.perf_counter() - start)

    with _CountingSync() as counter:
        began = time.perf_counter()
        threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - began
    stop.set()
    reader.join()
    queue.close()
    flat = [x * 1000 for lat in latencies for x in lat]
    done = len(flat)
    return Run(
        policy=policy,
        mode="sequential" if writers == 1 else "concurrent",
        writers=writers,
        round=round_,
        puts=done,
        p50_ms=round(statistics.median(flat), 3),
        p99_ms=round(_percentile(flat, 0.99), 3),
        max_ms=round(max(flat), 3),
        puts_per_s=round(done / elapsed, 1),
        fdatasyncs=counter.calls,
        fsyncs_per_put=round(counter.calls / done, 3),
    )


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        )
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def queue_source() -> dict[str, str]:
    """Which queue code ran: a run with ``PYTHONPATH`` pointing at another checkout names that one."""
    path = Path(disk.__file__).resolve()
    return {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--puts", type=int, default=1000, help="puts per policy per round (per mode)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--payload", type=int, default=60_000, help="bytes per record (≈ a 512-span request)")
    parser.add_argument("--concurrent", type=int, default=8, help="writers in the concurrent mode (0: skip it)")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--dir", type=Path, default=None, help="where the queue lives (default: a temporary folder)")
    parser.add_argument("--label", default="", help="stored with the results (e.g. which checkout ran)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="raw results (JSON)")
    args = parser.parse_args()

    policies = args.policies.split(",")
    payload = os.urandom(args.payload)
    modes = [1] + ([args.concurrent] if args.concurrent > 1 else [])
    runs: list[Run] = []
    base = Path(tempfile.mkdtemp(prefix="queue-fsync-", dir=args.dir))
    for round_ in range(args.rounds):
        order = policies if round_ % 2 == 0 else policies[::-1]
        for writers in modes:
            for policy in order:
                folder = base / f"r{round_}-{policy}-{writers}"
                run = measure(folder, policy, writers=writers, puts=args.puts, payload=payload, round_=round_)
                runs.append(run)
                print(
                    f"round {round_} {run.mode:<10} {policy:<8} p50 {run.p50_ms:8.3f} ms  p99 {run.p99_ms:8.3f} ms  "
                    f"{run.puts_per_s:9.1f} puts/s  fdatasync/put {run.fsyncs_per_put:.3f}",
                    flush=True,
                )
                for path in folder.iterdir():
                    path.unlink()
                folder.rmdir()
    base.rmdir()

    def med(policy: str, writers: int, field: str) -> float:
        return round(
            statistics.median(getattr(r, field) for r in runs if r.policy == policy and r.writers == writers), 3
        )

    fields = ("p50_ms", "p99_ms", "max_ms", "puts_per_s", "fsyncs_per_put")
    summary = [{"policy": p, "writers": w, **{f: med(p, w, f) for f in fields}} for w in modes for p in policies]
    print(f"\nmedians of {args.rounds} rounds, {args.puts} puts of {args.payload} bytes each:")
    print(f"{'writers':>7} {'policy':<8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'puts/s':>9} {'fdatasync/put':>13}")
    for s in summary:
        print(
            f"{s['writers']:>7} {s['policy']:<8} {s['p50_ms']:>8.3f} {s['p99_ms']:>8.3f} {s['max_ms']:>8.3f} "
            f"{s['puts_per_s']:>9.1f} {s['fsyncs_per_put']:>13.3f}"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "summary": summary,
                "runs": [asdict(r) for r in runs],
                "commit": _commit(),
                "label": args.label,
                "queue_source": queue_source(),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()},
                "queue_dir": str(args.dir or tempfile.gettempdir()),
                "args": {k: str(v) for k, v in vars(args).items()},
            },
            indent=2,
        )
        + "\n"
    )
    print(f"raw results: {args.output}")


if __name__ == "__main__":
    main()
