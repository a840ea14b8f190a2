"""tinytlc: compile a CNN into memory-lean ONNX Runtime training artifacts for TinyTL transfer
learning, train it on a CPU, and measure what a training step really costs."""

__version__ = "0.1.0"
