"""The demo's model: a small 3-D CNN that finds a bright blob in a noisy volume.

FLIP apps provide ``get_model()``; the server builds the initial global model with it, and the
trainer, validator and evaluator build the same architecture to load weights into.
"""

from __future__ import annotations

import torch
from torch import nn


class BlobFinder(nn.Module):
    """Two 3x3x3 convolutions on a 2x-averaged volume, a global max, and a linear classifier.

    The global max makes the answer "is there a blob anywhere", whatever its position.
    """

    def __init__(self, channels: int = 16, num_classes: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.AvgPool3d(2),
            nn.Conv3d(1, channels, kernel_size=3, padding=1),
            nn.LeakyReLU(0.1),
            nn.Conv3d(channels, channels, kernel_size=3, padding=1),
            nn.LeakyReLU(0.1),
            nn.AdaptiveMaxPool3d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def get_model() -> nn.Module:
    """A freshly initialised model (the same initial weights every time)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        return BlobFinder()
    finally:
        torch.random.set_rng_state(generator_state)
