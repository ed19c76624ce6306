"""Training throughput of the bundle's trainer against a plain PyTorch loop, and peak memory per chunk.

    python -m tests.benchmarks.bench_training [--work /tmp/bench_training] [--full-slices 40] [--quick-slices 320]
    python -m tests.benchmarks.bench_training --quick [--compile true]

Both train the same ThreeLevelUNet from the same seed on the same cached chunk with the same loss, optimizer,
batch size and epochs, in one process; only the training loop is timed (the bundle's `SupervisedTrainer` run from
start to end; the plain loop as the reference notebook wrote it). Figures: images/s for both and their ratio, at
full width 256x256 batch 2 and at the quickstart's size; then the peak memory of each of 4 chunks trained through
the bundle. The bundle runs in fp32 without augmentation there, as the plain loop does. ``--quick``: the fast
training path (``--precision auto``) against the fp32 eager one (see :func:`precision_pairs`). Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from monai.data import load_decathlon_datalist
from monai.utils import set_determinism

REPO = Path(__file__).resolve().parents[2]

from networks import BCEDiceLoss, ThreeLevelUNet  # noqa: E402
from workflows.data.conversion import convert  # noqa: E402
from workflows.data.slice_set import read_manifest  # noqa: E402
from workflows.data.splitting import plan_split, write_split  # noqa: E402
from workflows.data.synthetic_cases import generate_dataset  # noqa: E402

TRAIN = str(REPO / "bundles" / "liver_tumor_ct_segmentation" / "configs" / "train.json")


def make_lists(work: Path, size: int, chunk_size: int, cases: int = 10, slices: int = 40) -> Path:
    lists = work / f"lists_{size}_{chunk_size}"
    if not (lists / "split.json").exists():
        generate_dataset(work / f"raw_{size}", cases=cases, seed=0, size=size, slices=slices, progress=False,
                         skip_existing=True)
        convert(work / f"raw_{size}", work / f"slices_{size}", progress=False)
        rows = read_manifest(work / f"slices_{size}")
        available = plan_split(rows, positives=10**9, negatives=10**9).counts["train_available"]
        plan = plan_split(rows, positives=available["positive"], negatives=available["negative"], chunk_size=chunk_size)
        write_split(plan, lists, work / f"slices_{size}")
    return lists


def bundle_images_per_second(lists: Path, ckpt: Path, overrides: dict, epochs: int) -> tuple[float, int]:
    workflow = ConfigWorkflow(config_file=TRAIN, workflow_type="train", run_id="training",
                              **{"dataset_dir": str(lists), "ckpt_dir": str(ckpt), "chunk": 0, "progress": False,
                                 "epochs_per_chunk": epochs, "checkpoint_every": 10**6, **overrides})
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    times = {}
    trainer.add_event_handler(Events.STARTED, lambda e: times.__setitem__("start", time.perf_counter()))
    # the loop only: validation (ValidationHandler) and the chunk checkpoint run after the last iteration
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: times.__setitem__("end", time.perf_counter()))
    workflow.run()
    workflow.finalize()
    images = len(trainer.data_loader.dataset) * epochs
    return images / (times["end"] - times["start"]), images


def plain_images_per_second(lists: Path, size: int, channels: list[int], batch: int, lr: float, epochs: int) -> float:
    """The reference notebook's way: the chunk in memory as arrays, a DataLoader, a hand-written loop."""
    items = load_decathlon_datalist(lists / "chunk_0.json", data_list_key="training")
    images = np.stack([cv2.resize(cv2.imread(i["image"], cv2.IMREAD_GRAYSCALE), (size, size),
                                  interpolation=cv2.INTER_LINEAR) for i in items]).astype(np.float32) / 255
    masks = np.stack([cv2.resize(cv2.imread(i["label"], cv2.IMREAD_UNCHANGED), (size, size),
                                 interpolation=cv2.INTER_NEAREST) for i in items]) >= 1
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(images)[:, None], torch.from_numpy(masks.astype(np.float32))[:, None])
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True)
    set_determinism(0)
    model = ThreeLevelUNet(channels=channels)
    loss_fn = BCEDiceLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
    return len(dataset) * epochs / (time.perf_counter() - start)


