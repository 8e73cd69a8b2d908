"""Sources of the registry URL and announce topic for the operator's commands.

The registry URL comes from, in order: the ``--registry`` option, the
environment variable ``STREAMLEARN_REGISTRY``, the key ``url`` of the
``[registry]`` table of a config file, and ``./runs/registry``. The config
file is ``$STREAMLEARN_CONFIG`` if set, else ``./streamlearn.toml`` if it
exists::

    [registry]
    url = "gs://my-bucket/models"
    announce_topic = "projects/my-project/topics/serving-changes"

The announce topic comes from ``--announce-topic``, then
``STREAMLEARN_ANNOUNCE_TOPIC``, then the config file; without one, pointer
changes are not announced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rollback.errors import RegistryError
from rollback.layout import DEFAULT_REGISTRY

ENV_REGISTRY = "STREAMLEARN_REGISTRY"
ENV_CONFIG = "STREAMLEARN_CONFIG"
ENV_ANNOUNCE_TOPIC = "STREAMLEARN_ANNOUNCE_TOPIC"
CONFIG_FILE_NAME = "streamlearn.toml"
# Keys of the [registry] table; each value is a string.
CONFIG_KEYS = ("url", "announce_topic")


@dataclass(frozen=True)
class OperatorConfig:
    """The resolved settings, with where the registry URL came from."""

    registry: str
    registry_source: str
    announce_topic: str | None
    announce_topic_source: str | None = None


def load_config(
    registry_option: str | None,
    announce_topic_option: str | None,
    environ: Mapping[str, str],
    working_directory: Path,
) -> OperatorConfig:
    """Resolve the settings in the order the module docstring gives."""
    table = _config_table(environ, working_directory)
    file_registry = table.get("url")
    file_topic = table.get("announce_topic")

    if registry_option:
        registry, source = registry_option, "--registry"
    elif environ.get(ENV_REGISTRY):
        registry, source = environ[ENV_REGISTRY], ENV_REGISTRY
    elif file_registry:
        registry, source = file_registry, "the config file"
    else:
        registry, source = DEFAULT_REGISTRY, "the default"

    topic: str | None
    if announce_topic_option:
        topic, topic_source = announce_topic_option, "--announce-topic"
    elif environ.get(ENV_ANNOUNCE_TOPIC):
        topic, topic_source = environ[ENV_ANNOUNCE_TOPIC], ENV_ANNOUNCE_TOPIC
    elif file_topic:
        topic, topic_source = file_topic, "the config file"
    else:
        topic, topic_source = None, None
    return OperatorConfig(
        registry=registry,
        registry_source=source,
        announce_topic=topic,
        announce_topic_source=topic_source,
    )


def _config_table(
    environ: Mapping[str, str], working_directory: Path
) -> Mapping[str, str]:
    explicit = environ.get(ENV_CONFIG)
    path = Path(explicit) if explicit else working_directory / CONFIG_FILE_NAME
    if not path.is_file():
        if explicit:
            raise RegistryError(
                f"config file {path} (from {ENV_CONFIG}) is missing or not a "
                f"file; fix or unset {ENV_CONFIG}"
            )
        return {}
    import tomllib  # imported here: most runs have no config file

    try:
        document = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise RegistryError(
            f"cannot read config file {path}: it is not UTF-8 text ({error})"
        ) from error
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise RegistryError(f"cannot read config file {path}: {error}") from error
    table = document.get("registry", {})
    if not isinstance(table, dict):
        raise RegistryError(
            f"invalid config file {path}: 'registry' must be a table, such as "
            '[registry] url = "./runs/registry"'
        )
    for key, value in table.items():
        if key not in CONFIG_KEYS:
            raise RegistryError(
                f"invalid config file {path}: unknown key {key!r} in [registry]; "
                f"the keys are {', '.join(CONFIG_KEYS)}"
            )
        if not isinstance(value, str):
            raise RegistryError(
                f"invalid config file {path}: [registry] {key} has type "
                f"{type(value).__name__} ({value!r}); expected a string, such as "
                f'{key} = "..."'
            )
    return table
