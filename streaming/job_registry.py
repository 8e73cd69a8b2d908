"""The model registry as the streaming job writes to it.

The registry treats weights as opaque bytes, so it cannot tell whether the
job can load a version's learner state. The job therefore declares the
state format twice: in ``running.json`` at start-up
(``Registry.set_running_fingerprint``) and in the manifest of every version
it publishes. ``rollback --to vN`` then rejects a version whose declared
format differs from the running job's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from online_model.learner import STATE_FORMAT
from rollback.errors import InvalidInput
from rollback.manifest import ManifestFields
from rollback.registry import ANY, Announcer, Expected, Registry, open_registry

# The learner's state format as manifests declare it. The number is the
# "format" field of the learner.json file that OnlineLearner writes and reads.
LEARNER_STATE_FORMAT = f"online-learner/{STATE_FORMAT}"


class JobRegistry(Registry):
    """A registry whose every published version declares the learner's format."""

    state_format = LEARNER_STATE_FORMAT

    def publish(
        self,
        files: Mapping[str, bytes],
        manifest_fields: ManifestFields | Mapping[str, Any],
        actor: str,
        reason: str,
        *,
        move_pointer: bool = True,
        expected: Expected = ANY,
    ) -> int:
        """Publish as ``Registry.publish`` does, with ``state_format`` filled in.

        Raises InvalidInput when the fields declare another state format.
        """
        fields = (
            manifest_fields
            if isinstance(manifest_fields, ManifestFields)
            else ManifestFields.from_mapping(manifest_fields)
        )
        if fields.state_format not in ("", self.state_format):
            raise InvalidInput(
                f"invalid state_format {fields.state_format!r}: this job writes "
                f"learner state in format {self.state_format!r}"
            )
        return super().publish(
            files,
            replace(fields, state_format=self.state_format),
            actor,
            reason,
            move_pointer=move_pointer,
            expected=expected,
        )


def open_job_registry(
    url: str | Path, announcer: Announcer | None = None
) -> JobRegistry:
    """Open (or create) the registry at ``url`` for the job to publish to."""
    checked = open_registry(url, create=True, announcer=announcer)
    return JobRegistry(checked.storage, announcer=announcer)
