"""ImageNet ResNets (He et al. 2016) adapted to 32x32 inputs, as in the DLDR reference code.

The 7x7/2 stem and its max pool are replaced by one 3x3/1 conv of 64 channels; four stages of
basic (18/34) or bottleneck (50/101/152) blocks of 64/128/256/512 planes follow, the last three
downsampling by 2, with 1x1 conv + BN projection shortcuts where the shape changes.
resnet18 has 11.2M parameters at 100 classes.  Not to be confused with the CIFAR ``resnet20``
family of :mod:`models.resnet_cifar`.  Module names follow the reference, so state_dicts load.

The :class:`ResNet` skeleton is shared by the SE, ResNeXt and stochastic-depth variants.
"""
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(in_planes, planes, kernel_size, stride=1, groups=1, bias=False):
    """Conv (padding keeps the size at stride 1) and batch norm, to splice into a Sequential."""
    return (nn.Conv2d(in_planes, planes, kernel_size, stride, kernel_size // 2, groups=groups, bias=bias),
            nn.BatchNorm2d(planes))


def projection(in_planes, planes, stride, bias=False):
    """1x1 conv + BN shortcut where the shape changes, identity otherwise."""
    if stride != 1 or in_planes != planes:
        return nn.Sequential(*conv_bn(in_planes, planes, 1, stride, bias=bias))
    return nn.Identity()


class BasicBlock(nn.Module):
    """Two 3x3 convs."""
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.residual_function = nn.Sequential(
            *conv_bn(in_planes, planes, 3, stride), nn.ReLU(inplace=True), *conv_bn(planes, planes, 3))
        self.shortcut = projection(in_planes, planes, stride)

    def forward(self, x):
        return F.relu(self.residual_function(x) + self.shortcut(x))


class BottleNeck(BasicBlock):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4."""
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        nn.Module.__init__(self)
        out = planes * self.expansion
        self.residual_function = nn.Sequential(
            *conv_bn(in_planes, planes, 1), nn.ReLU(inplace=True),
            *conv_bn(planes, planes, 3, stride), nn.ReLU(inplace=True), *conv_bn(planes, out, 1))
        self.shortcut = projection(in_planes, out, stride)


class ResNet(nn.Module):
    """3x3 conv-BN-ReLU stem, four stages of ``block``, global average pool, linear head.

    Subclasses rename the stem, stages and head (class attributes) to match the reference."""
    stem, stages, head = 'conv1', ('conv2_x', 'conv3_x', 'conv4_x', 'conv5_x'), 'fc'
    stem_bias = False

    def __init__(self, block, blocks_per_stage, num_classes=10, in_channels=3):
        super().__init__()
        setattr(self, self.stem, nn.Sequential(*conv_bn(in_channels, 64, 3, bias=self.stem_bias),
                                               nn.ReLU(inplace=True)))
        in_planes = 64
        for name, planes, n, stride in zip(self.stages, (64, 128, 256, 512), blocks_per_stage, (1, 2, 2, 2)):
            blocks = []
            for i in range(n):
                blocks.append(block(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes * block.expansion
            setattr(self, name, nn.Sequential(*blocks))
        setattr(self, self.head, nn.Linear(in_planes, num_classes))

    def forward(self, x):
        x = getattr(self, self.stem)(x)
        for name in self.stages:
            x = getattr(self, name)(x)
        return getattr(self, self.head)(F.adaptive_avg_pool2d(x, 1).flatten(1))


def resnet18(num_classes=10, in_channels=3):
    """ResNet-18: basic blocks [2, 2, 2, 2]."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


def resnet34(num_classes=10, in_channels=3):
    """ResNet-34: basic blocks [3, 4, 6, 3]."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels)


def resnet50(num_classes=10, in_channels=3):
    """ResNet-50: bottleneck blocks [3, 4, 6, 3]."""
    return ResNet(BottleNeck, (3, 4, 6, 3), num_classes, in_channels)


def resnet101(num_classes=10, in_channels=3):
    """ResNet-101: bottleneck blocks [3, 4, 23, 3]."""
    return ResNet(BottleNeck, (3, 4, 23, 3), num_classes, in_channels)


def resnet152(num_classes=10, in_channels=3):
    """ResNet-152: bottleneck blocks [3, 8, 36, 3]."""
    return ResNet(BottleNeck, (3, 8, 36, 3), num_classes, in_channels)
