"""Label recency: event-by-event label frequencies mixed into micro-batch scores.

The model's weights change once per micro-batch, so every event of a batch is
scored with weights that have seen none of the batch. A learner that updates
after every event also follows the labels of the last few events. That
matters where labels come in runs (Electricity's price direction, a burst of
postings for one role), and at a cold start, when the model has no label
yet. This module gives the micro-batch learner that part back.

It keeps exponentially weighted label frequencies at a few rates, updated in
stream order after each labelled event, and mixes them into the model's
probabilities. How much to trust them is learned online as well: a Bayesian
mixture over a small grid of (rate, share) pairs, whose log-weights are the
discounted log-likelihoods each pair gave the true labels so far. An event's
prediction only uses the labels of events before it, so scoring stays
test-then-train. The model's training is unchanged; this only changes scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Step sizes of the frequencies: memories of about 20 events, 2 events, and
# mostly the last label.
RATES = (0.05, 0.5, 0.9)
# Share of the recency frequencies in each pair's mixture.
SHARES = (0.02, 0.1, 0.3, 0.5, 0.7, 0.9)
# Discount per event of the pairs' log-likelihoods: a memory of about 100
# events. It beat 0.998 on Electricity and aijobs and tied elsewhere
# (benchmarks/learner_only.py).
DISCOUNT = 0.99
# The lowest probability a pair's log-likelihood counts.
FLOOR = 1e-15
# Events per chunk of the sequential update. The running sums scale a label
# by (1 - rate) ** -t, which must stay below float64's 1.8e308: at most
# 10 ** 256 at rate 0.9.
CHUNK = min(256, int(300 / -math.log10(1.0 - max(RATES))))
# From this many labels on, a chunk is mixed without the [rates, events,
# labels] tensors. Timed on one CPU thread with torch 2.13, a chunk of 256
# events took 0.49 ms with them and 0.92 ms without at 27 labels. At 96
# labels it took 1.06 and 0.97 ms, at 290 3.77 and 1.21 ms, and at 2,000
# about 38 and 5 ms.
SPARSE_FROM_LABELS = 96
# At most this many cells in a chunk's [rates, events, labels] tensors, so
# that a stream with many labels takes smaller chunks (about 8 MB each).
CHUNK_CELLS = 1 << 20

_PAIRS = [(rate, share) for rate in RATES for share in SHARES]


class LabelRecency:
    """Recency frequencies and the learned weights of the (rate, share) pairs."""

    def __init__(self) -> None:
        self.frequencies = torch.zeros(len(RATES), 0, dtype=torch.float64)
        self.log_weights = torch.zeros(len(_PAIRS), dtype=torch.float64)
        self._model_share = torch.tensor(
            [1.0 - share for _, share in _PAIRS], dtype=torch.float64
        )
        self._rate_shares = torch.tensor(
            [
                [share if pair_rate == rate else 0.0 for pair_rate, share in _PAIRS]
                for rate in RATES
            ],
            dtype=torch.float64,
        )
        self._rates = torch.tensor(RATES, dtype=torch.float64).unsqueeze(1)
        self._keep = 1.0 - self._rates
        self._shares = torch.tensor(SHARES, dtype=torch.float64)
        self._kernels: dict[int, _Kernel] = {}

    def resize(self, labels: int) -> None:
        """Give the frequencies one column per label, padding with zeros."""
        missing = labels - self.frequencies.shape[1]
        if missing > 0:
            padding = self.frequencies.new_zeros(len(RATES), missing)
            self.frequencies = torch.cat([self.frequencies, padding], dim=1)

    def mix(self, model: torch.Tensor, escape: float) -> torch.Tensor:
        """Mix the current frequencies into ``model`` (``[events, labels]``).

        ``model`` sums to ``1 - escape`` per row; so does the result where a
        label has been seen. Nothing is learned.

        NOTE: a saved version keeps the frequencies it had when it was saved,
        so a version serving long after that mixes in labels that are no
        longer the latest. Its weight on them was learned for fresh ones.
        """
        if model.shape[0] == 0 or model.shape[1] == 0:
            return model
        weights = torch.softmax(self.log_weights, dim=0)
        model_share = weights @ self._model_share
        rate_shares = self._rate_shares @ weights
        probabilities = model.double()
        recent = _normalized(self.frequencies[:, : model.shape[1]])
        # A rate that has seen no label leaves its share to the model.
        empty = recent.sum(dim=1) == 0
        mixed = (model_share + rate_shares[empty].sum()) * probabilities + (
            1.0 - escape
        ) * (rate_shares[~empty] @ recent[~empty])
        return mixed.to(model.dtype)

    def mix_sequence(
        self, model: torch.Tensor, targets: torch.Tensor, escape: torch.Tensor
    ) -> torch.Tensor:
        """Score labelled events in stream order and learn from their labels.

        ``model`` contains the model's probabilities, ``[events, known labels]``,
        each row summing to ``1 - escape`` of its event, and ``targets`` each
        event's label index, where an index at or past the known labels is a
        label that is new in this batch. Returns ``[events, labels]`` over
        every label in ``targets``. An event's row uses only the labels of
        the events before it. While the model has no label, the slower
        frequencies stand in for it.
        """
        labels = max(model.shape[1], int(targets.max()) + 1 if len(targets) else 0)
        self.resize(labels)
        rows = []
        size = max(1, min(CHUNK, CHUNK_CELLS // (len(RATES) * max(labels, 1))))
        for start in range(0, len(targets), size):
            rows.append(
                self._chunk(
                    model[start : start + size],
                    targets[start : start + size],
                    labels,
                    escape[start : start + size],
                )
            )
        return torch.cat(rows) if rows else model.new_zeros(0, labels)

    def _chunk(
        self,
        model: torch.Tensor,
        targets: torch.Tensor,
        labels: int,
        escape: torch.Tensor,
    ) -> torch.Tensor:
        """Return one chunk's mixed scores, ``[events, labels]``, and learn
        from its labels, as :meth:`mix_sequence` describes."""
        count = len(targets)
        known = model.shape[1]
        kernel = self._kernel(count)
        frequencies = self.frequencies
        # The frequencies before event i, at each rate, are the carried state
        # decayed, keep ** i * frequencies, plus the chunk's earlier labels:
        # label t weighs kernel.earlier[rate, i, t]. Their sums over labels:
        row_sums = (
            kernel.state_decay * frequencies.sum(dim=1, keepdim=True)
            + kernel.earlier_sums
        )
        if labels < SPARSE_FROM_LABELS or known == 0 or bool((row_sums < FLOOR).any()):
            # Few labels, the first labels of a stream, or a state saved
            # without recency. The dense form also floors a sum below FLOOR,
            # which only a damaged state has, as a stream keeps each rate's
            # sum at or above that rate.
            return self._dense_chunk(model, targets, labels, escape)
        remaining = (1.0 - escape.double()).unsqueeze(1)
        padded = _padded(model, labels)

        # Each event's own label: its frequency before the event, [rates, events].
        same = targets.unsqueeze(1) == targets.unsqueeze(0)
        truth = kernel.state_decay * frequencies[:, targets]
        truth = truth + (kernel.earlier * same).sum(dim=2)
        recent_truth = remaining * (truth / row_sums).T
        weights = self._learn_weights(kernel, padded, recent_truth, targets, known)

        # Mix the normalized frequencies with each event's rate shares without
        # building the [rates, events, labels] tensor: the carried state is a
        # matrix product and the chunk's labels are added by column.
        scale = (weights @ self._rate_shares.T) / row_sums.T
        recent = (scale * kernel.state_decay.T) @ frequencies
        earlier = torch.einsum("ir,rit->it", scale, kernel.earlier)
        recent.index_add_(1, targets, earlier)
        mixed = (weights @ self._model_share).unsqueeze(1) * padded + remaining * recent

        updated = frequencies * kernel.chunk_decay
        self.frequencies = updated.index_add_(1, targets, kernel.last_weights)
        return mixed.to(model.dtype)

    def _dense_chunk(
        self,
        model: torch.Tensor,
        targets: torch.Tensor,
        labels: int,
        escape: torch.Tensor,
    ) -> torch.Tensor:
        """Do what :meth:`_chunk` does with [rates, events, labels] tensors.

        It is faster with few labels, and only this form handles a rate that
        has seen no label yet or whose frequencies sum to less than FLOOR.
        """
        count = len(targets)
        known = model.shape[1]
        kernel = self._kernel(count)
        observed = torch.nn.functional.one_hot(targets, labels).double()
        # Frequencies before each event, [rates, events, labels]: the carried
        # state decayed, plus the decayed labels of the chunk's earlier events.
        # The labels' part is a running sum of the labels scaled by
        # (1 - rate) ** -t, shifted by one event and scaled back.
        before = kernel.state_decay.unsqueeze(2) * self.frequencies.unsqueeze(1)
        sums = torch.cumsum(kernel.growth.unsqueeze(2) * observed, dim=1)
        before[:, 1:] += kernel.shrink[:, 1:].unsqueeze(2) * sums[:, :-1]
        self.frequencies = self._keep * before[:, -1] + self._rates * observed[-1]
        recent = _normalized(before)
        remaining = (1.0 - escape.double()).unsqueeze(1)
        if known == 0:
            padded = remaining * recent[0]
        else:
            padded = _padded(model, labels)
            if bool((before.sum(dim=2) == 0).any()):
                recent = _or_model(recent, padded / remaining.clamp(min=FLOOR))

        truth = targets.view(1, count, 1).expand(len(RATES), count, 1)
        recent_truth = remaining * recent.gather(2, truth).squeeze(2).T
        weights = self._learn_weights(kernel, padded, recent_truth, targets, known)
        mixed = (weights @ self._model_share).unsqueeze(1) * padded
        rate_shares = weights @ self._rate_shares.T
        mixed += remaining * (rate_shares.T.unsqueeze(2) * recent).sum(dim=0)
        return mixed.to(model.dtype)

    def _learn_weights(
        self,
        kernel: _Kernel,
        padded: torch.Tensor,
        recent_truth: torch.Tensor,
        targets: torch.Tensor,
        known: int,
    ) -> torch.Tensor:
        """Return each event's pair weights, ``[events, pairs]``, and learn from
        the chunk's labels.

        ``recent_truth`` contains the share of each event's label in the
        normalized frequencies before it, times the event's remaining
        probability, ``[events, rates]``.
        """
        count = len(targets)
        # Log-likelihood of each pair on each event whose label the model
        # knew. Events of labels new in this batch are left out, since the
        # model could not have predicted them and would be blamed unfairly.
        model_truth = padded.gather(1, targets.unsqueeze(1))
        pair_truth = (1.0 - self._shares) * model_truth.unsqueeze(2)
        pair_truth = pair_truth + self._shares * recent_truth.unsqueeze(2)
        pair_truth = pair_truth.reshape(count, len(_PAIRS))
        counted = (targets < known).double().unsqueeze(1)
        scores = torch.log(pair_truth.clamp(min=FLOOR)) * counted
        log_weights = kernel.weight_decay.unsqueeze(1) * self.log_weights
        score_sums = torch.cumsum(kernel.score_growth.unsqueeze(1) * scores, dim=0)
        log_weights[1:] += kernel.score_shrink[1:].unsqueeze(1) * score_sums[:-1]
        self.log_weights = DISCOUNT * log_weights[-1] + scores[-1]
        # Keep the log-weights near zero; only their differences matter.
        self.log_weights -= self.log_weights.max()
        return torch.softmax(log_weights, dim=1)

    def _kernel(self, count: int) -> _Kernel:
        """Return the decay factors for a chunk of ``count`` events."""
        cached = self._kernels.get(count)
        if cached is not None:
            return cached
        positions = torch.arange(count, dtype=torch.float64)
        keep = torch.tensor([1.0 - rate for rate in RATES], dtype=torch.float64)
        keep = keep.unsqueeze(1)
        rates = 1.0 - keep
        # Events between t and i, i - 1 - t, for every event i and earlier t.
        gaps = positions.unsqueeze(1) - 1.0 - positions.unsqueeze(0)
        earlier = torch.where(
            gaps >= 0, rates.unsqueeze(2) * keep.unsqueeze(2) ** gaps.clamp(min=0), 0.0
        )
        kernel = _Kernel(
            growth=keep**-positions,
            shrink=rates * keep ** (positions - 1.0),
            earlier=earlier,
            earlier_sums=earlier.sum(dim=2),
            state_decay=keep**positions,
            chunk_decay=keep**count,
            last_weights=rates * keep ** (count - 1.0 - positions),
            score_growth=DISCOUNT**-positions,
            score_shrink=DISCOUNT ** (positions - 1.0),
            weight_decay=DISCOUNT**positions,
        )
        if len(self._kernels) >= 4:
            self._kernels.clear()
        self._kernels[count] = kernel
        return kernel


@dataclass(frozen=True)
class _Kernel:
    """Decay factors for one chunk length.

    At rate r, the label of event t weighs r * (1 - r) ** (i - 1 - t) in the
    frequencies before event i: ``earlier[r, i, t]``, zero where t >= i, and
    ``earlier_sums`` its sums over t. The dense form computes the same as
    ``growth[r, t]`` = (1 - r) ** -t inside a running sum times
    ``shrink[r, i]`` = r * (1 - r) ** (i - 1). ``state_decay[r, i]`` weighs the carried
    state before event i, and ``chunk_decay[r]`` after the chunk, where
    ``last_weights[r, t]`` weighs event t's label. ``score_growth``,
    ``score_shrink`` and ``weight_decay`` do the same for the log-weights
    with DISCOUNT, as a running sum scaled by DISCOUNT ** -t and back.
    """

    growth: torch.Tensor
    shrink: torch.Tensor
    earlier: torch.Tensor
    earlier_sums: torch.Tensor
    state_decay: torch.Tensor
    chunk_decay: torch.Tensor
    last_weights: torch.Tensor
    score_growth: torch.Tensor
    score_shrink: torch.Tensor
    weight_decay: torch.Tensor


def _or_model(recent: torch.Tensor, model: torch.Tensor) -> torch.Tensor:
    """Use the model's distribution where a rate has seen no label yet.

    That happens only for a learner restored from a state saved before label
    recency existed, whose model has labels that the frequencies lack.
    """
    return torch.where(recent.sum(dim=-1, keepdim=True) > 0, recent, model)


def _padded(model: torch.Tensor, labels: int) -> torch.Tensor:
    """Return the model's probabilities in float64, with zeros for the labels
    new in this batch."""
    padded = model.double()
    if model.shape[1] < labels:
        padding = padded.new_zeros(model.shape[0], labels - model.shape[1])
        padded = torch.cat([padded, padding], dim=1)
    return padded


def _normalized(frequencies: torch.Tensor) -> torch.Tensor:
    # Rows with no label are all zeros, and stay zeros.
    return frequencies / frequencies.sum(dim=-1, keepdim=True).clamp(min=FLOOR)
