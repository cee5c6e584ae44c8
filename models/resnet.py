"""ImageNet ResNets (He et al. 2016) adapted to 32x32 inputs, as in weiaicunzai/pytorch-cifar100.

The 7x7/2 stem and its max pool are replaced by one 3x3/1 conv of 64 channels; four stages of
basic (18/34) or bottleneck (50/101/152) blocks of 64/128/256/512 planes follow, the last three
downsampling by 2, with 1x1 conv + BN projection shortcuts where the shape changes.
resnet18 has 11.2M parameters at 100 classes.  Not to be confused with the CIFAR ``resnet20``
family of :mod:`models.resnet_cifar`.

The block classes and :class:`ResNet` skeleton are shared by the SE, ResNeXt and stochastic-depth
variants.
"""
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(in_planes, planes, kernel_size, stride=1, groups=1, bias=False):
    """Conv (padding keeps the size at stride 1) followed by batch norm."""
    return nn.Sequential(
        nn.Conv2d(in_planes, planes, kernel_size, stride, kernel_size // 2, groups=groups, bias=bias),
        nn.BatchNorm2d(planes))


def projection(in_planes, planes, stride):
    """1x1 conv + BN shortcut where the shape changes, identity otherwise."""
    if stride != 1 or in_planes != planes:
        return conv_bn(in_planes, planes, 1, stride)
    return nn.Identity()


class ResidualBlock(nn.Module):
    """``relu(residual(x) + shortcut(x))``; subclasses build the two branches."""

    def forward(self, x):
        return F.relu(self.residual(x) + self.shortcut(x))


class BasicBlock(ResidualBlock):
    """Two 3x3 convs."""
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        out = planes * self.expansion
        self.residual = nn.Sequential(
            conv_bn(in_planes, planes, 3, stride), nn.ReLU(inplace=True), conv_bn(planes, out, 3))
        self.shortcut = projection(in_planes, out, stride)


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4."""
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        out = planes * self.expansion
        self.residual = nn.Sequential(
            conv_bn(in_planes, planes, 1), nn.ReLU(inplace=True),
            conv_bn(planes, planes, 3, stride), nn.ReLU(inplace=True),
            conv_bn(planes, out, 1))
        self.shortcut = projection(in_planes, out, stride)


def make_stages(block, blocks_per_stage, in_planes=64, widths=(64, 128, 256, 512)):
    """Flat ``nn.Sequential`` of all blocks (stride 2 at the start of every stage but the first)
    and its number of output channels."""
    layers = []
    for stage, (planes, n) in enumerate(zip(widths, blocks_per_stage)):
        for i in range(n):
            layers.append(block(in_planes, planes, 2 if stage > 0 and i == 0 else 1))
            in_planes = planes * block.expansion
    return nn.Sequential(*layers), in_planes


class ResNet(nn.Module):
    def __init__(self, block, blocks_per_stage, num_classes=10, in_channels=3):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(in_channels, 64, 3), nn.ReLU(inplace=True))
        self.layers, channels = make_stages(block, blocks_per_stage)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        out = self.layers(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def resnet18(num_classes=10, in_channels=3):
    """ResNet-18: basic blocks [2, 2, 2, 2]."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


def resnet34(num_classes=10, in_channels=3):
    """ResNet-34: basic blocks [3, 4, 6, 3]."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels)


def resnet50(num_classes=10, in_channels=3):
    """ResNet-50: bottleneck blocks [3, 4, 6, 3]."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)


def resnet101(num_classes=10, in_channels=3):
    """ResNet-101: bottleneck blocks [3, 4, 23, 3]."""
    return ResNet(Bottleneck, (3, 4, 23, 3), num_classes, in_channels)


def resnet152(num_classes=10, in_channels=3):
    """ResNet-152: bottleneck blocks [3, 8, 36, 3]."""
    return ResNet(Bottleneck, (3, 8, 36, 3), num_classes, in_channels)
