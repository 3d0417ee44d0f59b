"""wan-export: the build side of wan-deploy (PyTorch reference, checkpoints, ONNX export, engine builds).

It may use `wan_rt` for host-side math shared with the runtime (RoPE tables, patchify, text handling);
`wan_rt` never imports this package.
"""

__version__ = "0.1.0"
