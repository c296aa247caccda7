"""Triton kernels for the CUDA backend (backends/cuda.py), one module per primitive.

Importing this package imports torch and triton: only the CUDA backend does, never `import deeproots`. On a machine
without a GPU the same kernels run under Triton's interpreter (TRITON_INTERPRET=1, set before triton is imported)
over CPU torch tensors: that is how CI tests them against the numpy references.
"""
