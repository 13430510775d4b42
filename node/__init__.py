"""mammo-node: the DICOM/PACS integration node (never imports torch)."""
import os as _os

# ONNX Runtime (1.31 on Linux) otherwise keeps a telemetry database and a device id under
# ~/.cache/Microsoft/DeveloperTools/.onnxruntime/ and writes them during runs; it reads this
# variable when it is loaded, so it is set before anything in the node imports it. An operator
# who sets it explicitly keeps their value.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
