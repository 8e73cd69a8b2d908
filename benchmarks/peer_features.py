"""Featurization of decoded event dicts for the peer learners.

The peers see the same fields as streamlearn's learner, as named by the feature
spec: categorical and multi-valued fields become indicator features
``field=value``, text fields one indicator per lower-case word, and numeric
fields keep their value after the spec's transform (``log1p`` or none). The
spec's numeric buckets and feature crosses are streamlearn's own feature
engineering and are not given to the peers; Vowpal Wabbit's ``-q`` variant
learns its own crosses. Missing values (None, NaN, infinities, empty lists)
produce no feature, which is what River's sparse dicts and Vowpal Wabbit's
text format both expect.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from online_model.spec import FeatureSpec

# Vowpal Wabbit's text format splits on spaces and uses ':' and '|' as
# separators, so these characters cannot appear inside a feature name.
_VW_RESERVED = str.maketrans({" ": "_", ":": ";", "|": "/", "\t": "_", "\n": "_"})

# One Vowpal Wabbit namespace per kind of field, so that quadratic
# interactions (``-q``) can cross skills with categories and so on.
VW_NAMESPACE_CATEGORICAL = "c"
VW_NAMESPACE_MULTI_VALUED = "m"
VW_NAMESPACE_NUMERIC = "n"


@dataclass(frozen=True)
class FieldKinds:
    """Feature fields of one stream, grouped by how the peers encode them."""

    label: str
    categorical: tuple[str, ...] = ()
    multi_valued: tuple[str, ...] = ()
    text: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    log1p_fields: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_spec(cls, spec: FeatureSpec) -> FieldKinds:
        """Group the feature fields of a streamlearn feature spec by kind."""

        def named(kind: str) -> tuple[str, ...]:
            return tuple(f.name for f in spec.fields if f.kind == kind)

        return cls(
            label=spec.label_field,
            categorical=named("categorical"),
            multi_valued=named("multi_valued"),
            text=named("text"),
            numeric=named("numeric"),
            log1p_fields=frozenset(
                f.name for f in spec.fields if f.transform == "log1p"
            ),
        )

    @property
    def has_indicators(self) -> bool:
        """Whether any field becomes indicator features."""
        return bool(self.categorical or self.multi_valued or self.text)


_WORD = re.compile(r"\w+")


def _numeric_value(value: Any, log1p: bool) -> float | None:
    if value is None or isinstance(value, str):
        return None
    number = float(value)
    if log1p:
        # log1p is undefined below -1, and such a value gets no feature.
        number = math.log1p(number) if number > -1.0 else math.nan
    return number if math.isfinite(number) else None


def _category_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    text = str(value)
    return text if text else None


def _multi_values(value: Any) -> Iterable[str]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    return (str(item) for item in value if item is not None and str(item))


def _words(value: Any) -> Iterable[str]:
    if not isinstance(value, str):
        return ()
    return _WORD.findall(value.lower())


class PeerFeaturizer:
    """Turns event dicts into River feature dicts or Vowpal Wabbit text lines."""

    def __init__(self, kinds: FieldKinds) -> None:
        self.kinds = kinds

    def categorical_names(self, event: Mapping[str, Any]) -> list[str]:
        """Return the ``field=value`` indicators of the categorical fields."""
        names = []
        for name in self.kinds.categorical:
            text = _category_text(event.get(name))
            if text is not None:
                names.append(f"{name}={text}")
        return names

    def bag_names(self, event: Mapping[str, Any]) -> list[str]:
        """Return the ``field=item`` indicators of multi-valued and text fields."""
        names: list[str] = []
        for name in self.kinds.multi_valued:
            names.extend(f"{name}={item}" for item in _multi_values(event.get(name)))
        for name in self.kinds.text:
            names.extend(f"{name}={word}" for word in _words(event.get(name)))
        return names

    def numeric_values(self, event: Mapping[str, Any]) -> dict[str, float]:
        """Return the event's numeric features after the spec's transforms."""
        values = {}
        for name in self.kinds.numeric:
            number = _numeric_value(event.get(name), name in self.kinds.log1p_fields)
            if number is not None:
                values[name] = number
        return values

    def river_features(self, event: Mapping[str, Any]) -> dict[str, float]:
        """Return the sparse feature dict River's learners take."""
        features = dict.fromkeys(self.categorical_names(event), 1.0)
        features.update(dict.fromkeys(self.bag_names(event), 1.0))
        features.update(self.numeric_values(event))
        return features

    def vw_line(self, event: Mapping[str, Any], label_index: int) -> str:
        """Return one example in Vowpal Wabbit's text format.

        ``label_index`` is the 1-based class id that ``--oaa K`` expects.
        """
        categorical = [n.translate(_VW_RESERVED) for n in self.categorical_names(event)]
        bag = [name.translate(_VW_RESERVED) for name in self.bag_names(event)]
        numeric = [
            f"{name.translate(_VW_RESERVED)}:{value:.9g}"
            for name, value in self.numeric_values(event).items()
        ]
        parts = [str(label_index)]
        for namespace, features in (
            (VW_NAMESPACE_CATEGORICAL, categorical),
            (VW_NAMESPACE_MULTI_VALUED, bag),
            (VW_NAMESPACE_NUMERIC, numeric),
        ):
            if features:
                parts.append(f"|{namespace} " + " ".join(features))
        if len(parts) == 1:
            # Without a '|' VW would read the next token as a tag and echo it
            # into the predictions file, so an event without features still
            # gets an empty namespace.
            parts.append("|")
        return " ".join(parts)
