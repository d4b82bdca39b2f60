"""Triton serving: model repository, tritonserver launcher (PyTriton), and the client backend.

- :mod:`serving.triton.repository` writes a production Triton model repository.
- :mod:`serving.triton.venv` creates the separate venv PyTriton needs (numpy<2).
- :mod:`serving.triton.server` runs PyTriton's tritonserver on a repository.
- :mod:`serving.triton.client` is :class:`TritonBackend`, the ModelBackend over gRPC/HTTP.

Submodules are imported on use; importing this package does no work.
"""
