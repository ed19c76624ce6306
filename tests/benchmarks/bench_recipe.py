"""Time to accuracy: the real-data recipe at a few CPU budgets, for the reference set-up (one stage, one slice) and
the recipe's default (a tumour stage on crops around the liver, one neighbouring slice on each side), scored on the
held-out patients (a script that prints figures, not a test).

``python -m tests.benchmarks.bench_recipe --data ../shared/data/real --output DIR [--minutes 10 20 40]
[--epochs N ...] [--setups reference default] [--seeds 0 1] [--threads 2]``

Each (set-up, budget) is one ``python -m workflows.realdata --minutes B`` run in ``DIR/<set-up>_<B>min`` (or
``--epochs N`` in ``DIR/<set-up>_<N>ep``: a plan that does not depend on the probe; the slices are converted once and
copied to the others); a run already finished is read back, so the benchmark carries on where it stopped. The
reference trains in fp32, the default in bf16 where the CPU has it natively (``default_fp32``: the same in fp32);
``real_only`` and ``synthetic`` are the default's set-up with real lesions only and with lesions synthesised in half
the samples (sources that label the liver only left out), ``liver_only_sources`` the synthetic one with those sources
trained on (their tumour unknown), ``healthy_liver_sources`` the same with CHAOS's livers trained as tumour-free
(``--healthy-sources`` default), ``tumour_size_128`` and ``tumour_size_256`` that with the tumour stage's crops at
128 or 256 pixels a side (``--tumour-size``; 192 by default) and ``tumour_epochs_equal`` with the tumour stage
trained as many epochs as the whole-slice stage (twice as many by default; these three with ``--epochs`` budgets
only), ``reference_synthetic`` the reference's with synthetic lesions. ``--seeds 0 1``: each run once per seed
(``DIR/<set-up>_<budget>_seed1``). Prints one row per run (epochs, training CPU-minutes, held-out liver and tumour Dice per
patient and for the other collections' scans it never trains on, lesions found at IoU > 0.5 and false lesions) and
writes ``DIR/recipe_time_to_accuracy.json`` and
``DIR/recipe_time_to_accuracy.png`` (held-out Dice against training CPU-minutes, one line per set-up and structure).
Measure alone: another job on the same cores slows the speed probe, and with it the epochs a budget buys.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

_LEAVE_OUT = ["--liver-only-sources", "leave-out"]
SETUPS = {
    "reference": ["--stages", "1", "--context", "0", "--precision", "fp32", "--synthetic", "0", *_LEAVE_OUT],
    "default": [],  # the recipe's defaults: two stages, context 1, bf16 where the CPU has it natively
    "default_fp32": ["--precision", "fp32"],  # the same in fp32
    "real_only": ["--synthetic", "0", *_LEAVE_OUT],  # the default's set-up, real lesions only
    "synthetic": ["--synthetic", "0.5", *_LEAVE_OUT],  # the default's set-up, lesions synthesised in half the samples
    # and the sources that label the liver only trained on (their tumour unknown, synthetic lesions put in)
    "liver_only_sources": ["--synthetic", "0.5", "--liver-only-sources", "train", "--healthy-sources"],
    # the same with CHAOS (potential liver donors) trained as tumour-free livers, not tumour unknown
    "healthy_liver_sources": ["--synthetic", "0.5", "--liver-only-sources", "train"],
    "reference_synthetic": ["--stages", "1", "--context", "0", "--precision", "fp32", "--synthetic", "0.5", *_LEAVE_OUT],
    # healthy_liver_sources with the tumour stage's crops at 128 and 256 pixels a side (192 by default), the tumour
    # stage trained as many epochs as the whole-slice stage, as they were measured ({epochs}: the --epochs budget)
    "tumour_size_128": ["--synthetic", "0.5", "--liver-only-sources", "train", "--tumour-size", "128",
                        "--tumour-epochs", "{epochs}"],
    "tumour_size_256": ["--synthetic", "0.5", "--liver-only-sources", "train", "--tumour-size", "256",
                        "--tumour-epochs", "{epochs}"],
    # the default with its tumour stage trained as many epochs as the whole-slice stage (twice as many by default)
    "tumour_epochs_equal": ["--synthetic", "0.5", "--liver-only-sources", "train", "--tumour-epochs", "{epochs}"],
}


def run_recipe(data: Path, out: Path, budget: list[str], flags: list[str], threads: int, slices: Path | None) -> dict:
    """``python -m workflows.realdata`` into ``out`` with ``budget`` and ``flags`` (its log beside ``out``), the
    converted ``slices`` copied in first; a finished run is read back. Returns its ``summary.json``."""
    summary = out / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())
    if slices is not None and not (out / "slices").exists():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(slices, out / "slices")  # converted once: the same slices for every run
    command = [sys.executable, "-m", "workflows.realdata", "--data", str(data), "--output", str(out),
               *budget, "--threads", str(threads), *flags]
    print("$ " + " ".join(command[1:]), flush=True)
    with open(out.parent / f"{out.name}.log", "w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[1:])} failed (exit {done.returncode}); see {out.parent / (out.name + '.log')}")
    return json.loads(summary.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_recipe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/real", help="the real samples (../shared/data/real)")
    parser.add_argument("--output", required=True, help="working folder (one sub-folder per run)")
    parser.add_argument("--minutes", type=float, nargs="+", default=[], help="budgets in minutes (default 10 20 40 "
                                                                             "when no --epochs is given)")
    parser.add_argument("--epochs", type=int, nargs="+", default=[], help="budgets in epochs per stage")
    parser.add_argument("--setups", nargs="+", choices=list(SETUPS), default=["reference", "default"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the split and training (0)")
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    budgets = [(f"{m:g}min", ["--minutes", f"{m:g}"]) for m in args.minutes or ([] if args.epochs else [10, 20, 40])]
    budgets += [(f"{n}ep", ["--epochs", str(n)]) for n in args.epochs]
    slices = next((p / "slices" for p in sorted(out.iterdir()) if (p / "summary.json").is_file()), None)
    for name, budget in budgets:
        for seed in args.seeds:
            for setup in args.setups:
                run_dir = out / (f"{setup}_{name}" + (f"_seed{seed}" if seed else ""))
                if "{epochs}" in SETUPS[setup] and budget[0] != "--epochs":
                    print(f"{setup}: measured with --epochs budgets only (its tumour stage's epochs are the budget's); "
                          f"{' '.join(budget)} skipped", flush=True)
                    continue
                flags = [budget[1] if flag == "{epochs}" else flag for flag in SETUPS[setup]]
                run_recipe(Path(args.data), run_dir, budget, [*flags, "--seed", str(seed)], args.threads, slices)
                slices = slices or run_dir / "slices"
    results = []  # every finished run in DIR, this invocation's and earlier ones'
    for run_dir in sorted(p for p in out.iterdir() if (p / "summary.json").is_file()):
        stem, _, seed = run_dir.name.rpartition("_seed") if "_seed" in run_dir.name else (run_dir.name, "", "0")
        setup, _, name = stem.rpartition("_")
        if setup not in SETUPS or not (name.endswith("min") or name.endswith("ep")):
            continue
        summary = json.loads((run_dir / "summary.json").read_text())
        budget = f"--{'minutes' if name.endswith('min') else 'epochs'} {name.removesuffix('min').removesuffix('ep')}"
        results.append({"setup": setup, "budget": budget, "seed": int(seed), "epochs": summary["epochs"],
                        "tumour_epochs": summary.get("tumour_epochs"),
                        "training_cpu_minutes": summary.get("training_cpu_minutes"),
                        "training_minutes": summary["training_minutes"], "cpu_model": summary["cpu_model"],
                        "threads": summary["threads"],
                        "held_out": {**summary["held_out"], **summary.get("other_collections", {})}})
        scores = "; ".join(f"{pid}: liver {s['liver_dice']:.3f} tumour "
                           f"{'n/a' if s['tumour_dice'] is None else format(s['tumour_dice'], '.3f')} lesions found "
                           f"{s.get('lesions_found', 'n/a')} of {s.get('lesions_true', 'n/a')}, false "
                           f"{s.get('false_lesions', 'n/a')}" for pid, s in results[-1]["held_out"].items())
        tumour = f" (tumour stage {summary['tumour_epochs']})" if summary.get("tumour_epochs") else ""
        print(f"{setup:19s} seed {seed} {budget:>12s}: {summary['epochs']} epoch(s){tumour}, training "
              f"{summary['training_minutes']} min wall / {summary.get('training_cpu_minutes')} CPU-min; {scores}",
              flush=True)
    if not results:
        raise SystemExit(f"no finished run in {out}")
    (out / "recipe_time_to_accuracy.json").write_text(json.dumps(results, indent=1))
    _plot(results, out / "recipe_time_to_accuracy.png")
    print(f"CPU: {results[0]['cpu_model']}, {results[0]['threads']} threads; results {out / 'recipe_time_to_accuracy.json'}, "
          f"picture {out / 'recipe_time_to_accuracy.png'}")
    return 0


def _plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from workflows.data.pictures import save_figure

    patients = sorted({pid for r in results for pid in r["held_out"]})
    fig, axes = plt.subplots(1, len(patients), figsize=(4.6 * len(patients), 3.6), squeeze=False)
    for ax, pid in zip(axes[0], patients):
        for setup, style, marker in (("reference", "--", "s"), ("default", "-", "o"), ("default_fp32", ":", "^"),
                                     ("real_only", "-.", "v"), ("synthetic", "-", "D"),
                                     ("reference_synthetic", "--", "P"), ("liver_only_sources", ":", "X"),
                                     ("healthy_liver_sources", "-", "*"), ("tumour_size_128", "--", "*"),
                                     ("tumour_size_256", ":", "*"), ("tumour_epochs_equal", "-.", "*")):
            runs = sorted((r for r in results if r["setup"] == setup and pid in r["held_out"]),
                          key=lambda r: r["training_cpu_minutes"] or r["training_minutes"])
            if not runs:
                continue
            x = [r["training_cpu_minutes"] or r["training_minutes"] for r in runs]
            for key, colour in (("liver_dice", "tab:green"), ("tumour_dice", "tab:red")):
                ax.plot(x, [r["held_out"][pid][key] or 0 for r in runs], style, marker=marker, markersize=7,
                        color=colour, label=f"{setup}: {key.split('_')[0]}")
        ax.set_title(pid, fontsize=8)
        ax.set_xlabel("training CPU-minutes")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out Dice")
    axes[0][0].legend(fontsize=7)
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
