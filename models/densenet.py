"""DenseNet-BC (Huang et al. 2017, "Densely Connected Convolutional Networks") for 32x32 inputs.

As in the reference code: a 3x3 stem conv of 2k channels (k the growth rate) replaces the 7x7/2
conv and max pool; four dense blocks of bottleneck layers (BN-ReLU-1x1 conv to 4k, BN-ReLU-3x3
conv to k, concatenated) are joined by transitions (BN, 1x1 conv halving the channels -- no
ReLU -- and 2x2 average pool); a final BN-ReLU, global pool and linear head.  densenet121 has
7.0M parameters at 100 classes.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Bottleneck(nn.Module):
    def __init__(self, in_planes, growth_rate):
        super().__init__()
        inner = 4 * growth_rate
        self.bottle_neck = nn.Sequential(
            nn.BatchNorm2d(in_planes), nn.ReLU(inplace=True), nn.Conv2d(in_planes, inner, 1, bias=False),
            nn.BatchNorm2d(inner), nn.ReLU(inplace=True), nn.Conv2d(inner, growth_rate, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.bottle_neck(x)], 1)


class Transition(nn.Module):
    def __init__(self, in_planes, planes):
        super().__init__()
        self.down_sample = nn.Sequential(nn.BatchNorm2d(in_planes), nn.Conv2d(in_planes, planes, 1, bias=False),
                                         nn.AvgPool2d(2))

    def forward(self, x):
        return self.down_sample(x)


class DenseNet(nn.Module):
    def __init__(self, blocks, growth_rate=32, num_classes=10, in_channels=3, reduction=0.5):
        super().__init__()
        channels = 2 * growth_rate
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.features = nn.Sequential()
        for i, n in enumerate(blocks):
            last = i == len(blocks) - 1
            block = nn.Sequential()
            for j in range(n):
                block.add_module(f'bottle_neck_layer_{j}', Bottleneck(channels, growth_rate))
                channels += growth_rate
            self.features.add_module(f'dense_block{i}' if last else f'dense_block_layer_{i}', block)
            if not last:
                self.features.add_module(f'transition_layer_{i}', Transition(channels, int(channels * reduction)))
                channels = int(channels * reduction)
        self.features.add_module('bn', nn.BatchNorm2d(channels))
        self.features.add_module('relu', nn.ReLU(inplace=True))
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.linear(F.adaptive_avg_pool2d(self.features(self.conv1(x)), 1).flatten(1))


def densenet121(num_classes=10, in_channels=3):
    """DenseNet-121: k=32, blocks [6, 12, 24, 16]."""
    return DenseNet((6, 12, 24, 16), 32, num_classes, in_channels)


def densenet161(num_classes=10, in_channels=3):
    """DenseNet-161: k=48, blocks [6, 12, 36, 24]."""
    return DenseNet((6, 12, 36, 24), 48, num_classes, in_channels)


def densenet169(num_classes=10, in_channels=3):
    """DenseNet-169: k=32, blocks [6, 12, 32, 32]."""
    return DenseNet((6, 12, 32, 32), 32, num_classes, in_channels)


def densenet201(num_classes=10, in_channels=3):
    """DenseNet-201: k=32, blocks [6, 12, 48, 32]."""
    return DenseNet((6, 12, 48, 32), 32, num_classes, in_channels)
