"""The settings a tier reads, as its own small model beside the tier.

tiers/ never imports tierstore/: each tier declares the fields it needs (a `SettingsView`
subclass) and takes them from tierstore's Settings, or any object with those attributes, by
`of(settings)`. A tier therefore cannot come to depend on a setting without saying so here.
"""
from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

V = TypeVar("V", bound="SettingsView")


class SettingsView(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    @classmethod
    def of(cls: type[V], settings: Any) -> V:
        """This view of `settings` (returned as is when it already is one). Fields missing on
        `settings` take their defaults; a required field missing raises pydantic's ValidationError."""
        if isinstance(settings, cls):
            return settings
        present = {name: getattr(settings, name) for name in cls.model_fields if hasattr(settings, name)}
        return cls(**present)
