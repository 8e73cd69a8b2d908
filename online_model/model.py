"""The PyTorch model: hashed embeddings, an optional hidden layer and a growing softmax.

Each event's hashed features are summed into one embedding vector, which
makes a factorized linear model over the hashed space. That vector is
joined with the event's standardized numbers and missing-value flags. With
``hidden_units`` above 0 the joined vector also goes through one ReLU layer,
and the output logits read both; the default has no hidden layer. The
output layer has one row per known label and grows when a new label
arrives.

The running statistics of the numeric fields (count, mean and sum of squared
deviations, per field) are buffers of the model, so they are saved and
restored with the weights.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from online_model.featurize import ModelInput

logger = logging.getLogger(__name__)

# Marking used buckets beats sorting the tokens up to about this many buckets
# per token: still ahead at 32 (270 against 410 microseconds for 8,000 tokens),
# behind at 131 (CPU, one thread, torch 2.13).
MARK_BUCKETS_PER_TOKEN = 32


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
        # False for a state saved before new output rows started as unit
        # vectors, so that it continues as that code would have.
        self.unit_rows = True
        self.embedding = nn.Parameter(torch.empty(hash_buckets, embedding_dim))
        nn.init.normal_(self.embedding, std=0.01, generator=generator)
        features = embedding_dim + 2 * numeric_fields
        with warnings.catch_warnings():
            # Without hidden units the layer's tensors are empty, and torch
            # warns that initializing them does nothing.
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
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

    def embedding_rows(
        self, tokens: torch.Tensor, trainable: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the distinct tokens, each token's position among them, and their rows.

        With ``trainable`` the rows are a leaf tensor that collects the
        gradient, which :class:`EmbeddingOptimizer` applies to just those rows.
        """
        distinct, positions = distinct_tokens(tokens, self.embedding.shape[0])
        rows = self.embedding.detach().index_select(0, distinct)
        return distinct, positions, rows.requires_grad_(trainable)

    def forward(
        self,
        batch: ModelInput,
        rows: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the logits, ``[events, labels]``.

        ``rows`` and ``positions`` come from :meth:`embedding_rows`; without
        them the rows are looked up here.
        """
        if rows is None or positions is None:
            _, positions, rows = self.embedding_rows(batch.tokens, trainable=False)
        summed = _WeightedBagSum.apply(rows, positions, batch)
        features = torch.cat([summed, batch.dense], dim=1)
        if self.hidden.out_features:
            hidden = F.relu(self.hidden(features))
            features = torch.cat([features, hidden], dim=1)
        return F.linear(features, self.output_weight, self.output_bias)

    def grow_output(self, new_labels: int) -> tuple[nn.Parameter, nn.Parameter]:
        """Add ``new_labels`` output rows; return the new parameters.

        Label ``k``'s row starts as the unit vector of embedding column
        ``k % embedding_dim``, and its bias at zero. Existing rows keep their
        values. The caller moves optimizer state from the old parameters to
        the new ones.
        """
        weight = self.output_weight.detach()
        bias = self.output_bias.detach()
        # All-zero rows give the embedding no gradient until the output
        # weights move away from zero. A unit vector makes each label start as
        # a linear model on one embedding column, shared with other labels
        # where labels outnumber the columns. On the survey, with the learning
        # rate lowered from 0.05 to 0.04 as well, top-1 rose from 0.437 to
        # 0.451 over the first 10,240 events and from 0.487 to 0.492 over the
        # whole stream (benchmarks/learner_only.py).
        rows = weight.new_zeros(new_labels, weight.shape[1])
        if self.unit_rows:
            labels = torch.arange(new_labels, device=weight.device)
            rows[labels, (labels + weight.shape[0]) % self.embedding_dim] = 1.0
        self.output_weight = nn.Parameter(torch.cat([weight, rows]))
        self.output_bias = nn.Parameter(torch.cat([bias, bias.new_zeros(new_labels)]))
        self.label_counts = torch.cat(
            [self.label_counts, self.label_counts.new_zeros(new_labels)]
        )
        return self.output_weight, self.output_bias

    def update_numeric_statistics(self, transformed: torch.Tensor) -> int:
        """Merge a batch of transformed numbers into the running statistics.

        Uses the parallel form of Welford's algorithm per field, and NaN (a
        missing value) is left out of that field's count. A field whose
        statistics would overflow (values near the float64 limit) keeps its
        previous statistics. Returns the number of such fields.
        """
        if transformed.shape[1] == 0:
            return 0
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
        mean = self.numeric_mean + delta * share
        m2 = self.numeric_m2 + batch_m2 + delta * delta * count * share
        finite = torch.isfinite(mean) & torch.isfinite(m2)
        self.numeric_mean.copy_(torch.where(finite, mean, self.numeric_mean))
        self.numeric_m2.copy_(torch.where(finite, m2, self.numeric_m2))
        self.numeric_count.copy_(torch.where(finite, total, count))
        return int((~finite).sum())


class _WeightedBagSum(torch.autograd.Function):
    """Autograd function: each event's embedding rows times their token weights, summed.

    The forward pass is ``embedding_bag``. The backward pass adds each
    event's gradient, times the weight, to the rows of its tokens with
    ``index_add``, because ``embedding_bag``'s own backward pass sorts the
    tokens first. Without that sort, test-then-train on the job postings ran
    about 6% faster (CPU, one thread, torch 2.13).
    """

    @staticmethod
    def forward(
        ctx: Any, rows: torch.Tensor, positions: torch.Tensor, batch: ModelInput
    ) -> torch.Tensor:
        ctx.save_for_backward(positions, batch.token_events, batch.token_weights)
        ctx.row_count = rows.shape[0]
        return F.embedding_bag(
            positions,
            rows,
            batch.token_offsets,
            mode="sum",
            per_sample_weights=batch.token_weights,
        )

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        positions, events, weights = ctx.saved_tensors
        per_token = grad.index_select(0, events) * weights.unsqueeze(1)
        rows_grad = grad.new_zeros(ctx.row_count, grad.shape[1])
        return rows_grad.index_add_(0, positions, per_token), None, None


def distinct_tokens(
    tokens: torch.Tensor, buckets: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``torch.unique(tokens, return_inverse=True)`` for ids below ``buckets``.

    Where the buckets are few against the tokens, it marks the buckets in use
    instead of sorting the tokens: 124 against 414 microseconds for 8,000
    tokens in 65,536 buckets (CPU, one thread, torch 2.13). The result is the same.
    """
    if buckets > MARK_BUCKETS_PER_TOKEN * tokens.shape[0]:
        distinct, positions = torch.unique(tokens, return_inverse=True)
        return distinct, positions
    used = torch.zeros(buckets, dtype=torch.bool, device=tokens.device)
    used[tokens] = True
    distinct = used.nonzero().squeeze(1)
    slot = torch.empty(buckets, dtype=torch.int64, device=tokens.device)
    slot[distinct] = torch.arange(distinct.shape[0], device=tokens.device)
    return distinct, slot[tokens]


