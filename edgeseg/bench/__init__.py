"""``edgeseg bench``: latency, frame rate and mIoU parity of engines, with reports.

What a user runs on a Jetson, a desktop GPU or a CPU to decide which engine
ships. Small modules, imported lazily by the CLI:

- ``targets``: any model file (ONNX, ONNX Runtime engine, TensorRT plan, PyTorch
  checkpoint) as one thing to time and score, through the runtime's own engine
  stage (whose timings split preprocess / H2D / GPU compute / D2H / postprocess,
  trtexec's breakdown for the whole path); TensorRT skips with a reason where it
  cannot run
- ``machine``: what the numbers were measured on
- ``parity``: mIoU, per-class IoU deltas, pixel and boundary-band agreement of
  every variant against the fp32 reference, pass/fail per precision
- ``report``: bench.json, bench.md and the PNG plots
- ``cli``: the command

The timing loop and latency statistics live in `edgeseg.runtime.latency`, so
``build-engine --precision auto`` (export) measures candidates the same way
without importing bench, the top layer.
"""
