"""Graph passes, one per module. `forward/` runs before ORT's autodiff (choosing what trains and
how the forward is written); training-graph passes run on the generated backward graph.

Every pass is an onnx_ir pass: `pass_(model) -> PassResult(model, modified)`, pure over the graph.
"""
