"""The torch-free vehicle side: engines, frame sources, the streaming pipeline and sinks.

This package installs on a Jetson with numpy, opencv, a CUDA binding and
TensorRT (or on a CPU box with ONNX Runtime) and nothing else: it never imports
torch or onnx, and TensorRT/CUDA only inside the functions that need them, so
``import edgeseg.runtime`` works everywhere.

- ``compat``: `MachineInfo`, `check_compatible` / `ensure_compatible` (does an engine's
  manifest, `edgeseg.contract.manifest`, fit this machine)
- ``backends``: `Backend`, `open_backend`, `OrtBackend`, `TrtBackend` (double-buffered,
  CUDA graphs), ``cuda_memory`` (cuda-python or pycuda)
- ``sources`` / ``sinks``: `open_source`, `open_sink` (files, folders, cameras, RTSP,
  GStreamer, synthetic drives; window, video, frames, labels, null)
- ``frames``: `open_frames`, N frames spread over any spec (with labels), for calibration,
  every accuracy gate, compare and bench
- ``stages``: frame <-> engine geometry (`fit_frame`, `prepare_frame`: the one resize rule),
  `SegmentStage`, `TranslateStage`, `StageChain`
- ``predictor``: `open_engine` (any ONNX file or engine on a device), `BackendPredictor`
- ``pipeline``: `StreamPipeline` (capture -> engines -> render/encode threads), `RunSummary`
- ``overlay``, ``timing``, ``latency`` (every latency statistic); ``run_cli``: `edgeseg run` and `run_stream`
"""
