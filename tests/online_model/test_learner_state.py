"""Loading saved learner state: every damaged file raises LearnerStateError."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

import pytest
import safetensors.torch

from online_model.datasets import iter_events
from online_model.learner import (
    STATE_FILE,
    TENSORS_FILE,
    LearnerStateError,
    OnlineLearner,
)
from online_model.spec import load_spec

Files = dict[str, bytes]


@pytest.fixture(scope="module")
def saved() -> Files:
    learner = OnlineLearner(load_spec("electricity"), seed=0, device="cpu")
    learner.learn(list(itertools.islice(iter_events("electricity"), 200)))
    return learner.to_files()


def _edit_state(edit: Callable[[dict[str, object]], object]) -> Callable[[Files], None]:
    def apply(files: Files) -> None:
        state = json.loads(files[STATE_FILE])
        edit(state)
        files[STATE_FILE] = json.dumps(state).encode()

    return apply


def _poison_tensor(files: Files) -> None:
    tensors = safetensors.torch.load(files[TENSORS_FILE])
    name = sorted(name for name in tensors if name.startswith("model."))[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    files[TENSORS_FILE] = safetensors.torch.save(tensors)


def _shrink_tensor(files: Files) -> None:
    tensors = safetensors.torch.load(files[TENSORS_FILE])
    name = sorted(name for name in tensors if name.startswith("model."))[0]
    tensors[name] = tensors[name].reshape(-1)[:1].clone()
    files[TENSORS_FILE] = safetensors.torch.save(tensors)


def _set(key: str, value: object) -> Callable[[dict[str, object]], None]:
    return lambda state: state.__setitem__(key, value)


DAMAGE: list[tuple[str, Callable[[Files], object], str]] = [
    ("no state file", lambda files: files.pop(STATE_FILE), "missing learner.json"),
    (
        "state not UTF-8",
        lambda files: files.__setitem__(STATE_FILE, b"\xff\xfe{}"),
        "learner.json is not UTF-8 JSON",
    ),
    (
        "state not JSON",
        lambda files: files.__setitem__(STATE_FILE, b"{"),
        "learner.json is not UTF-8 JSON",
    ),
    (
        "state is a list",
        lambda files: files.__setitem__(STATE_FILE, b"[]"),
        "contains a JSON list",
    ),
    ("wrong format", _edit_state(_set("format", 99)), "has format 99"),
    ("no spec", _edit_state(lambda state: state.pop("spec")), "KeyError"),
    ("config typo", _edit_state(_set("config", {"nosuch": 1})), "TypeError"),
    ("output rows", _edit_state(_set("output_rows", "ones")), "invalid output_rows"),
    (
        "tensors not safetensors",
        lambda files: files.__setitem__(TENSORS_FILE, b"garbage"),
        "model.safetensors is not a readable safetensors file",
    ),
    ("tensor shape", _shrink_tensor, "do not form a learner state"),
    ("NaN weight", _poison_tensor, "NaN or infinite values in model."),
]


@pytest.mark.parametrize(
    ("name", "damage", "message"), DAMAGE, ids=[case[0] for case in DAMAGE]
)
def test_damaged_state_raises_state_error(
    saved: Files, name: str, damage: Callable[[Files], object], message: str
) -> None:
    files = dict(saved)
    damage(files)
    with pytest.raises(LearnerStateError) as raised:
        OnlineLearner.from_files(files, device="cpu")
    assert message in str(raised.value), name


def test_intact_state_loads(saved: Files) -> None:
    restored = OnlineLearner.from_files(dict(saved), device="cpu")
    assert restored.examples_seen == 200
    assert restored.labels == ["UP", "DOWN"]


def test_state_without_output_rows_grows_zero_rows(saved: Files) -> None:
    # States saved before new output rows started as unit vectors lack the key.
    files = dict(saved)
    _edit_state(lambda state: state.pop("output_rows"))(files)
    restored = OnlineLearner.from_files(files, device="cpu")
    current = OnlineLearner.from_files(dict(saved), device="cpu")
    event = next(iter_events("electricity"))

    for learner in (restored, current):
        learner.learn([{**event, "event_id": "new", "class": "FLAT"}])

    assert json.loads(saved[STATE_FILE])["output_rows"] == "unit"
    assert json.loads(restored.to_files()[STATE_FILE])["output_rows"] == "zero"
    grown = safetensors.torch.load(restored.to_files()[TENSORS_FILE])
    current_grown = safetensors.torch.load(current.to_files()[TENSORS_FILE])
    # The new label's row after one micro-batch: still zero in the embedding
    # columns without the unit vector, and near 1 in column 2 with it.
    assert restored.labels == ["UP", "DOWN", "FLAT"]
    assert grown["model.output_weight"][2, 2].abs() < 0.5
    assert current_grown["model.output_weight"][2, 2] > 0.5