class EmbeddingOptimizer:
    """Adagrad or lazy Adam on the embedding rows a batch touched.

    Only the touched rows and their optimizer state are read and written, so
    a step costs the same whatever the number of hash buckets. The update
    rules are those of ``torch.optim.Adagrad`` (no learning-rate decay, zero
    initial accumulator) and ``torch.optim.SparseAdam`` (torch 2.13).
    """

    ADAGRAD_EPSILON = 1e-10
    ADAM_BETAS = (0.9, 0.999)
    ADAM_EPSILON = 1e-8

    def __init__(
        self, kind: str, learning_rate: float, embedding: torch.Tensor
    ) -> None:
        self.kind = kind
        self.learning_rate = learning_rate
        self.steps = 0
        names = ("sum",) if kind == "adagrad" else ("exp_avg", "exp_avg_sq")
        self.state = {name: torch.zeros_like(embedding.detach()) for name in names}

    def step(
        self, embedding: torch.Tensor, distinct: torch.Tensor, grad: torch.Tensor
    ) -> None:
        """Update the rows ``distinct`` of ``embedding`` by their gradient ``grad``.

        ``distinct`` must not repeat a row.
        """
        self.steps += 1
        with torch.no_grad():
            if self.kind == "adagrad":
                total = self.state["sum"].index_select(0, distinct).addcmul_(grad, grad)
                self.state["sum"].index_copy_(0, distinct, total)
                scale = total.sqrt().add_(self.ADAGRAD_EPSILON)
                embedding.index_add_(
                    0, distinct, grad / scale, alpha=-self.learning_rate
                )
                return
            beta1, beta2 = self.ADAM_BETAS
            first = self.state["exp_avg"].index_select(0, distinct)
            first.mul_(beta1).add_(grad, alpha=1 - beta1)
            second = self.state["exp_avg_sq"].index_select(0, distinct)
            second.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            self.state["exp_avg"].index_copy_(0, distinct, first)
            self.state["exp_avg_sq"].index_copy_(0, distinct, second)
            correction1 = 1 - beta1**self.steps
            correction2 = 1 - beta2**self.steps
            scale = second.sqrt().add_(self.ADAM_EPSILON)
            step_size = self.learning_rate * math.sqrt(correction2) / correction1
            embedding.index_add_(0, distinct, first / scale, alpha=-step_size)
