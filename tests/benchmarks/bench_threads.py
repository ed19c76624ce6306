"""Two trainings sharing the cores: torch's default threads in each process against the thread budget.

    python -m tests.benchmarks.bench_threads [--iterations 8] [--pairs 3] [--quick]

Each run starts two processes at once, each timing training steps of the ThreeLevelUNet (channels 16-32-64-128,
128x128, batch 2): first with torch's default (every process takes every core: oversubscribed), then with the
project's budget (``workflows.machine.threads.set_threads(0, processes=2)``: the cores divided by the two processes). The
two settings alternate, ``--pairs`` times; it prints the median seconds per step of each and ends with
``speedup=<median ratio default / budget>``. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

STEP = """
import sys, time, torch
budget = sys.argv[1] == "budget"
if budget:
    from workflows.machine.threads import set_threads
    set_threads(0, processes=2)
from networks import BCEDiceLoss, ThreeLevelUNet
torch.manual_seed(0)
net = ThreeLevelUNet(spatial_dims=2, in_channels=1, out_channels=1, channels=[16, 32, 64, 128])
opt, loss = torch.optim.Adam(net.parameters(), 1e-3), BCEDiceLoss()
x, y = torch.rand(2, 1, 128, 128), (torch.rand(2, 1, 128, 128) > 0.5).float()
for step in range(int(sys.argv[2]) + 1):
    if step == 1:
        started = time.perf_counter()
    opt.zero_grad(); loss(net(x), y).backward(); opt.step()
print((time.perf_counter() - started) / int(sys.argv[2]), torch.get_num_threads())
"""


def two_at_once(mode: str, iterations: int) -> tuple[float, int]:
    """Mean seconds per step over two concurrent processes, and the threads each used."""
    runs = [subprocess.Popen([sys.executable, "-c", STEP, mode, str(iterations)], stdout=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [run.communicate()[0].split() for run in runs]
    return statistics.mean(float(r[0]) for r in results), int(results[0][1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="4 steps a process, 3 pairs (about a minute)")
    args = parser.parse_args()
    iterations = 4 if args.quick else args.iterations
    started = time.time()
    ratios, times = [], {"default": [], "budget": []}
    for pair in range(args.pairs):
        default, default_threads = two_at_once("default", iterations)
        budget, budget_threads = two_at_once("budget", iterations)
        times["default"].append(default)
        times["budget"].append(budget)
        ratios.append(default / budget)
        print(f"pair {pair + 1}: default ({default_threads} threads each) {default:.3f} s/step, budget "
              f"({budget_threads} thread(s) each) {budget:.3f} s/step", flush=True)
    print(f"median s/step with two processes: default {statistics.median(times['default']):.3f}, budget "
          f"{statistics.median(times['budget']):.3f} ({time.time() - started:.0f} s)")
    print(f"speedup={statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
