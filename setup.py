"""Build step for the compiled CPU core: C sources under deeproots/kernels/csrc, our own code.

Everything else is declared in pyproject.toml.
"""

from glob import glob

from setuptools import Extension, setup

sources = sorted(glob("deeproots/kernels/csrc/*.c"))
extensions = [
    Extension(
        "deeproots.kernels._cpu",
        sources=sources,
        depends=sorted(glob("deeproots/kernels/csrc/*.h")),
        # Built on the machine that runs it, so the host's own SIMD (AVX2/AVX-512/NEON) is used.
        extra_compile_args=["-O3", "-march=native", "-pthread", "-std=c11"],
        extra_link_args=["-pthread"],
    )
] if sources else []

setup(ext_modules=extensions)
