"""``edgeseg bench``: latency, frame rate and mIoU parity of engines, with reports.

What a user runs on a Jetson, a desktop GPU or a CPU to decide which engine
ships. Small modules, imported lazily by the CLI:

- ``latency``: the timing loop (warm-up, N iterations, mean/p50/p90/p99/max,
  throughput) and the per-stage statistics
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

Only ``latency`` is imported by other packages (``export.variants``); it needs
numpy and the runtime's timing module alone.
"""
