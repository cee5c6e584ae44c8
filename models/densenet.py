"""DenseNet-BC (Huang et al. 2017, "Densely Connected Convolutional Networks") for 32x32 inputs.

A 3x3 stem conv of 2k channels (k the growth rate) replaces the 7x7/2 conv and max pool; four
dense blocks of bottleneck layers (BN-ReLU-1x1 conv to 4k, BN-ReLU-3x3 conv to k, concatenated)
are joined by transitions (BN-ReLU-1x1 conv halving the channels, 2x2 average pool); a final
BN-ReLU, global pool and FC.  As in weiaicunzai/pytorch-cifar100: densenet121 has 7.0M
parameters at 100 classes.
"""
import torch
import torch.nn as nn


def bn_relu_conv(in_planes, planes, kernel_size):
    return nn.Sequential(nn.BatchNorm2d(in_planes), nn.ReLU(inplace=True),
                         nn.Conv2d(in_planes, planes, kernel_size, padding=kernel_size // 2, bias=False))


class DenseLayer(nn.Module):
    def __init__(self, in_planes, growth_rate):
        super().__init__()
        self.branch = nn.Sequential(bn_relu_conv(in_planes, 4 * growth_rate, 1),
                                    bn_relu_conv(4 * growth_rate, growth_rate, 3))

    def forward(self, x):
        return torch.cat([x, self.branch(x)], 1)


class DenseNet(nn.Module):
    def __init__(self, blocks, growth_rate=32, num_classes=10, in_channels=3, reduction=0.5):
        super().__init__()
        channels = 2 * growth_rate
        layers = [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)]
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(channels, growth_rate))
                channels += growth_rate
            if i < len(blocks) - 1:
                out = int(channels * reduction)
                layers += [bn_relu_conv(channels, out, 1), nn.AvgPool2d(2)]
                channels = out
        layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


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
