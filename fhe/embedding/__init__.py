"""Text embedders: ONNX Runtime and tokenizers at run time (onnx_embedder), torch only to build
or to export a bundle that ships no ONNX file (torch_embedder, onnx_export)."""
