"""Export of the tracking step for other runtimes (application layer; the library never imports it).

`onnx_export.export_onnx` writes six ONNX graphs and a manifest; `manifest.load_manifest` checks an
export folder before use.
"""
