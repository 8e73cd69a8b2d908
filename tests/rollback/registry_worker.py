"""A writer process for the crash and race tests; prints one JSON line per result.

    python registry_worker.py churn URL SEED        publish and roll back forever
    python registry_worker.py publish URL ID COUNT  publish COUNT versions
    python registry_worker.py rollback URL ID COUNT make COUNT rollbacks, retrying

Every mode prints "ready" once the registry is open. ``publish`` and
``rollback`` then wait for a line on stdin, so that racing workers start
together.
"""

from __future__ import annotations

import json
import random
import sys

from registry_helpers import make_fields

from rollback.errors import AlreadyServing, PointerConflict
from rollback.registry import Registry, open_registry


def emit(record: dict[str, object]) -> None:
    print(json.dumps(record), flush=True)


def churn(registry: Registry, seed: int) -> None:
    rng = random.Random(seed)
    while True:
        files = {
            name: rng.randbytes(rng.randint(500_000, 2_000_000))
            for name in ("weights.bin", "optimizer.bin", "learner.json")
        }
        version = registry.publish(files, make_fields(), "job", "churn")
        emit({"op": "publish", "version": version})
        earlier = registry.versions()[:-1] if rng.random() < 0.1 else []
        if earlier:
            target = rng.choice(earlier)
            try:
                registry.set_serving(target, "job", "churn", kind="auto_rollback")
            except AlreadyServing:
                continue


def publish(registry: Registry, worker: str, count: int) -> None:
    for index in range(count):
        files = {"weights.bin": f"{worker}-{index}".encode() * 100}
        version = registry.publish(files, make_fields(), worker, f"publish {index}")
        emit({"op": "publish", "version": version})


def roll_back(registry: Registry, worker: str, count: int) -> None:
    # Refused attempts are retried, up to ten per rollback, so that some
    # rollbacks take effect even when the publishers win most races.
    rng = random.Random(worker)
    done = 0
    for index in range(count * 10):
        if done == count:
            return
        current = registry.serving()
        choices = [v for v in registry.versions() if v != current]
        try:
            change = registry.set_serving(
                rng.choice(choices), worker, f"rollback {index}", expected=current
            )
        except (PointerConflict, AlreadyServing) as error:
            emit({"op": "refused", "error": type(error).__name__})
            continue
        done += 1
        emit(
            {
                "op": "rollback",
                "seq": change.seq,
                "change_id": change.change_id,
                "to": change.to_version,
            }
        )


def main(argv: list[str]) -> None:
    mode, url = argv[0], argv[1]
    registry = open_registry(url, create=True)
    emit({"op": "ready"})
    if mode == "churn":
        churn(registry, int(argv[2]))
        return
    sys.stdin.readline()
    if mode == "publish":
        publish(registry, argv[2], int(argv[3]))
    else:
        roll_back(registry, argv[2], int(argv[3]))


if __name__ == "__main__":
    main(sys.argv[1:])
