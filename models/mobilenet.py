"""MobileNet v1 (Howard et al. 2017) and v2 (Sandler et al. 2018) at width 1.0 for 32x32 inputs.

mobilenet: a 3x3 conv of 32 channels, then 13 depthwise-separable layers (depthwise 3x3-BN-ReLU,
pointwise 1x1-BN-ReLU) widening to 1024, with the paper's four downsamplings but none in the stem:
3.3M parameters at 100 classes.  mobilenetv2: a 3x3 conv of 32 channels, the paper's 17 inverted
residual bottlenecks (expand 1x1, depthwise 3x3, linear 1x1 project; ReLU6), a 1x1 conv to 1280,
pool and FC; the stem and first stride-2 bottleneck keep stride 1 (CIFAR variant): 2.35M
parameters at 100 classes.
"""
import torch.nn as nn


def conv_bn_act(in_planes, planes, kernel_size, stride=1, groups=1, act=nn.ReLU):
    return nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size, stride, kernel_size // 2,
                                   groups=groups, bias=False),
                         nn.BatchNorm2d(planes), act(inplace=True))


def depthwise_separable(in_planes, planes, stride=1):
    return nn.Sequential(conv_bn_act(in_planes, in_planes, 3, stride, groups=in_planes),
                         conv_bn_act(in_planes, planes, 1))


# (output channels, stride) of MobileNet v1's separable layers
_V1_LAYERS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
              (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


class MobileNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        layers, channels = [conv_bn_act(in_channels, 32, 3)], 32
        for planes, stride in _V1_LAYERS:
            layers.append(depthwise_separable(channels, planes, stride))
            channels = planes
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


class InvertedResidual(nn.Module):
    def __init__(self, in_planes, planes, stride, expansion):
        super().__init__()
        hidden = in_planes * expansion
        layers = [conv_bn_act(in_planes, hidden, 1, act=nn.ReLU6)] if expansion != 1 else []
        self.branch = nn.Sequential(
            *layers, conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, planes, 1, bias=False), nn.BatchNorm2d(planes))
        self.use_residual = stride == 1 and in_planes == planes

    def forward(self, x):
        return x + self.branch(x) if self.use_residual else self.branch(x)


# (expansion t, output channels c, repeats n, stride s); the paper's stride 2 for c=24 is 1 here
_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
              (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        layers, channels = [conv_bn_act(in_channels, 32, 3, act=nn.ReLU6)], 32
        for t, c, n, s in _V2_STAGES:
            for i in range(n):
                layers.append(InvertedResidual(channels, c, s if i == 0 else 1, t))
                channels = c
        layers += [conv_bn_act(channels, 1280, 1, act=nn.ReLU6), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def mobilenet(num_classes=10, in_channels=3):
    """MobileNet v1, width 1.0."""
    return MobileNet(num_classes, in_channels)


def mobilenetv2(num_classes=10, in_channels=3):
    """MobileNet v2, width 1.0."""
    return MobileNetV2(num_classes, in_channels)
