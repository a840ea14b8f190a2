"""tinytlc: compile a CNN into memory-lean ONNX Runtime training artifacts for TinyTL transfer
learning, train it on a CPU, and measure what a training step really costs.

The Python API mirrors the CLI:

    import tinytlc
    art = tinytlc.compile_model("mobilenetv2", "lite+bias", "out/mnv2", num_classes=10)
    data = tinytlc.load_data("/usr/share/datasets/fashion-mnist", 10, limit=2000)
    tinytlc.train(art.path, art.manifest, data, tinytlc.TrainConfig(epochs=1))
    print(tinytlc.measure(art.path)["total_bytes"])
    tinytlc.export_inference(art.path, art.manifest, "model.onnx")
"""

__version__ = "0.1.0"

_API = {
    "compile_model": "tinytlc.pipeline", "load_artifact": "tinytlc.pipeline", "load_data": "tinytlc.data",
    "train": "tinytlc.runtime.train", "TrainConfig": "tinytlc.runtime.train",
    "measure": "tinytlc.runtime.memory", "export_inference": "tinytlc.runtime.inference",
    "analyze": "tinytlc.accounting", "diff": "tinytlc.pass_diff", "TinyTLError": "tinytlc.errors",
}


def __getattr__(name: str):
    """Import on first use: `import tinytlc` stays light (torch and ORT load when needed)."""
    if name in _API:
        import importlib
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'tinytlc' has no attribute {name!r}")


__all__ = sorted(_API)
