"""The main job's cost: `minillava run toy` from an empty cache, wall time and peak memory.

    python bench/toy_run.py [--fast]

Runs the command in a fresh temporary cache and run folder (nothing is reused), and writes
bench/results/toy_run.json with the wall time, the peak resident memory of the run and its results table.
Targets (issue 4): <= 5 minutes on the project's 2-core CPU machine (goal 3), peak RSS <= 2 GB.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="the tiny-budget variant (checks the script only)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, MINILLAVA_CACHE=f"{tmp}/cache")
        command = [sys.executable, "-m", "minillava.cli", "run", "toy", "--out", f"{tmp}/run"]
        command += ["--fast"] if args.fast else []
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        results = json.loads(Path(f"{tmp}/run/results.json").read_text())
    summary = {"wall_s": round(wall, 1), "peak_rss_mb": round(peak_mb), "fast": args.fast,
               "results": {task: {k: v for k, v in r.items() if k != "examples"} for task, r in results.items()}}
    print(f"minillava run toy{' --fast' if args.fast else ''}: {wall / 60:.2f} min wall, peak RSS {peak_mb:.0f} MB")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "toy_run.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
