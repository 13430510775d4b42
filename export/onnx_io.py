"""torch -> ONNX file helpers shared by the VersaMammo and MammoRG exporters.

We use torch's TorchScript-based exporter (``dynamo=False``) at opset 18: it traces the Hugging
Face decoder with its cache and every dynamic axis we need (batch, sequence, past length,
including an empty past for the prefill), where the dynamo exporter in torch 2.14 could not
convert those dynamic axes. Graphs whose weights exceed ``EXTERNAL_DATA_THRESHOLD`` are rewritten
with their tensors in one external-data file beside the graph (``<graph>.onnx.data``): protobuf
cannot hold more than 2 GB, and one data file keeps the package's file list short.
"""
from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

OPSET = 18
EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # bytes of weights; protobuf's hard limit is 2 GiB


def export_graph(module: torch.nn.Module, args: tuple[Any, ...], path: Path, input_names: Sequence[str],
                 output_names: Sequence[str], dynamic_axes: Mapping[str, Mapping[int, str]],
                 external_threshold: int = EXTERNAL_DATA_THRESHOLD) -> Path:
    """Trace ``module`` on ``args`` into ``path`` (opset 18); external data above the threshold."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mammo-export-") as tmp:
        staged = Path(tmp) / path.name
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), args, str(staged), input_names=list(input_names),
                              output_names=list(output_names), dynamic_axes=dict(dynamic_axes),
                              opset_version=OPSET, dynamo=False, do_constant_folding=True)
        weights = sum(f.stat().st_size for f in Path(tmp).iterdir())
        for old in (path, path.with_name(path.name + ".data")):
            old.unlink(missing_ok=True)
        if weights > external_threshold or len(list(Path(tmp).iterdir())) > 1:
            model = onnx.load(str(staged), load_external_data=True)
            onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=path.name + ".data", size_threshold=1024)
        else:
            shutil.copyfile(staged, path)
    return path


def graph_files(path: Path) -> list[Path]:
    """The graph file and its external-data file when there is one."""
    data = path.with_name(path.name + ".data")
    return [path, data] if data.exists() else [path]


def io_spec(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs of an ONNX file (name, element type, shape with symbolic axes) for the manifest."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]
            out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                        "shape": shape})
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}
