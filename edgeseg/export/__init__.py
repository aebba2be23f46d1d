"""Checkpoint -> deployable ONNX (fp32 / fp16 / int8 Q-DQ), parity-checked.

Modules (imported explicitly; this package imports nothing heavy). The
contract it writes into every ONNX file and engine manifest lives in
`edgeseg.contract`, below both export and the runtime.

- ``onnx_export``: `ExportOptions`, `DeployWrapper`, `export_checkpoint`,
  `export_module`, `export_translator`, `read_metadata`
- ``parity``: `check_onnx_parity`, `sample_frames`, `ParityReport`
- ``predictors``: `open_predictor`, any model file (checkpoint, ONNX, engine) as a predictor
- ``export_cli``: the ``edgeseg export`` command (`add_arguments`, `run`, `export_gated`)
"""
