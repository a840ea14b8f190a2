"""Everything that runs ONNX Runtime: autodiff (artifact generation), sessions, the training
loop, memory measurement and inference export."""

import onnxruntime as _ort

# ORT logs every graph transformer at INFO on stderr; users need warnings and errors only.
_ort.set_default_logger_severity(3)
