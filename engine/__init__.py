"""kernelscope engine: a small CNN written from scratch in numpy."""
