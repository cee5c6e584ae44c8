"""Wide ResNets (Zagoruyko & Komodakis 2016), WRN-d-k for 32x32 inputs.

A 3x3 stem of 16 channels, then three stages of (d-4)/6 pre-activation basic blocks of 16k, 32k
and 64k channels (stride 2 at the start of stages 2 and 3), final BN-ReLU, pool and FC; no
dropout.  ``wideresnet`` is WRN-40-10 as in weiaicunzai/pytorch-cifar100: 55.9M parameters at
100 classes.
"""
from .preact_resnet import PreActBlock, PreActResNet


def wide_resnet(depth, widen_factor, num_classes=10, in_channels=3):
    assert (depth - 4) % 6 == 0, 'WRN depth must be 6n+4'
    n, k = (depth - 4) // 6, widen_factor
    return PreActResNet(PreActBlock, (n, n, n), num_classes, in_channels,
                        stem_planes=16, widths=(16 * k, 32 * k, 64 * k))


def wideresnet(num_classes=10, in_channels=3):
    """WRN-40-10."""
    return wide_resnet(40, 10, num_classes, in_channels)
