"""Request and response models of the stream registry API (router/streams.py)."""
from __future__ import annotations

import math
from typing import Literal, Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from router.models import MAX_ABS_TEXT, MAX_ABS_VALUE, Strict, TimeOut
from tiers.stream_registry import retention_to_ms

RETENTION_PATTERN = r"^[1-9][0-9]{0,6}[smhdwy]$"


def zone_problem(name: str) -> str | None:
    """Why `name` is not an IANA time zone this host knows (None when it is one)."""
    if not name or len(name) > 64 or "\x00" in name:
        return "must be an IANA time zone name such as Europe/Paris"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return f"{name!r} is not an IANA time zone name (such as Europe/Paris)"
    return None


class StreamPut(Strict):
    """PUT /v1/streams/{stream}: the whole description (omitted fields take their defaults)."""

    description: str = Field("", max_length=1024, description="What the stream records.")
    unit: str = Field("", max_length=64, description="Unit of the values (\"ms\", \"EUR\", \"plays\").")
    value_min: Optional[float] = Field(None, description=f"Smallest value ingest accepts (inclusive); "
                                       f"|value_min| <= {MAX_ABS_TEXT}; null: no bound.")
    value_max: Optional[float] = Field(None, description=f"Largest value ingest accepts (inclusive); "
                                       f"|value_max| <= {MAX_ABS_TEXT}; null: no bound.")
    retention: Optional[str] = Field(None, pattern=RETENTION_PATTERN, examples=["400d", "7y"],
                                     description="How long the archive keeps the stream (s m h d w y; y = 365 "
                                                 "days), replacing archive_retention; null: the default.")
    time_zone: Optional[str] = Field(None, max_length=64, examples=["Europe/Paris"],
                                     description="Default IANA time zone for local-day queries; null: UTC.")

    @field_validator("description", "unit")
    @classmethod
    def _no_nul(cls, v: str) -> str:
        if "\x00" in v:
            raise ValueError("must not contain U+0000")
        return v

    @field_validator("value_min", "value_max")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not (math.isfinite(v) and -MAX_ABS_VALUE <= v <= MAX_ABS_VALUE):
            raise ValueError(f"must be a finite number within -{MAX_ABS_TEXT}..{MAX_ABS_TEXT}")
        return v

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        problem = None if v is None else zone_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("retention")
    @classmethod
    def _retention(cls, v: str | None) -> str | None:
        if v is not None and retention_to_ms(v) is None:
            raise ValueError("must be a duration such as 400d, 52w or 7y")
        return v

    @model_validator(mode="after")
    def _ordered(self) -> "StreamPut":
        if self.value_min is not None and self.value_max is not None and self.value_min > self.value_max:
            raise ValueError("value_min must be <= value_max")
        return self


class StreamTier(BaseModel):
    name: Literal["archive", "cold", "warm", "hot"]
    rows: Optional[int] = Field(description="Events of the stream in the range this tier owns; null when the "
                                            "tier is down or not configured.")
    bytes: Optional[int] = Field(description="Bytes the stream takes in this tier; null where the tier cannot "
                                             "tell it apart from other streams (warm, hot) or is down.")


class StreamInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    stream: str
    registered: bool = Field(description="false: the stream has data but no registry entry.")
    description: str
    unit: str
    value_min: Optional[float]
    value_max: Optional[float]
    retention: Optional[str] = Field(description="The retention override; null: archive_retention applies.")
    time_zone: Optional[str]
    created: Optional[TimeOut]
    updated: Optional[TimeOut]
    events: Optional[int] = Field(description="Events the stream holds across every tier (null when a tier "
                                              "holding it could not be read).")
    tiers: list[StreamTier]


class StreamDeleted(BaseModel):
    stream: str
    status: Literal["deleted"]
    registered: bool = Field(description="Whether a registry entry was removed.")
    deleted: dict[str, int] = Field(description="Rows (or aggregate members) each tier deleted.")
