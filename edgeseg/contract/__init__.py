"""The contracts between stages that more than one layer reads: torch-free, onnx imported lazily.

- ``metadata``: what an exported ONNX file says about itself (`ModelMetadata`,
  `TensorSpec`, metadata_props) and `load_onnx`, the one way to open an ONNX file
- ``manifest``: `EngineManifest`, the JSON beside every engine (`read_manifest`,
  `write_manifest`, `manifest_path`, `verify_engine_file`)

Export writes both, the runtime and bench read them; whether an engine fits this
machine (`edgeseg.runtime.compat`) is the runtime's question, not the contract's.
"""
