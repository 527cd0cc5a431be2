"""resefa_fast: region-based semantic factorization (ReSeFa, Zhu et al., ICML 2022), fast and tested.

Importing this package never compiles anything; the CUDA extension is loaded lazily (see ``backend_info``).
"""
from .errors import ResefaError

__version__ = "0.1.0"
__all__ = ["ResefaError", "__version__"]
