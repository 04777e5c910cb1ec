"""Request bodies: OpenAI's embeddings API and text-embeddings-inference's /embed."""

from __future__ import annotations

from typing import Literal

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
