"""How the network runs at inference: the float precision and the memory layout, chosen by what the machine has.

bf16 autocast is fast only where the hardware computes in bf16 (CPUs with AVX-512 BF16 or AMX, CUDA GPUs with
bf16); elsewhere it is emulated and much slower, so ``auto`` picks it only there. channels_last is the layout
oneDNN's convolutions prefer on CPUs.
"""

from __future__ import annotations

import logging
import os
import shutil
from functools import lru_cache
from pathlib import Path

import torch
from monai.inferers import SimpleInferer

from workflows.machine.settings import PRECISIONS, compile_setting, flag

__all__ = ["PRECISIONS", "cpu_model", "native_bf16", "choose_precision", "compile_network", "InferenceNetwork", "AutocastInferer"]

logger = logging.getLogger("liver_ct.precision")



@lru_cache(maxsize=None)
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags known, so no bf16 claimed
        return frozenset()
    line = next((l for l in text.splitlines() if l.startswith("flags")), "")
    return frozenset(line.split(":", 1)[-1].split())


def cpu_model() -> str:
    """The CPU's model name as the system reports it (``/proc/cpuinfo``), with the flags that decide precision
    (AVX-512 BF16, AMX): figures name the machine they were measured on."""
    import platform

    try:
        text = Path("/proc/cpuinfo").read_text()
        name = next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name")), "")
    except OSError:
        name = ""
    extras = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in _cpu_flags()]
    return (name or platform.processor() or platform.machine()) + (f" ({', '.join(extras)})" if extras else "")


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes bf16 natively (CPU: AVX-512 BF16 or AMX; CUDA: the GPU says so)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def choose_precision(setting: str, device: torch.device | str = "cpu") -> str:
    """``fp32`` or ``bf16`` for ``setting`` (``auto``: bf16 where native, else fp32)."""
    if setting not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {setting!r}.")
    if setting == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if setting == "bf16" and not native_bf16(device):
        logger.warning(f"--precision bf16 on a device without native bf16 ({torch.device(device)}): it is emulated "
                       "and slower than fp32 there.")
    return setting


def compile_network(network: torch.nn.Module, setting: bool | str = False, precision: str = "fp32",
                    device: torch.device | str = "cpu") -> torch.nn.Module:
    """``network`` compiled in place by ``torch.compile`` (``nn.Module.compile``: its state_dict keys stay plain,
    no ``_orig_mod.``, so checkpoints load anywhere) with inductor's layout optimisation off, which made compiled
    training slower than eager on CPUs. ``setting``: true, false, or ``auto`` (compile where the training runs in
    fp32 on a CPU: with bf16 autocast, compiling gained nothing measurable). The first steps pay the compilation
    (about 28 s at full width on 2 cores). Without a C++ compiler it says so in one line and stays eager."""
    device = torch.device(device)
    wanted = compile_setting(setting)
    if wanted == "auto":
        wanted = device.type == "cpu" and choose_precision(precision, device) == "fp32"
    if not wanted:
        logger.info("training network not compiled (eager)")
        return network
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")):
        logger.warning("--compile: no C++ compiler (g++, c++ or clang++) on PATH, which torch.compile needs on a CPU; "
                       "training runs eager. Install one (Debian: apt install g++) or leave --compile false.")
        return network
    import torch._inductor.config as inductor

    inductor.layout_optimization = False
    network.compile()
    logger.info("training network compiled (torch.compile, inductor, layout optimisation off)")
    return network


class InferenceNetwork(torch.nn.Module):
    """``network`` run for inference in ``precision`` (``auto``, ``fp32``, ``bf16``: autocast) and, with
    ``channels_last``, in the channels-last memory layout; outputs are float32. The weights stay ``network``'s
    (load them there)."""

    def __init__(self, network: torch.nn.Module, precision: str = "fp32", channels_last: bool | str = False,
                 device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.network = network
        self.precision = choose_precision(str(precision), device)
        self.channels_last = flag(channels_last, "channels_last")
        if self.channels_last:
            self.network.to(memory_format=torch.channels_last)
        logger.info(f"inference in {self.precision}{', channels_last' if self.channels_last else ''} "
                    f"({'native bf16' if native_bf16(device) else 'no native bf16'} on {torch.device(device)})")

    def use(self, network: torch.nn.Module) -> None:
        """Run ``network`` (a TorchScript export of the same weights) in place of the one given."""
        self.network = network.to(memory_format=torch.channels_last) if self.channels_last else network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.network(x)
        return out.float().contiguous()


class AutocastInferer(SimpleInferer):
    """MONAI's ``SimpleInferer`` run in ``precision`` (``auto``, ``fp32``, ``bf16`` autocast), outputs float32, for
    the trainer: MONAI's own ``amp`` autocasts on CUDA only. The network and its state_dict stay plain fp32, so
    checkpoints load anywhere."""

    def __init__(self, precision: str = "fp32", device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.precision = choose_precision(str(precision), device)
        logger.info(f"training forward passes in {self.precision}")

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        with torch.autocast(device_type=inputs.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = super().__call__(inputs, network, *args, **kwargs)
        return out.float()
