"""Builds the one native extension, smoothprune._C (all metadata lives in pyproject.toml).

The build imports torch, so install with `pip install --no-build-isolation -e .` (the Makefile
does). CUDA kernels are compiled when CUDA is available or SMOOTHPRUNE_CUDA=1.
"""

import glob
import os
import sys

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("smoothprune", "csrc")


def _want_cuda() -> bool:
    flag = os.environ.get("SMOOTHPRUNE_CUDA")
    if flag is not None:
        return flag == "1"
    return torch.cuda.is_available()


def _openmp_flags() -> list[str]:
    """ATen's at::parallel_for is header code: with torch's OpenMP backend it runs chunks on
    several threads only in code compiled with OpenMP. Without -fopenmp every chunk of our CPU
    kernels would run on the calling thread."""
    if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
        return ["-fopenmp"]
    return []


def _extension():
    sources = sorted(glob.glob(os.path.join(CSRC, "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
    openmp = _openmp_flags()
    # never -ffast-math: it breaks the exact ties, the NaN/Inf checks and the float bit-pattern
    # order that the kernels rely on (docs/design.md §8)
    cxx_flags = ["-O3", "-std=c++20", "-fvisibility=hidden", *openmp]
    if _want_cuda() and cuda_sources:
        return CUDAExtension(
            "smoothprune._C",
            sources + cuda_sources,
            define_macros=[("SMOOTHPRUNE_WITH_CUDA", None)],
            extra_compile_args={
                "cxx": cxx_flags,
                # relaxed constexpr: pav.h's std::min/std::max run on the device too
                "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"],
            },
            extra_link_args=openmp,
        )
    return CppExtension("smoothprune._C", sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=openmp)


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
