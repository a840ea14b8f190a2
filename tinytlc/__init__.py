"""tinytlc: compile a CNN into memory-lean ONNX Runtime training artifacts for TinyTL transfer
learning, train it on a CPU, and measure what a training step really costs.

The Python API mirrors the CLI:

    import tinytlc
    art = tinytlc.compile_model("mobilenetv2", "lite+bias", "out/mnv2", num_classes=10)
    data = tinytlc.load_data("/usr/share/datasets/fashion-mnist", 10, limit=2000)
    tinytlc.train("out/mnv2", art.manifest, data, tinytlc.TrainConfig(epochs=1))
    print(tinytlc.evaluate("out/mnv2", "/usr/share/datasets/fashion-mnist")["accuracy"])
    print(tinytlc.measure("out/mnv2")["total_bytes"])
    tinytlc.export_inference("out/mnv2", art.manifest, "model.onnx")

MODEL may also be an nn.Module in hand (`tinytlc.compile_model(net, "bias", "out/net")`); paths are
str or Path throughout; `tinytlc.load_artifact(DIR)` reads back an artifact and its manifest.
Bad input raises tinytlc.TinyTLError with the CLI's one-line message.
"""

__version__ = "0.1.0"

_API = {
    "compile_model": "tinytlc.pipeline", "load_artifact": "tinytlc.pipeline", "load_data": "tinytlc.data",
    "train": "tinytlc.runtime.train", "TrainConfig": "tinytlc.runtime.train", "evaluate": "tinytlc.runtime.train",
    "measure": "tinytlc.runtime.memory", "export_inference": "tinytlc.pipeline",
    "analyze": "tinytlc.accounting", "diff": "tinytlc.pass_diff", "TinyTLError": "tinytlc.errors",
}


def __getattr__(name: str):
    """Import on first use: `import tinytlc` stays light (torch and ORT load when needed)."""
    if name in _API:
        import importlib
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'tinytlc' has no attribute {name!r}")


__all__ = sorted(_API)
