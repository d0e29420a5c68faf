"""Discriminators on features (domain classifiers)."""
from __future__ import annotations

from torch import nn


class DomainClassifier(nn.Module):
    """MLP from features to one domain logit (source = 1, target = 0), as in DANN."""

    def __init__(self, in_dim: int, hidden: int = 256, dropout: float = 0.5):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(self, f):
        return self.net(f).squeeze(1)
