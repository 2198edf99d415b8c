"""Small models for reliability tests, importable as ``--arch toy_models:NAME`` (tests/ is on sys.path)."""

import torch
from torch import nn


class DataDependent(nn.Module):
    """Takes a different branch depending on the input's values: torch.export cannot capture it."""

    input_shape = (1, 3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:
            return y.relu()
        return -y


def data_dependent() -> nn.Module:
    return DataDependent()


data_dependent.input_shape = (1, 3, 8, 8)
