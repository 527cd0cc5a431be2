"""Build and install resefa_fast.

The pure-Python package always installs. The CUDA extension ``resefa_fast._C`` is built when a CUDA toolkit is
found (``CUDA_HOME`` / ``nvcc``, never ``torch.cuda.is_available()``: a GPU-less build machine can still compile it)
and torch is importable at build time (install with ``pip install --no-build-isolation``).

Environment variables:
  RESEFA_BUILD_NO_CUDA=1   never build the extension
  TORCH_CUDA_ARCH_LIST     GPU architectures to compile for (default "9.0+PTX": Hopper SASS plus portable PTX)
  MAX_JOBS                 parallel compile jobs (ninja)
"""
import glob
import os
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _say(message):
    print(f"resefa_fast setup: {message}", file=sys.stderr)


def _find_toolkit():
    """Set CUDA_HOME from the real path of ``nvcc`` when it is unset (torch's own guess can be a wrong prefix such
    as /usr/local when nvcc is reached through a symlink); /usr/local/cuda last."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    import shutil

    # A toolkit has bin/nvcc beside include/; a wrapper script on the PATH (e.g. /usr/local/bin/nvcc) does not.
    for nvcc in ("/usr/local/cuda/bin/nvcc", shutil.which("nvcc") or ""):
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else ""
        if os.path.exists(nvcc) and os.path.isdir(os.path.join(home, "include")):
            os.environ["CUDA_HOME"] = home
            return


def _link_args(library_dirs, names):
    """``-l`` flags for cuBLAS / cuSOLVER: the nvidia-* wheels ship only versioned files (libcublas.so.13), so
    link those by file name (``-l:libcublas.so.13``) when no unversioned library is found; ``-lname`` otherwise."""
    args = []
    for name in names:
        versioned = sorted(glob.glob(os.path.join(d, f"lib{name}.so.*")) for d in library_dirs)
        versioned = [f for found in versioned for f in found if f.rsplit(".so.", 1)[1].isdigit()]
        plain = any(os.path.exists(os.path.join(d, f"lib{name}.so")) for d in library_dirs)
        args.append(f"-l{name}" if plain or not versioned else f"-l:{os.path.basename(versioned[0])}")
    return args


def cuda_extension():
    """Return ``(ext_modules, cmdclass)`` for resefa_fast._C, or empty ones with a one-line reason."""
    if os.environ.get("RESEFA_BUILD_NO_CUDA", "0") == "1":
        _say("RESEFA_BUILD_NO_CUDA=1: installing the pure-Python package only")
        return [], {}
    # csrc/driver/ is the CMake-only C++ driver (it has a main()); everything else under csrc/ is the extension.
    driver = os.path.join("csrc", "driver", "")
    core = sorted(f for f in glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True) if not f.startswith(driver))
    binding = sorted(f for f in glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True)
                     if not f.startswith(driver))
    if not core and not binding:
        return [], {}
    _find_toolkit()
    try:
        import torch  # noqa: F401
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        _say("torch is not importable at build time (use --no-build-isolation): no CUDA extension")
        return [], {}
    if CUDA_HOME is None:
        _say("no CUDA toolkit found (CUDA_HOME / nvcc): installing the pure-Python package only")
        return [], {}
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0+PTX")
    include_dirs = [os.path.join(HERE, "csrc", "include")]
    library_dirs = []
    # cuBLAS / cuSOLVER headers and libraries may live in the nvidia-* wheels rather than in the toolkit.
    try:
        import nvidia

        for root in nvidia.__path__:
            for sub in ("cu13", "cublas", "cusolver", "cusparse", "nvjitlink"):
                inc, lib = os.path.join(root, sub, "include"), os.path.join(root, sub, "lib")
                if os.path.isdir(inc):
                    include_dirs.append(inc)
                if os.path.isdir(lib):
                    library_dirs.append(lib)
    except ImportError:
        pass
    _say(f"building the CUDA extension with the toolkit at {CUDA_HOME} for {os.environ['TORCH_CUDA_ARCH_LIST']}")
    extension = CUDAExtension(
        name="resefa_fast._C",
        sources=binding + core,
        include_dirs=include_dirs,
        library_dirs=library_dirs,
        runtime_library_dirs=library_dirs,
        extra_link_args=_link_args(library_dirs, ("cublas", "cusolver")),
        extra_compile_args={"cxx": ["-O3", "-std=c++20"], "nvcc": ["-O3", "-std=c++17", "-lineinfo"]},
    )
    return [extension], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = cuda_extension()

setup(
    name="resefa_fast",
    version="0.1.0",
    description="Fast, tested ReSeFa (region-based semantic factorization in GANs) with a CUDA backend",
    long_description=open(os.path.join(HERE, "README.md")).read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["resefa_fast", "resefa_fast.*"]),
    package_data={"resefa_fast": ["data/*", "models/builtin_weights/*.pt"]},
    python_requires=">=3.9",
    install_requires=["torch>=2.1", "numpy", "tqdm", "pillow", "matplotlib"],
    extras_require={"test": ["pytest", "hypothesis"], "cupy": ["cupy"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={"console_scripts": ["resefa-fast=resefa_fast.cli:main"]},
)
