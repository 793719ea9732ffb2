"""The torch bridge: run a Q/DQ graph as a torch module with differentiable fake-quant, fine-tune scales
(LSQ/LSQ+) or rounding (AdaRound), and write the result back into the ONNX graph.  torch is imported
lazily; without it the commands say how to install it."""
