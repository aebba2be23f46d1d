"""Checkpoint -> deployable ONNX (fp32 / fp16 / int8 Q-DQ), parity-checked.

Modules (imported explicitly; this package imports nothing heavy so the
torch-free runtime can use `edgeseg.export.metadata`):

- ``metadata``: the contract stored in every ONNX file's metadata_props (torch-free)
- ``onnx_export``: `ExportOptions`, `DeployWrapper`, `export_checkpoint`,
  `export_module`, `export_translator`, `read_metadata`
- ``parity``: `check_parity`, `sample_frames`, `ParityThresholds`, `ParityReport`
- ``export_cli``: the ``edgeseg export`` command (`add_arguments`, `run`, `export_gated`)
"""
