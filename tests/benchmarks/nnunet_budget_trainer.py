"""nnU-Net v2's own trainer held to a training-time budget on the CPU: the peer benchmark's one variant.

Not imported by this project: :mod:`tests.benchmarks.bench_peers` copies this file into the ``nnunetv2`` package of
nnU-Net's own virtual environment (nnU-Net finds trainers there by class name, ``-tr nnUNetTrainer_CPUBudget``).

Why a variant: nnU-Net's default trainer runs 1000 epochs of 250 iterations and decays its poly learning rate over
all 1000; on 2 CPU cores one such epoch of the ``2d`` configuration takes longer than the whole budget, so a run cut
by time would stop before its first checkpoint and at the initial learning rate. This variant changes only the
schedule's length: epochs of ``NNUNET_ITERATIONS_PER_EPOCH`` iterations (default 5: its 2d plan here takes batches
of 49 slices; 2 validation iterations), the poly schedule fitted to the epochs that ``NNUNET_BUDGET_MINUTES``
(wall-clock training time) holds once the first epoch is timed, and a stop when the next epoch would not fit. Network, plans, preprocessing, augmentation, loss
(Dice + CE with deep supervision) and optimiser are nnU-Net's own. The final validation is skipped: the benchmark
predicts the held-out patients itself.

Run it as nnU-Net's own commands with this trainer: ``python -m
nnunetv2.training.nnUNetTrainer.variants.nnUNetTrainer_CPUBudget train|predict <nnUNetv2_train or nnUNetv2_predict
arguments>``. nnU-Net finds a trainer by importing every module of its trainer package, and some of them import timm
and through it torchvision, whose PyPI build is made for the CUDA torch and does not load beside the CPU build; so
these entry points hand nnU-Net this class directly instead of searching.
"""

import os
import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_CPUBudget(nnUNetTrainer):  # noqa: N801 (nnU-Net's naming: trainers are found by class name)
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # nnU-Net records these arguments by name
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_iterations_per_epoch = int(os.environ.get("NNUNET_ITERATIONS_PER_EPOCH", "5"))
        self.num_val_iterations_per_epoch = 2
        self.budget_seconds = float(os.environ["NNUNET_BUDGET_MINUTES"]) * 60

    def run_training(self):
        self.on_train_start()
        started = time.perf_counter()
        while self.current_epoch < self.num_epochs:
            epoch_started = time.perf_counter()
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = [self.train_step(next(self.dataloader_train)) for _ in range(self.num_iterations_per_epoch)]
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                outputs = [self.validation_step(next(self.dataloader_val))
                           for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(outputs)
            self.on_epoch_end()
            epoch_seconds = time.perf_counter() - epoch_started
            if self.current_epoch == 1:  # the poly schedule decays over the epochs the budget holds
                self.num_epochs = max(1, int(self.budget_seconds // epoch_seconds))
                self.lr_scheduler.max_steps = self.num_epochs
                self.print_to_log_file(f"budget {self.budget_seconds / 60:.1f} min: {self.num_epochs} epoch(s) of "
                                       f"{self.num_iterations_per_epoch} iterations ({epoch_seconds:.0f} s each)")
            if time.perf_counter() - started + epoch_seconds > self.budget_seconds:
                break
        self.on_train_end()

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("final validation skipped: the benchmark predicts the held-out patients")


def _main() -> None:
    import sys

    command = sys.argv.pop(1)
    if command == "train":
        import nnunetv2.run.run_training as entry
        entry.recursive_find_trainer_class_by_name = lambda name: nnUNetTrainer_CPUBudget
        entry.run_training_entry()
    elif command == "predict":
        import nnunetv2.inference.predict_from_raw_data as entry
        entry.recursive_find_trainer_class_by_name = lambda name: nnUNetTrainer_CPUBudget
        entry.predict_entry_point()
    else:
        raise SystemExit(f"usage: python -m ...nnUNetTrainer_CPUBudget train|predict ..., got {command!r}")


if __name__ == "__main__":
    _main()
