from __future__ import annotations

import pytest
import torch

from online_model.model import EmbeddingOptimizer


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
