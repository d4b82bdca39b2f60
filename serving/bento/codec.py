"""The wire format between :class:`~serving.bento.client.BentoBackend` and the Bento service.

A tensor travels as ``{"shape": [K, F], "data": "<base64 of little-endian float32>"}``
inside an ordinary JSON body. Against JSON lists of numbers this is about three times
smaller, bit exact (float32 in, float32 out, NaN for a missing feature survives where
JSON has no NaN), and costs one ``b64decode`` + ``np.frombuffer`` instead of a parse
per number. BentoML's main server accepts only JSON or multipart bodies (pickle is
refused on purpose), so base64-in-JSON is the binary encoding that fits its schema.

The client builds and reads these dicts directly (orjson, no pydantic); the service
declares the same shapes as pydantic models so BentoML can validate them and publish
the OpenAPI schema.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

WIRE_DTYPE = np.dtype("<f4")
MAX_ELEMENTS = 10_000_000     # 40 MB of float32: far beyond any auction, stops absurd shapes


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """A float32 array as its wire dict (C order, little endian)."""
    data = np.ascontiguousarray(array, dtype=WIRE_DTYPE)
    return {"shape": list(data.shape), "data": base64.b64encode(data.tobytes()).decode("ascii")}


def decode_array(shape: list[int], data: str) -> np.ndarray:
    """The float32 array a wire dict carries; ``ValueError`` names what is wrong.

    The result is a read-only view on the decoded bytes (ONNX Runtime only reads it).
    """
    if not 1 <= len(shape) <= 2:
        raise ValueError(f"a tensor has 1 or 2 dimensions, got shape {shape}")
    if any(d < 0 for d in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    n = math.prod(shape)
    if n > MAX_ELEMENTS:
        raise ValueError(f"shape {shape} has {n} elements, more than {MAX_ELEMENTS}")
    try:
        raw = base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"tensor data is not valid base64: {exc}") from exc
    if len(raw) != n * WIRE_DTYPE.itemsize:
        raise ValueError(f"shape {shape} needs {n * WIRE_DTYPE.itemsize} bytes of float32, "
                         f"the data holds {len(raw)}")
    return np.frombuffer(raw, dtype=WIRE_DTYPE).reshape(shape)


class WireTensor(BaseModel):
    """A float32 tensor on the wire; validation decodes it once."""

    model_config = ConfigDict(frozen=True)

    shape: list[int] = Field(description="1 or 2 dimensions, e.g. [K, F]")
    data: str = Field(description="base64 of the little-endian float32 values, C order")
    _array: np.ndarray | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _decode(self) -> WireTensor:
        self._array = decode_array(self.shape, self.data)
        return self

    @property
    def array(self) -> np.ndarray:
        if self._array is None:                 # constructed without validation
            self._array = decode_array(self.shape, self.data)
        return self._array

    @classmethod
    def of(cls, array: np.ndarray) -> WireTensor:
        return cls.model_construct(**encode_array(array))


class WireAuction(BaseModel):
    """One auction: K CTR rows, an optional fraud row, optional K shading rows."""

    ctr: WireTensor = Field(description="(K, F_ctr) CTR features")
    fraud: WireTensor | None = Field(default=None, description="(1, F_fraud) fraud features")
    shading: WireTensor | None = Field(default=None, description="(K, F_shading) features")


class WireScores(BaseModel):
    """The scores of one auction and the registry versions that produced them."""

    pctr: WireTensor = Field(description="(K,) click probabilities")
    p_fraud: float | None = Field(default=None, description="P(invalid traffic)")
    landscape: WireTensor | None = Field(default=None, description="(K, P) landscape params")
    versions: dict[str, str] = Field(default_factory=dict, description="model -> version")
    error: str | None = Field(default=None, description="why this auction was not scored "
                              "(batched endpoint only; the others in its batch still are)")


__all__ = ["WIRE_DTYPE", "WireAuction", "WireScores", "WireTensor", "decode_array",
           "encode_array"]
