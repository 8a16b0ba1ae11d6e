"""Where a small request's CPU goes in the meshwatch collector, under telemetrygen's default load.

The collector (otlp → disk queue with ``--fsync`` → otlp) forwards to a reference collector
with the ``nop`` exporter while ``telemetrygen traces`` sends 100-span batches from one
worker (one export in flight, like an SDK). Prints the collector's CPU per request, then
profiles it twice: ``perf record -g`` for the split between kernel, interpreter, gRPC's C
core and protobuf (by shared object), and ``py-spy --gil`` for the Python functions that
hold the GIL (own and inclusive samples).

    .venv/bin/python bench/collector/profile_small_requests.py [--seconds 12] [--fsync interval]

Raw figures go to ``bench/results/profile-small-requests.json`` with the commit.
Needs ``perf`` and ``.venv/bin/meshwatch-stack install otelcol telemetrygen``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import telemetrygen_compare as tg
from queue_fsync_latency import ROOT, _commit

RESULTS = ROOT / "bench" / "results" / "profile-small-requests.json"

PY_SPY = Path(sys.executable).parent / "py-spy"


def _run(name: str, base: Path, seconds: float, profiler: list[str]) -> dict[str, float]:
    sink = tg.start_go(base / f"sink-{name}", exporters={"nop": {}}, extensions={})
    cut, pid, endpoint = tg.start_cut(name, base / f"cut-{name}-{profiler[0]}", sink.grpc_endpoint)
    try:
        command = [part.replace("{pid}", str(pid)) for part in profiler]
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stats = tg.ProcStats(pid)
        cpu_before, (accepted_before, _) = stats.cpu_seconds(), tg.counters(cut)
        tg.telemetrygen(endpoint, batch=100, workers=1, seconds=seconds, log=base / "telemetrygen.log")
        cpu, accepted = stats.cpu_seconds() - cpu_before, tg.counters(cut)[0] - accepted_before
        spy.wait(timeout=seconds + 60)
        requests = accepted / 100
        per_request = cpu / requests * 1000
        print(f"{profiler[0]}: {accepted:.0f} spans, {cpu:.2f} CPU s, {per_request:.2f} ms CPU per request")
        return {"spans": accepted, "cpu_seconds": round(cpu, 3), "cpu_ms_per_request": round(per_request, 3)}
    finally:
        tg.stop_cut(cut)
        sink.stop()


def _perf_split(path: Path) -> dict[str, float]:
    report = subprocess.run(
        ["perf", "report", "-i", str(path), "--no-children", "--sort", "dso", "--stdio", "-g", "none"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    print("CPU by shared object (perf):")
    split: dict[str, float] = {}
    for line in report.splitlines():
        if line.strip() and not line.startswith("#"):
            print("  " + line.strip())
            share, _, dso = line.strip().partition(" ")
            split[dso.strip()] = float(share.rstrip("%"))
    return split


def _gil_functions(path: Path, top: int = 20) -> dict[str, Any]:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames, samples = stack.split(";"), int(count)
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames[1:]):
            inclusive[frame] += samples
    print(f"GIL-holding samples: {total}")
    for title, counter in (("own", own), ("inclusive", inclusive)):
        print(f"  {title}:")
        for frame, samples in counter.most_common(top):
            print(f"    {samples / total:6.1%}  {frame[:110]}")
    return {
        "samples": total,
        "own": {frame: round(n / total, 4) for frame, n in own.most_common(top)},
        "inclusive": {frame: round(n / total, 4) for frame, n in inclusive.most_common(top)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--fsync", choices=["never", "always", "interval"], default="interval")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="profile-small-"))
    name = f"mw-{args.fsync}"
    window = str(int(args.seconds))
    perf_data, spy_data = base / "perf.data", base / "py-spy.txt"
    perf = ["perf", "record", "-F", "499", "-g", "-p", "{pid}", "-o", str(perf_data), "--", "sleep", window]
    started_on = _commit()
    perf_run = _run(name, base, args.seconds, perf)
    split = _perf_split(perf_data)
    py_spy = [str(PY_SPY), "record", "-p", "{pid}", "-f", "raw", "-o", str(spy_data), "-r", "200", "-d", window]
    py_spy.append("--gil")
    spy_run = _run(name, base, args.seconds, py_spy)
    gil = _gil_functions(spy_data)
    record = {
        "commit": started_on,
        "commit_at_end": _commit(),
        "loadavg": os.getloadavg(),
        "args": vars(args),
        "perf": {**perf_run, "cpu_by_shared_object_percent": split},
        "py_spy_gil": {**spy_run, **gil},
    }
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(f"raw results: {RESULTS}")


if __name__ == "__main__":
    main()
