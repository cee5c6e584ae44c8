"""Pre-activation ResNets (He et al. 2016, "Identity Mappings in Deep Residual Networks").

As in the reference code: a biased 3x3 conv-BN-ReLU stem of 64 channels, stages of 64/128/256/512
planes whose blocks apply BN-ReLU before each (biased) conv and nothing after the addition,
biased 1x1 conv shortcuts where the shape changes (the bottleneck's stride sits on its first 1x1
conv), then pool and FC with no final BN.  preactresnet18 has 11.2M parameters at 100 classes.
"""
import torch.nn as nn

from .resnet import ResNet


def bn_relu_conv(in_planes, planes, kernel_size, stride=1):
    return (nn.BatchNorm2d(in_planes), nn.ReLU(inplace=True),
            nn.Conv2d(in_planes, planes, kernel_size, stride, kernel_size // 2))


def shortcut(in_planes, planes, stride):
    """1x1 conv where the shape changes, identity otherwise."""
    if stride != 1 or in_planes != planes:
        return nn.Conv2d(in_planes, planes, 1, stride)
    return nn.Identity()


class PreActBasic(nn.Module):
    """BN-ReLU-conv3x3 twice."""
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.residual = nn.Sequential(*bn_relu_conv(in_planes, planes, 3, stride), *bn_relu_conv(planes, planes, 3))
        self.shortcut = shortcut(in_planes, planes, stride)

    def forward(self, x):
        return self.residual(x) + self.shortcut(x)


class PreActBottleNeck(PreActBasic):
    """BN-ReLU-conv for 1x1 reduce (carrying the stride), 3x3, 1x1 expand by 4."""
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        nn.Module.__init__(self)
        self.residual = nn.Sequential(*bn_relu_conv(in_planes, planes, 1, stride), *bn_relu_conv(planes, planes, 3),
                                      *bn_relu_conv(planes, planes * 4, 1))
        self.shortcut = shortcut(in_planes, planes * 4, stride)


class PreActResNet(ResNet):
    stem, stages, head = 'pre', ('stage1', 'stage2', 'stage3', 'stage4'), 'linear'
    stem_bias = True


def preactresnet18(num_classes=10, in_channels=3):
    """PreAct-ResNet-18: basic blocks [2, 2, 2, 2]."""
    return PreActResNet(PreActBasic, (2, 2, 2, 2), num_classes, in_channels)


def preactresnet34(num_classes=10, in_channels=3):
    """PreAct-ResNet-34: basic blocks [3, 4, 6, 3]."""
    return PreActResNet(PreActBasic, (3, 4, 6, 3), num_classes, in_channels)


def preactresnet50(num_classes=10, in_channels=3):
    """PreAct-ResNet-50: bottleneck blocks [3, 4, 6, 3]."""
    return PreActResNet(PreActBottleNeck, (3, 4, 6, 3), num_classes, in_channels)


def preactresnet101(num_classes=10, in_channels=3):
    """PreAct-ResNet-101: bottleneck blocks [3, 4, 23, 3]."""
    return PreActResNet(PreActBottleNeck, (3, 4, 23, 3), num_classes, in_channels)


def preactresnet152(num_classes=10, in_channels=3):
    """PreAct-ResNet-152: bottleneck blocks [3, 8, 36, 3]."""
    return PreActResNet(PreActBottleNeck, (3, 8, 36, 3), num_classes, in_channels)
