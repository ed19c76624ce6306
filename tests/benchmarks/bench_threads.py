"""Trainings sharing the cores: torch's default threads against the project's thread budget.

    python -m tests.benchmarks.bench_threads [--iterations 8] [--pairs 3] [--quick] [--scenario both|pair|busy]

Each run times training steps of the ThreeLevelUNet (channels 16-32-64-128, 128x128, batch 2).

- ``pair``: two processes at once, first with torch's default (every process takes every core: oversubscribed),
  then with the budget (``workflows.machine.threads.set_threads(0, processes=2)``). Ends with
  ``speedup=<median ratio default / budget>``.
- ``busy``: one training beside one busy program (another process running a training loop on every core, torch's
  default, the whole time): the budget's default (``set_threads(0)``: the free cores), ``--threads 1``, and the
  old default (every core), in turn. Ends with ``busy_speedup=<median ratio old default / new default>``.

The settings alternate, ``--pairs`` times; it prints the median seconds per step of each. Not a test: it prints
figures.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

STEP = """
import sys, time, torch
from workflows.machine.threads import available_cores, set_threads
mode = sys.argv[1]
if mode == "budget":
    set_threads(0, processes=2)
elif mode == "free":  # the default of every command: the cores other programs leave free
    set_threads(0)
elif mode == "one":
    set_threads(1)
elif mode == "all":  # the default before the budget looked at other programs
    set_threads(available_cores())
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


BUSY = """
import time, torch
from networks import BCEDiceLoss, ThreeLevelUNet
net = ThreeLevelUNet(spatial_dims=2, in_channels=1, out_channels=1, channels=[16, 32, 64, 128])
opt, loss = torch.optim.Adam(net.parameters(), 1e-3), BCEDiceLoss()
x, y = torch.rand(2, 1, 128, 128), (torch.rand(2, 1, 128, 128) > 0.5).float()
while True:
    opt.zero_grad(); loss(net(x), y).backward(); opt.step()
"""


def beside_busy(mode: str, iterations: int) -> tuple[float, int]:
    """Seconds per step of one training while another process keeps every core busy, and the threads it used."""
    busy = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        time.sleep(3)  # the busy program is at work before the training picks its threads
        out = subprocess.run([sys.executable, "-c", STEP, mode, str(iterations)], stdout=subprocess.PIPE, text=True,
                             check=True).stdout.split()
    finally:
        busy.kill()
        busy.wait()
    return float(out[0]), int(out[1])


def busy_scenario(pairs: int, iterations: int) -> None:
    from workflows.machine.threads import available_cores

    modes = {"free": "new default (free cores)", "one": "--threads 1", "all": f"old default ({available_cores()} cores)"}
    times = {mode: [] for mode in modes}
    for pair in range(pairs):
        shown = []
        for mode in modes:
            seconds, threads = beside_busy(mode, iterations)
            times[mode].append(seconds)
            shown.append(f"{modes[mode]} {threads} thread(s) {seconds:.3f} s/step")
        print(f"beside a busy program, round {pair + 1}: " + ", ".join(shown), flush=True)
    medians = {mode: statistics.median(values) for mode, values in times.items()}
    print("median s/step beside a busy program: " + ", ".join(f"{modes[m]} {v:.3f}" for m, v in medians.items()))
    print(f"busy_speedup={medians['all'] / medians['free']:.2f}")


def pair_scenario(pairs: int, iterations: int) -> None:
    ratios, times = [], {"default": [], "budget": []}
    for pair in range(pairs):
        default, default_threads = two_at_once("default", iterations)
        budget, budget_threads = two_at_once("budget", iterations)
        times["default"].append(default)
        times["budget"].append(budget)
        ratios.append(default / budget)
        print(f"pair {pair + 1}: default ({default_threads} threads each) {default:.3f} s/step, budget "
              f"({budget_threads} thread(s) each) {budget:.3f} s/step", flush=True)
    print(f"median s/step with two processes: default {statistics.median(times['default']):.3f}, budget "
          f"{statistics.median(times['budget']):.3f}")
    print(f"speedup={statistics.median(ratios):.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="4 steps a process, 3 pairs (about a minute)")
    parser.add_argument("--scenario", choices=("both", "pair", "busy"), default="both")
    args = parser.parse_args()
    iterations = 4 if args.quick else args.iterations
    started = time.time()
    if args.scenario in ("both", "pair"):
        pair_scenario(args.pairs, iterations)
    if args.scenario in ("both", "busy"):
        busy_scenario(args.pairs, iterations)
    print(f"({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
