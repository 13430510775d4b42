"""The node's ONNX Runtime writes nothing outside the data directory (issue 17, item 14)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_PROBE = """
import node  # first, as every node entry point does
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
session.run(None, {"x": np.zeros(1, np.float32)})
"""


def test_onnxruntime_keeps_no_telemetry_files_in_home(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "ORT_DISABLE_TELEMETRY")}
    env["HOME"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / ".cache").exists(), sorted(str(p) for p in tmp_path.rglob("*"))
