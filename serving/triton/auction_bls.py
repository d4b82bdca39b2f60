"""Triton Python-backend model ``auction``: one request scores a whole auction.

This file is copied into a generated repository as ``auction/1/model.py`` and runs
inside tritonserver's Python backend (``triton_python_backend_utils`` exists only
there; nothing in the adplatform package imports this module). It forwards the
auction's tensors to the ``ctr``, ``fraud`` and ``shading`` models concurrently
(business-logic scripting, async) and answers:

- ``pctr`` (K,) float32
- ``p_fraud`` (1,) float32, NaN when no fraud model or no fraud features
- ``landscape`` (K, P) float32, one NaN row when no shading model or no shading features
- ``versions`` (1,) bytes, JSON ``{model name: registry version}``

The models present and their versions are read from this model's config parameters,
written by :func:`serving.triton.repository.write_repository`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

VERSIONS_PARAMETER = "adplatform.versions"
MAX_ROWS_PARAMETER = "adplatform.max_batch_size"


class TritonPythonModel:
    """BLS orchestrator; holds no model weights itself."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.versions: dict[str, str] = json.loads(params[VERSIONS_PARAMETER])
        self.max_rows = int(params.get(MAX_ROWS_PARAMETER, "0"))  # 0: no limit (unbatched)
        self.versions_tensor = np.array([json.dumps(self.versions, sort_keys=True).encode()],
                                        dtype=np.object_)
        landscape = pb_utils.get_output_config_by_name(config, "landscape")
        width = int(landscape["dims"][-1]) if landscape else -1
        self.no_landscape = np.full((1, max(width, 1)), np.nan, dtype=np.float32)
        self.memory: dict[str, Any] = {}
        if hasattr(pb_utils, "PreferredMemory"):   # outputs of a GPU model come back on CPU
            self.memory = {"preferred_memory": pb_utils.PreferredMemory(
                pb_utils.TRITONSERVER_MEMORY_CPU, 0)}

    async def _call(self, model: str, input_name: str, x: np.ndarray,
                    output_name: str) -> np.ndarray:
        request = pb_utils.InferenceRequest(
            model_name=model, requested_output_names=[output_name],
            inputs=[pb_utils.Tensor(input_name, x)], **self.memory)
        response = await request.async_exec()
        if response.has_error():
            raise pb_utils.TritonModelException(f"{model}: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, output_name).as_numpy()

    async def _rows(self, model: str, input_name: str, x: np.ndarray,
                    output_name: str) -> np.ndarray:
        """Call a batched model, split into chunks of at most ``max_rows`` rows."""
        if self.max_rows <= 0 or len(x) <= self.max_rows:
            return await self._call(model, input_name, x, output_name)
        parts = await asyncio.gather(*(
            self._call(model, input_name, x[i:i + self.max_rows], output_name)
            for i in range(0, len(x), self.max_rows)))
        return np.concatenate(parts)

    async def _score(self, request: Any) -> Any:
        ctr = pb_utils.get_input_tensor_by_name(request, "ctr_features")
        fraud = pb_utils.get_input_tensor_by_name(request, "fraud_features")
        shading = pb_utils.get_input_tensor_by_name(request, "shading_features")
        calls = [self._rows("ctr", "ctr_features", ctr.as_numpy(), "pctr")]
        use_fraud = fraud is not None and "fraud" in self.versions
        use_shading = shading is not None and "shading" in self.versions
        if use_fraud:
            calls.append(self._call("fraud", "fraud_features", fraud.as_numpy(), "p_fraud"))
        if use_shading:
            calls.append(self._rows("shading", "shading_features", shading.as_numpy(),
                                    "landscape"))
        results = list(await asyncio.gather(*calls))
        pctr = results.pop(0).reshape(-1).astype(np.float32, copy=False)
        p_fraud = (results.pop(0).reshape(-1)[:1].astype(np.float32, copy=False) if use_fraud
                   else np.full((1,), np.nan, dtype=np.float32))
        landscape = (results.pop(0).astype(np.float32, copy=False) if use_shading
                     else self.no_landscape)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("pctr", pctr),
            pb_utils.Tensor("p_fraud", p_fraud),
            pb_utils.Tensor("landscape", landscape),
            pb_utils.Tensor("versions", self.versions_tensor),
        ])

    async def _answer(self, request: Any) -> Any:
        try:
            return await self._score(request)
        except pb_utils.TritonModelException as exc:   # a component failed: tell the client
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))

    async def execute(self, requests: list[Any]) -> list[Any]:
        return list(await asyncio.gather(*(self._answer(r) for r in requests)))

    def finalize(self) -> None:
        self.versions = {}
