from __future__ import annotations

import pytest
import torch

from online_model.featurize import ModelInput
from online_model.model import EmbeddingOptimizer, HashedSoftmaxModel, distinct_tokens


@pytest.mark.parametrize(
    ("kind", "reference"),
    [("adagrad", torch.optim.Adagrad), ("adam", torch.optim.SparseAdam)],
)
def test_embedding_optimizer_matches_torch(
    kind: str, reference: type[torch.optim.Optimizer]
) -> None:
    generator = torch.Generator().manual_seed(1)
    start = torch.randn(50, 4, generator=generator, dtype=torch.float64)
    ours = start.clone()
    theirs = torch.nn.Parameter(start.clone())
    optimizer = EmbeddingOptimizer(kind, 0.05, ours)
    torch_optimizer = reference([theirs], lr=0.05)

    for _ in range(5):
        distinct = torch.randperm(50, generator=generator)[:7].sort().values
        grad = torch.randn(7, 4, generator=generator, dtype=torch.float64)
        optimizer.step(ours, distinct, grad)
        # Checking sparse invariants explicitly also keeps torch from warning.
        with torch.sparse.check_sparse_tensor_invariants(enable=True):
            theirs.grad = torch.sparse_coo_tensor(distinct.unsqueeze(0), grad, (50, 4))
            torch_optimizer.step()

    assert torch.allclose(ours, theirs.detach(), rtol=1e-9, atol=1e-12)


def test_embedding_optimizer_leaves_other_rows() -> None:
    embedding = torch.ones(10, 3)
    optimizer = EmbeddingOptimizer("adagrad", 0.1, embedding)
    optimizer.step(embedding, torch.tensor([2, 5]), torch.ones(2, 3))
    untouched = [i for i in range(10) if i not in (2, 5)]
    assert torch.equal(embedding[untouched], torch.ones(8, 3))
    assert torch.allclose(embedding[[2, 5]], torch.full((2, 3), 0.9))
    assert torch.equal(optimizer.state["sum"][[2, 5]], torch.ones(2, 3))
    assert optimizer.steps == 1


@pytest.mark.parametrize("buckets", [64, 1 << 20])
def test_distinct_tokens_equals_unique(buckets: int) -> None:
    # 64 buckets take the marking path, 2**20 the sort.
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 64, (500,), generator=generator)
    distinct, positions = distinct_tokens(tokens, buckets)
    expected_distinct, expected_positions = torch.unique(tokens, return_inverse=True)
    assert torch.equal(distinct, expected_distinct)
    assert torch.equal(positions, expected_positions)
    assert torch.equal(distinct[positions], tokens)


def test_grow_output_starts_unit_rows() -> None:
    model = HashedSoftmaxModel(64, 4, 1, 0, torch.Generator().manual_seed(5))
    model.grow_output(3)
    with torch.no_grad():
        model.output_weight.add_(0.5)
        model.output_bias.add_(0.25)
    learned = model.output_weight.detach().clone()
    weight, bias = model.grow_output(3)

    assert torch.equal(weight[:3], learned)
    # Labels 3 to 5 take columns 3, 0 and 1 of the four embedding columns.
    # The two numeric columns (value and missing flag) stay at zero.
    expected = torch.zeros(3, 6)
    expected[0, 3] = expected[1, 0] = expected[2, 1] = 1.0
    assert torch.equal(weight[3:], expected)
    assert torch.equal(bias, torch.tensor([0.25, 0.25, 0.25, 0.0, 0.0, 0.0]))


def test_embedding_gradient_matches_embedding_bag() -> None:
    generator = torch.Generator().manual_seed(4)
    model = HashedSoftmaxModel(64, 4, 1, 8, generator)
    weight, _ = model.grow_output(3)
    with torch.no_grad():
        # Random rows, so that every embedding column gets a gradient.
        weight.normal_(generator=generator)
    # Three events, and the second has no tokens. Token 5 appears twice.
    tokens = torch.tensor([5, 5, 63, 9, 40, 9])
    weights = torch.tensor([1.0, 2.0, 3.0, 0.5, 1.0, 0.25])
    batch = ModelInput(
        size=3,
        tokens=tokens,
        token_offsets=torch.tensor([0, 3, 3]),
        token_events=torch.tensor([0, 0, 0, 2, 2, 2]),
        token_weights=weights,
        dense=torch.zeros(3, 2),
    )
    _, positions, rows = model.embedding_rows(tokens, trainable=True)
    model(batch, rows, positions).sum().backward()

    reference_rows = rows.detach().clone().requires_grad_(True)
    summed = torch.nn.functional.embedding_bag(
        positions,
        reference_rows,
        batch.token_offsets,
        mode="sum",
        per_sample_weights=weights,
    )
    features = torch.cat([summed, batch.dense], dim=1)
    hidden = torch.relu(model.hidden(features))
    torch.nn.functional.linear(
        torch.cat([features, hidden], dim=1), model.output_weight, model.output_bias
    ).sum().backward()

    assert rows.grad is not None and reference_rows.grad is not None
    assert torch.allclose(rows.grad, reference_rows.grad, atol=1e-6)
    assert rows.grad.abs().min() > 0
