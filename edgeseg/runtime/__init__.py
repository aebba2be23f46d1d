"""The torch-free vehicle side: engine manifests and inference backends.

This package installs on a Jetson with numpy, opencv, a CUDA binding and
TensorRT (or on a CPU box with ONNX Runtime) and nothing else: it never imports
torch or onnx, and TensorRT/CUDA only inside the functions that need them, so
``import edgeseg.runtime`` works everywhere.

- ``manifest``: `EngineManifest` (the JSON beside every engine), `MachineInfo`,
  `check_compatible` / `ensure_compatible`
- ``backends``: `Backend`, `open_backend`, `OrtBackend`, `TrtBackend`
"""
