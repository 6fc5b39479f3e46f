"""PyTorch files: the restricted unpickler, its opcode scan, tensor records, checkpoint unwrapping and the zip archive writer."""
