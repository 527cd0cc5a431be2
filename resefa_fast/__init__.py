"""resefa_fast: region-based semantic factorization (ReSeFa, Zhu et al., ICML 2022), fast and tested.

    >>> import resefa_fast as rf
    >>> result = rf.factorize(jacobian, "eyes", k=16)        # one region: result.directions [16, d]
    >>> bulk = rf.Factorizer(jacobian).factorize_many(boxes)  # thousands of regions: [R, 16, d]
    >>> store = rf.mine("G.pkl", ["eyes", "mouth"], out="store/", seeds=range(8))   # from a checkpoint
    >>> images = rf.edit("G.pkl", store.codes()[0], store.get(0)["directions"][0, :3])  # [3, 7, C, R, R]

Importing this package never compiles anything; the CUDA extension is loaded lazily (see :func:`backend_info`).
``resefa_fast.jacobian`` is the Jacobian function; its modules stay importable with ``from resefa_fast.jacobian import
readouts`` (``import resefa_fast.jacobian.engine as m`` does not work: the attribute is the function).
"""
__version__ = "0.1.0"

from . import models, reference, regions  # noqa: E402
from .api import Directions, Factorizer, factorize
from .backends import backend_info
from .editing import edit, in_out_change
from .errors import ResefaError
from .jacobian import Grams, JacobianInfo, Memmap, StagedGenerator, jacobian, readouts
from .mining import mine
from .pipeline import open_model
from .store import load_results
from .regions import PRESETS, Box, box_mask, masks_from_labels, preset

__all__ = [
    "Box", "Directions", "Factorizer", "Grams", "JacobianInfo", "Memmap", "PRESETS", "ResefaError",
    "StagedGenerator", "backend_info", "box_mask", "edit", "factorize", "in_out_change", "open_model", "jacobian",
    "load_results", "masks_from_labels", "mine", "models", "preset", "readouts", "reference", "regions",
    "__version__",
]
