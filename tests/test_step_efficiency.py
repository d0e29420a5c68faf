import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("groups,transposed", [(1, False), (4, False), (16, False), (4, True)])
def test_a_convolution_step_counts_three_forward_passes_of_flops(groups, transposed):
    """Forward, input gradient, weight gradient: each the forward convolution's multiply-adds, whatever
    the groups (torch's own backward formula counts a grouped weight gradient as a dense one)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from step_efficiency import conv_backward_flops

    cls = torch.nn.ConvTranspose2d if transposed else torch.nn.Conv2d
    conv = cls(16, 16, 3, padding=1, groups=groups)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    with FlopCounterMode(display=False) as fwd:
        conv(x)
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops}) as step:
        conv(x).sum().backward()
    forward = fwd.get_total_flops()
    assert forward == 2 * 2 * 16 * (16 // groups) * 9 * 64
    assert step.get_total_flops() == 3 * forward
    x.requires_grad_(False)  # the first layer of a network: no input gradient
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops}) as step:
        conv(x).sum().backward()
    assert step.get_total_flops() == 2 * forward
