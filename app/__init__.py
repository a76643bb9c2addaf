"""kernelscope server: FastAPI app around the numpy engine."""
