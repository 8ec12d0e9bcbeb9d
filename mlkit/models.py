"""Convolutional building blocks shared by the from-scratch image models."""
import torch.nn.functional as F
from torch import nn


def conv_bn(c_in: int, c_out: int, stride: int = 1, groups: int = 1, act=nn.ReLU) -> nn.Sequential:
    """3x3 convolution (no bias: the batch norm has one), batch norm, activation."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(c_out),
                         act())


class BasicBlock(nn.Module):
    """ResNet's two 3x3 convolutions with an identity (or 1x1 projection) shortcut. `zero_init` starts the
    residual branch at zero (its last batch-norm scale), so each block begins as the identity: from scratch and
    with few epochs this trains faster (Goyal et al. 2017)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, zero_init: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        if zero_init:
            nn.init.zeros_(self.bn2.weight)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))