def precision_pairs(pairs: int = 3, steps: int = 3, compile_setting: str = "false") -> int:
    """``--quick``: training steps at full width (256x256, batch 2) through the bundle's own pieces, the fp32 eager
    network (the bundle's default) against the fast path (``--precision auto``: bf16 where the CPU computes it
    natively; ``--compile`` as given), alternating; two copies of one network, each with its own optimizer; the
    first steps (compilation included) are not timed. Prints ``speedup=``."""
    import copy
    import statistics

    from workflows.machine.precision import AutocastInferer, choose_precision, compile_network

    torch.manual_seed(0)
    x, y = torch.rand(2, 1, 256, 256), (torch.rand(2, 1, 256, 256) > 0.5).float()
    networks = {"fp32": ThreeLevelUNet()}
    networks["fast"] = compile_network(copy.deepcopy(networks["fp32"]), compile_setting, "auto")
    inferers = {"fp32": AutocastInferer("fp32"), "fast": AutocastInferer("auto")}
    optimizers = {name: torch.optim.Adam(net.parameters(), 1e-4) for name, net in networks.items()}
    loss = BCEDiceLoss()

    def step(name: str) -> None:
        optimizers[name].zero_grad()
        loss(inferers[name](x, networks[name]), y).backward()
        optimizers[name].step()

    for name in networks:  # warm-up: compilation, oneDNN's first-call set-up
        for _ in range(2):
            step(name)
    compiled = getattr(networks["fast"], "_compiled_call_impl", None) is not None
    label = f"--precision auto ({choose_precision('auto')}{', compiled' if compiled else ''})"
    times: dict[str, list[float]] = {"fp32": [], "fast": []}
    for pair in range(pairs):
        for name in ("fp32", "fast"):
            started = time.perf_counter()
            for _ in range(steps):
                step(name)
            times[name].append((time.perf_counter() - started) / steps)
        print(f"pair {pair + 1}: fp32 eager {times['fp32'][-1]:.2f} s/step, {label} {times['fast'][-1]:.2f} s/step",
              flush=True)
    fp32, fast = statistics.median(times["fp32"]), statistics.median(times["fast"])
    print(f"median: fp32 eager {2 / fp32:.2f} images/s, {label} {2 / fast:.2f} images/s")
    print(f"speedup={statistics.median(a / b for a, b in zip(times['fp32'], times['fast'])):.2f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/bench_training")
    parser.add_argument("--full-slices", type=int, default=40, help="chunk size at full width (slow on a CPU)")
    parser.add_argument("--quick-slices", type=int, default=320, help="chunk size at the quickstart's size")
    parser.add_argument("--memory-only", action="store_true", help="only the peak memory of 4 chunks")
    parser.add_argument("--quick", action="store_true", help="only fp32 eager against --precision auto at full "
                                                             "width, 3 alternating pairs")
    parser.add_argument("--compile", default="false", help="with --quick: the fast path also compiled "
                                                           "(true, false, auto)")
    args = parser.parse_args()
    if args.quick:
        return precision_pairs(compile_setting=args.compile)
    work = Path(args.work)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    setups = [
        ("full width 256x256, batch 2", 256, args.full_slices, [64, 128, 256, 512], 2, 1e-4, 1),
        ("quickstart 128x128, channels 16-128, batch 4", 128, args.quick_slices, [16, 32, 64, 128], 4, 2e-3, 2),
    ]
    for title, size, chunk, channels, batch, lr, epochs in ([] if args.memory_only else setups):
        lists = make_lists(work, size, chunk)
        # the plain loop neither augments nor autocasts: the bundle runs with --augment false and fp32 here
        overrides = {"spatial_size": size, "network_def#channels": channels, "batch_size": batch, "learning_rate": lr,
                     "augment": False, "precision": "fp32"}
        bundle, plain = [], []
        for order in ("bundle first", "plain first"):  # twice, in both orders, so warm-up favours neither
            runs = [bundle, plain] if order == "bundle first" else [plain, bundle]
            for which in runs:
                if which is bundle:
                    rate, images = bundle_images_per_second(lists, work / f"ckpt_{size}_{time.time_ns()}", overrides, epochs)
                    bundle.append(rate)
                else:
                    plain.append(plain_images_per_second(lists, size, channels, batch, lr, epochs))
        print(f"{title}: {images} images per run; bundle trainer {', '.join(f'{r:.2f}' for r in bundle)} images/s, "
              f"plain loop {', '.join(f'{r:.2f}' for r in plain)} images/s; ratio of the means "
              f"{sum(bundle) / sum(plain):.3f}")

    lists = make_lists(work, 128, 40)  # 8 training volumes of 40 slices: 8 chunks
    ckpt = work / f"ckpt_chunks_{time.time_ns()}"
    workflow = ConfigWorkflow(config_file=TRAIN, workflow_type="train", run_id="training",
                              **{"dataset_dir": str(lists), "ckpt_dir": str(ckpt), "progress": False,
                                 "epochs_per_chunk": 1, "spatial_size": 128, "network_def#channels": [16, 32, 64, 128],
                                 "batch_size": 4})
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    log = json.loads((ckpt / "training_log.json").read_text())
    print(f"peak memory per chunk (MiB), 128x128, {len(log)} chunks of 40 slices: "
          + ", ".join(f"chunk {e['chunk']}: {e['peak_memory_mib']}" for e in log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
