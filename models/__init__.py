"""Model definitions and ONNX export (CTR, bid shading, fraud)."""

from models.lgbm_onnx import lgbm_to_onnx, onnx_predict

__all__ = ["lgbm_to_onnx", "onnx_predict"]
