"""Calibration: data readers, streaming collection through onnxruntime, observers, statistics cache."""

from .collect import CollectOptions, collect, merge_stats, plain_inference_seconds
from .data import CalibData, as_data_source
from .observers import METHODS, ObserverConfig, TensorStats, compute_range
from .stats import CalibrationStats, cache_key

__all__ = ["CollectOptions", "collect", "merge_stats", "plain_inference_seconds", "CalibData", "as_data_source",
           "METHODS", "ObserverConfig", "TensorStats", "compute_range", "CalibrationStats", "cache_key"]
