"""StyleGAN2 generators for resefa_fast, and loaders for the checkpoints people have (DESIGN.md §4, first step).

    >>> from resefa_fast import models
    >>> loaded = models.load("stylegan2-ffhq-config-f.pkl")   # NVIDIA pickle, rosinality .pt, Hammer/genforce .pth
    >>> G = loaded.generator                                   # StyleGAN2Generator, eval mode, noise_mode "const"
    >>> ws = G.map(torch.randn(1, G.z_dim), truncation_psi=0.7)  # [1, num_ws, w_dim]
    >>> img = G.synthesize(ws)                                 # [1, 3, R, R], about [-1, 1]

``StyleGAN2Generator`` implements the Jacobian engine's layer-skip protocol (``num_stages``, ``stage_ws_rows``,
``run_stage``), so ``resefa_fast.jacobian(G, ws)`` starts each W+ row's tangents at the block that first reads it.
"""
from .configs import CONFIGS, TINY, Config, build, config, random_stylegan2
from .loaders import FORMATS, LoadedModel, infer_kwargs, load, save
from .stylegan2 import ARCHITECTURES, NOISE_MODES, StyleGAN2Generator

__all__ = ["ARCHITECTURES", "CONFIGS", "Config", "FORMATS", "LoadedModel", "NOISE_MODES", "StyleGAN2Generator",
           "TINY", "build", "config", "infer_kwargs", "load", "random_stylegan2", "save"]

# BigGAN (biggan.py, biggan_loaders.py): its reader joins models.load through loaders.FAMILY_READERS
from . import loaders as _loaders  # noqa: E402
from .biggan import BIGGAN_CONFIGS, BigGANDeepGenerator, BigGANGenerator, build_biggan, random_biggan  # noqa: E402
from .biggan_loaders import read_biggan, save_biggan  # noqa: E402

if read_biggan not in _loaders.FAMILY_READERS:
    _loaders.FAMILY_READERS.append(read_biggan)
    _loaders.FAMILY_SAVERS.append(((BigGANGenerator, BigGANDeepGenerator), save_biggan))
__all__ += ["BIGGAN_CONFIGS", "BigGANDeepGenerator", "BigGANGenerator", "build_biggan", "random_biggan", "save_biggan"]

# StyleGAN3 (stylegan3.py, stylegan3_configs.py, stylegan3_loaders.py): its reader joins models.load the same way
from .loaders import FAMILY_READERS as _FAMILY_READERS  # noqa: E402
from .stylegan3 import StyleGAN3Generator, make_transform  # noqa: E402
from .stylegan3_configs import (STYLEGAN3_CONFIGS, STYLEGAN3_TINY, build_stylegan3, random_stylegan3,  # noqa: E402
                                stylegan3_config)
from .stylegan3_loaders import read as read_stylegan3  # noqa: E402
from .stylegan3_loaders import save as save_stylegan3  # noqa: E402

if read_stylegan3 not in _FAMILY_READERS:
    _FAMILY_READERS.append(read_stylegan3)
    _loaders.FAMILY_SAVERS.append((StyleGAN3Generator, save_stylegan3))
__all__ += ["STYLEGAN3_CONFIGS", "STYLEGAN3_TINY", "StyleGAN3Generator", "build_stylegan3", "make_transform",
            "random_stylegan3", "save_stylegan3", "stylegan3_config"]
