"""Several networks of one architecture as one: the mean of their logits (a vote of networks trained apart, e.g. with
two seeds). ``build_network(..., members=N)`` builds one; its state_dict holds each member's under ``members.<i>.``,
so a model file of N members loads strictly like any other (:func:`workflows.engine.model_file.combine_model_files`
writes one from N model files of the same settings)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["MeanOfNetworks"]


class MeanOfNetworks(torch.nn.Module):
    """``forward(x)``: the mean of ``members``' logits for ``x``."""

    def __init__(self, members: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"a mean of networks needs at least 2 members, got {len(members)}.")
        self.members = torch.nn.ModuleList(members)
        first = members[0]  # what load_weights' hints read
        for name in ("in_channels", "out_channels", "channels"):
            if hasattr(first, name):
                setattr(self, name, getattr(first, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.members[0](x)
        for member in self.members[1:]:
            out = out + member(x)
        return out / len(self.members)
