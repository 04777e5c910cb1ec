"""Request bodies of OpenAI's embeddings API and text-embeddings-inference's /embed, and how
OpenAI encodes the vectors of a response (shared with `fastelectra.scale.ray_serve`)."""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class OpenAIEmbeddingRequest(BaseModel):
    """`POST /v1/embeddings`. Token-id arrays (OpenAI also takes them) are refused with 422."""

    model_config = ConfigDict(extra="ignore")  # e.g. OpenAI's `user`

    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    # Keep the first `dimensions` values and renormalize, as OpenAI does.
    dimensions: int | None = Field(default=None, ge=1)

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else self.input


class TEIEmbedRequest(BaseModel):
    """`POST /embed`, as text-embeddings-inference defines it."""

    model_config = ConfigDict(extra="ignore")

    inputs: str | list[str]
    normalize: bool = True
    # None: the server's --auto-truncate (off by default, as in TEI).
    truncate: bool | None = None
    # TEI can also cut from the left; these models are only ever cut on the right.
    truncation_direction: Literal["Right", "right"] = "Right"

    def texts(self) -> list[str]:
        return [self.inputs] if isinstance(self.inputs, str) else self.inputs


def openai_embeddings(vectors: np.ndarray, encoding_format: str) -> list[Any]:
    """One `embedding` value per row, as OpenAI sends it: a list of floats, or the row's
    little-endian float32 bytes in base64."""
    if encoding_format == "base64":
        little_endian = vectors.astype("<f4")
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in little_endian]
    return vectors.tolist()
