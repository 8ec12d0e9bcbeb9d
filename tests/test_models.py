import pytest
import torch

from mlkit.models import BasicBlock, conv_bn


def test_zero_initialised_block_is_the_identity_on_nonnegative_input():
    block = BasicBlock(8, 8, zero_init=True).eval()
    x = torch.rand(2, 8, 5, 5)
    assert torch.allclose(block(x), x)
    assert not torch.allclose(BasicBlock(8, 8).eval()(x), x)


@pytest.mark.parametrize("c_in, c_out, stride, shape", [(8, 8, 1, (2, 8, 6, 6)), (8, 16, 2, (2, 16, 3, 3))])
def test_block_projects_its_shortcut_when_the_shape_changes(c_in, c_out, stride, shape):
    block = BasicBlock(c_in, c_out, stride)
    assert block(torch.rand(2, c_in, 6, 6)).shape == shape
    assert isinstance(block.shortcut, torch.nn.Identity) == (shape[1:] == (c_in, 6, 6))


def test_conv_bn_keeps_the_size_and_applies_the_activation():
    layer = conv_bn(3, 4, act=torch.nn.ReLU6).eval()
    out = layer(torch.randn(1, 3, 7, 7) * 100)
    assert out.shape == (1, 4, 7, 7) and out.min() >= 0 and out.max() <= 6
