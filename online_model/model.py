"""The PyTorch model: hashed embeddings, a small hidden layer and a growing softmax.

Each event's hashed features are summed into one embedding vector, which
makes a factorized linear model over the hashed space. That vector, joined
with the event's standardized numbers and missing-value flags, goes through
one ReLU layer. The output logits read both the joined vector and the hidden
layer. The output layer has one row per known label and grows when a new
label arrives.

The running statistics of the numeric fields (count, mean and sum of squared
deviations, per field) are buffers of the model, so they are saved and
restored with the weights.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from online_model.featurize import ModelInput

logger = logging.getLogger(__name__)


class HashedSoftmaxModel(nn.Module):
    """Softmax classifier over hashed features and standardized numbers."""

    numeric_count: torch.Tensor
    numeric_mean: torch.Tensor
    numeric_m2: torch.Tensor
    label_counts: torch.Tensor

    def __init__(
        self,
        hash_buckets: int,
        embedding_dim: int,
        numeric_fields: int,
        hidden_units: int,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.embedding = nn.Parameter(torch.empty(hash_buckets, embedding_dim))
        nn.init.normal_(self.embedding, std=0.01, generator=generator)
        features = embedding_dim + 2 * numeric_fields
        self.hidden = nn.Linear(features, hidden_units)
        nn.init.kaiming_uniform_(
            self.hidden.weight, nonlinearity="relu", generator=generator
        )
        nn.init.zeros_(self.hidden.bias)
        self.output_weight = nn.Parameter(torch.zeros(0, features + hidden_units))
        self.output_bias = nn.Parameter(torch.zeros(0))
        self.register_buffer("label_counts", torch.zeros(0, dtype=torch.float64))
        self.register_buffer(
            "numeric_count", torch.zeros(numeric_fields, dtype=torch.float64)
        )
        self.register_buffer(
            "numeric_mean", torch.zeros(numeric_fields, dtype=torch.float64)
        )
        self.register_buffer(
            "numeric_m2", torch.zeros(numeric_fields, dtype=torch.float64)
        )

    @property
    def label_count(self) -> int:
        """The number of output classes."""
        return int(self.output_bias.shape[0])

    def forward(self, batch: ModelInput) -> torch.Tensor:
        """Return the logits, ``[events, labels]``."""
        embedded = F.embedding(batch.tokens, self.embedding, sparse=True)
        embedded = embedded * batch.token_weights.unsqueeze(1)
        summed = torch.zeros(
            batch.size, self.embedding_dim, device=embedded.device, dtype=embedded.dtype
        )
        summed = summed.index_add(0, batch.token_events, embedded)
        features = torch.cat([summed, batch.dense], dim=1)
        hidden = F.relu(self.hidden(features))
        return F.linear(
            torch.cat([features, hidden], dim=1), self.output_weight, self.output_bias
        )

    def grow_output(self, new_labels: int) -> tuple[nn.Parameter, nn.Parameter]:
        """Add ``new_labels`` output rows (zero weights); return the new parameters.

        Existing rows keep their values. The caller moves optimizer state
        from the old parameters to the new ones.
        """
        weight = self.output_weight.detach()
        bias = self.output_bias.detach()
        self.output_weight = nn.Parameter(
            torch.cat([weight, weight.new_zeros(new_labels, weight.shape[1])])
        )
        self.output_bias = nn.Parameter(torch.cat([bias, bias.new_zeros(new_labels)]))
        self.label_counts = torch.cat(
            [self.label_counts, self.label_counts.new_zeros(new_labels)]
        )
        return self.output_weight, self.output_bias

    def update_numeric_statistics(self, transformed: torch.Tensor) -> None:
        """Merge a batch of transformed numbers into the running statistics.

        Uses the parallel form of Welford's algorithm per field; NaN (a
        missing value) is left out of that field's count.
        """
        if transformed.shape[1] == 0:
            return
        present = ~torch.isnan(transformed)
        batch_count = present.sum(dim=0).to(torch.float64)
        values = torch.where(present, transformed, torch.zeros_like(transformed))
        batch_mean = values.sum(dim=0) / batch_count.clamp(min=1)
        deviations = torch.where(
            present, transformed - batch_mean, torch.zeros_like(transformed)
        )
        batch_m2 = (deviations * deviations).sum(dim=0)

        count = self.numeric_count
        total = count + batch_count
        delta = batch_mean - self.numeric_mean
        share = batch_count / total.clamp(min=1)
        self.numeric_mean.add_(delta * share)
        self.numeric_m2.add_(batch_m2 + delta * delta * count * share)
        self.numeric_count.copy_(total)
