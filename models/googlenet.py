"""GoogLeNet / Inception-v1 (Szegedy et al. 2015) for 32x32 inputs.

CIFAR variant (kuangliu/pytorch-cifar, weiaicunzai/pytorch-cifar100): one 3x3 conv of 192
channels replaces the ImageNet stem; then inception modules 3a-3b, max pool, 4a-4e, max pool,
5a-5b with the paper's widths, global average pool, dropout 0.4 and FC.  Every conv is followed
by BN and ReLU, and the 5x5 branch is two 3x3 convs.  6.25M parameters at 100 classes (6.2M in
the paper's CIFAR-100 table).
"""
import torch
import torch.nn as nn


def conv_bn_relu(in_planes, planes, kernel_size):
    return nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size, padding=kernel_size // 2, bias=False),
                         nn.BatchNorm2d(planes), nn.ReLU(inplace=True))


class Inception(nn.Module):
    """Four parallel branches, concatenated: 1x1; 1x1-3x3; 1x1-3x3-3x3; 3x3 max pool-1x1."""

    def __init__(self, in_planes, n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5, pool_planes):
        super().__init__()
        self.branches = nn.ModuleList([
            conv_bn_relu(in_planes, n1x1, 1),
            nn.Sequential(conv_bn_relu(in_planes, n3x3_reduce, 1), conv_bn_relu(n3x3_reduce, n3x3, 3)),
            nn.Sequential(conv_bn_relu(in_planes, n5x5_reduce, 1), conv_bn_relu(n5x5_reduce, n5x5, 3),
                          conv_bn_relu(n5x5, n5x5, 3)),
            nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn_relu(in_planes, pool_planes, 1)),
        ])

    def forward(self, x):
        return torch.cat([branch(x) for branch in self.branches], 1)


class GoogLeNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(in_channels, 192, 3),
            Inception(192, 64, 96, 128, 16, 32, 32),
            Inception(256, 128, 128, 192, 32, 96, 64),
            nn.MaxPool2d(3, 2, 1),
            Inception(480, 192, 96, 208, 16, 48, 64),
            Inception(512, 160, 112, 224, 24, 64, 64),
            Inception(512, 128, 128, 256, 24, 64, 64),
            Inception(512, 112, 144, 288, 32, 64, 64),
            Inception(528, 256, 160, 320, 32, 128, 128),
            nn.MaxPool2d(3, 2, 1),
            Inception(832, 256, 160, 320, 32, 128, 128),
            Inception(832, 384, 192, 384, 48, 128, 128),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.4))
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def googlenet(num_classes=10, in_channels=3):
    """GoogLeNet (Inception-v1) with batch norm."""
    return GoogLeNet(num_classes, in_channels)
