"""Jacobian inputs: every layout, numpy / DLPack without copies, and clear errors."""
import numpy as np
import pytest
import torch

import resefa_fast as rf
from resefa_fast.inputs import as_jacobian


@pytest.mark.parametrize("shape,batched,expected", [
    ((60, 5), None, (1, 60, 5, None)),
    ((6, 10, 5), None, (1, 60, 5, (1, 6, 10))),
    ((3, 6, 10, 5), None, (1, 180, 5, (3, 6, 10))),
    ((6, 10, 1, 5), None, (1, 60, 5, (1, 6, 10))),
    ((3, 6, 10, 1, 5), False, (1, 180, 5, (3, 6, 10))),
    ((4, 6, 10, 1, 5), None, (4, 60, 5, (1, 6, 10))),  # the original file [N, H, W, 1, d]
    ((4, 3, 6, 10, 1, 5), None, (4, 180, 5, (3, 6, 10))),
    ((4, 60, 5), True, (4, 60, 5, None)),
])
def test_layouts(shape, batched, expected):
    jac = as_jacobian(np.random.rand(*shape).astype(np.float32), batched=batched)
    assert (jac.num_latents, jac.num_pixels, jac.dim, jac.grid) == expected


def test_numpy_and_dlpack_inputs_share_memory():
    array = np.random.rand(6, 10, 5).astype(np.float32)
    jac = as_jacobian(array)
    assert jac.values.data_ptr() == array.__array_interface__["data"][0]

    class DLPackOnly:  # what a cupy array looks like to us: only the DLPack protocol
        def __init__(self, tensor):
            self.tensor = tensor

        def __dlpack__(self, **kwargs):
            return self.tensor.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self.tensor.__dlpack_device__()

    source = torch.rand(6, 10, 5)
    jac = as_jacobian(DLPackOnly(source))
    assert jac.values.data_ptr() == source.data_ptr()


def test_numpy_result_equals_torch_result():
    from resefa_fast.testing import random_jacobian
    J = random_jacobian((10, 10), 12, seed=0).reshape(10, 10, 12)
    a = rf.factorize(J, (5, 5, 3, 3), k=3)
    b = rf.factorize(J.numpy(), (5, 5, 3, 3), k=3).numpy()
    np.testing.assert_allclose(b.directions, a.directions.numpy(), atol=1e-6)
    assert isinstance(b.eigenvalues, np.ndarray)


def test_half_precision_is_widened():
    jac = as_jacobian(torch.rand(8, 8, 4, dtype=torch.bfloat16))
    assert jac.values.dtype == torch.float32


@pytest.mark.parametrize("array,kwargs,match", [
    (np.ones((8, 8, 4), dtype=np.int32), {}, "floating-point"),
    (np.ones(8, dtype=np.float32), {}, "at least 2 dimensions"),
    (np.ones((2, 2, 2, 2, 2, 2, 2), dtype=np.float32), {}, "layouts"),
    (np.full((8, 8, 4), np.nan, dtype=np.float32), {}, "finite"),
    (np.ones((64, 4), dtype=np.float32), {"grid": (7, 9)}, "grid"),
    ("not an array", {}, "torch tensor"),
])
def test_bad_jacobians_are_clear_errors(array, kwargs, match):
    with pytest.raises(rf.ResefaError, match=match):
        as_jacobian(array, **kwargs)
