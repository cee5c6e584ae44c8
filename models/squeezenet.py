"""SqueezeNet with simple bypass (Iandola et al. 2016) for 32x32 inputs.

As in weiaicunzai/pytorch-cifar100: a 3x3 conv of 96 channels and 2x2 max pool replace the
7x7/2 stem; fire modules 2-9 (1x1 squeeze, then 1x1 and 3x3 expands concatenated; every conv
followed by BN and ReLU) with max pools after fire4 and fire8 and identity bypasses around the
fire modules that keep the width (3, 5, 7, 9); a 1x1 conv to the classes and global average pool
make the logits.  0.78M parameters at 100 classes.
"""
import torch
import torch.nn as nn


def conv_bn_relu(in_planes, planes, kernel_size):
    return nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size, padding=kernel_size // 2),
                         nn.BatchNorm2d(planes), nn.ReLU(inplace=True))


class Fire(nn.Module):
    def __init__(self, in_planes, planes, squeeze_planes):
        super().__init__()
        self.squeeze = conv_bn_relu(in_planes, squeeze_planes, 1)
        self.expand1x1 = conv_bn_relu(squeeze_planes, planes // 2, 1)
        self.expand3x3 = conv_bn_relu(squeeze_planes, planes // 2, 3)
        self.bypass = in_planes == planes

    def forward(self, x):
        s = self.squeeze(x)
        out = torch.cat([self.expand1x1(s), self.expand3x3(s)], 1)
        return x + out if self.bypass else out


class SqueezeNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(in_channels, 96, 3), nn.MaxPool2d(2),
            Fire(96, 128, 16), Fire(128, 128, 16), Fire(128, 256, 32), nn.MaxPool2d(2),
            Fire(256, 256, 32), Fire(256, 384, 48), Fire(384, 384, 48), Fire(384, 512, 64), nn.MaxPool2d(2),
            Fire(512, 512, 64))
        self.classifier = nn.Sequential(nn.Conv2d(512, num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.classifier(self.features(x))


def squeezenet(num_classes=10, in_channels=3):
    """SqueezeNet v1.0 with simple bypass."""
    return SqueezeNet(num_classes, in_channels)
