"""quantcore: quantize trained PyTorch models on one machine (algorithms only, no service code).

The public API: build a zoo model, load weights safely, run a registered method, measure it, and
write or read the ``.qpack`` artifact. ``python -m quantcore`` wraps the same functions.
"""

from quantcore.artifact import ModelSpec, load_artifact, read_manifest, save_artifact
from quantcore.context import Progress, RunContext
from quantcore.data import DataBundle, list_datasets, load_dataset, subset
from quantcore.errors import (
    Cancelled,
    InvalidArtifact,
    InvalidDataset,
    InvalidModel,
    InvalidParams,
    NothingQuantized,
    QuantcoreError,
    UnknownName,
    UnsafeModelFile,
)
from quantcore.export import export_onnx
from quantcore.layers import InputQuantizer, QuantConv2d, QuantLinear, WeightQuantizer
from quantcore.loading import load_into, load_model, read_state_dict
from quantcore.metrics import SizeReport, size_report
from quantcore.qweight import CodebookKind, Grouping, QuantizedWeight, dequantize
from quantcore.registry import get_method, list_methods, parse_params
from quantcore.surgery import find_layers, quantize_model
from quantcore.training import EvalResult, evaluate, train
from quantcore.zoo import build, list_architectures

__version__ = "0.1.0"

__all__ = [
    "Cancelled",
    "CodebookKind",
    "DataBundle",
    "EvalResult",
    "Grouping",
    "InputQuantizer",
    "InvalidArtifact",
    "InvalidDataset",
    "InvalidModel",
    "InvalidParams",
    "ModelSpec",
    "NothingQuantized",
    "Progress",
    "QuantConv2d",
    "QuantLinear",
    "QuantcoreError",
    "QuantizedWeight",
    "RunContext",
    "SizeReport",
    "UnknownName",
    "UnsafeModelFile",
    "WeightQuantizer",
    "build",
    "dequantize",
    "evaluate",
    "export_onnx",
    "find_layers",
    "get_method",
    "list_architectures",
    "list_datasets",
    "list_methods",
    "load_artifact",
    "load_dataset",
    "load_into",
    "load_model",
    "parse_params",
    "quantize_model",
    "read_manifest",
    "read_state_dict",
    "save_artifact",
    "size_report",
    "subset",
    "train",
]
