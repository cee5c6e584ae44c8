"""Model registry: every architecture is reachable by its ``--arch`` name through :func:`get_model`.

Two families.  ``cifar`` (CIFAR, MNIST, synthetic): each entry of :data:`ARCHS` maps a name to a
constructor ``ctor(num_classes=..., in_channels=...) -> nn.Module`` for 32x32 inputs.  ``imagenet``
(ImageFolder data): torchvision's classification models by their torchvision name, randomly
initialised (pretrained weights are loaded by ``utils.build_model``); torchvision is imported only
when this family is asked for.  The table and torchvision's list are the single source of truth:
scripts, tests and the ``--help`` text all read them.  Note ``resnet18`` exists in both families:
the CIFAR variant (3x3 stem) and torchvision's.

A third source for both families: ``timm/NAME`` is timm's model NAME (any name of
``timm.list_models()``, optionally with a pretrained tag, ``NAME.TAG``), randomly initialised, for
the data's channels, classes and — where the model has a fixed input size (ViTs) — image size;
timm's own parameter names, so timm checkpoints load.  timm is imported only for such a name.
"""
import contextlib
import os
from types import MappingProxyType

from . import (attention, densenet, efficientnet, googlenet, inception_v3, inception_v4, mobilenet, nasnet,
               preact_resnet, resnet, resnet_cifar, resnext, senet, shufflenet, squeezenet, stochastic_depth,
               vgg, wide_resnet, xception)

ARCHS = MappingProxyType({
    # CIFAR ResNets (He et al. 2016, option-A shortcuts)
    'resnet8': resnet_cifar.resnet8,
    'resnet20': resnet_cifar.resnet20,
    'resnet32': resnet_cifar.resnet32,
    'resnet44': resnet_cifar.resnet44,
    'resnet56': resnet_cifar.resnet56,
    'resnet110': resnet_cifar.resnet110,
    'resnet1202': resnet_cifar.resnet1202,
    # CIFAR-100 zoo of the DLDR paper (names as in weiaicunzai/pytorch-cifar100)
    'vgg11': vgg.vgg11,
    'vgg13': vgg.vgg13,
    'vgg16': vgg.vgg16,
    'vgg19': vgg.vgg19,
    'resnet18': resnet.resnet18,
    'resnet34': resnet.resnet34,
    'resnet50': resnet.resnet50,
    'resnet101': resnet.resnet101,
    'resnet152': resnet.resnet152,
    'preactresnet18': preact_resnet.preactresnet18,
    'preactresnet34': preact_resnet.preactresnet34,
    'preactresnet50': preact_resnet.preactresnet50,
    'preactresnet101': preact_resnet.preactresnet101,
    'preactresnet152': preact_resnet.preactresnet152,
    'seresnet18': senet.seresnet18,
    'seresnet34': senet.seresnet34,
    'seresnet50': senet.seresnet50,
    'seresnet101': senet.seresnet101,
    'seresnet152': senet.seresnet152,
    'resnext50': resnext.resnext50,
    'resnext101': resnext.resnext101,
    'resnext152': resnext.resnext152,
    'wideresnet': wide_resnet.wideresnet,
    'stochasticdepth18': stochastic_depth.stochasticdepth18,
    'stochasticdepth34': stochastic_depth.stochasticdepth34,
    'stochasticdepth50': stochastic_depth.stochasticdepth50,
    'stochasticdepth101': stochastic_depth.stochasticdepth101,
    'densenet121': densenet.densenet121,
    'densenet161': densenet.densenet161,
    'densenet169': densenet.densenet169,
    'densenet201': densenet.densenet201,
    'googlenet': googlenet.googlenet,
    'inceptionv3': inception_v3.inceptionv3,
    'inceptionv4': inception_v4.inceptionv4,
    'inceptionresnetv2': inception_v4.inceptionresnetv2,
    'xception': xception.xception,
    'mobilenet': mobilenet.mobilenet,
    'mobilenetv2': mobilenet.mobilenetv2,
    'shufflenet': shufflenet.shufflenet,
    'shufflenetv2': shufflenet.shufflenetv2,
    'squeezenet': squeezenet.squeezenet,
    'nasnet': nasnet.nasnet,
    'efficientnet': efficientnet.efficientnet,
    'attention56': attention.attention56,
    'attention92': attention.attention92,
})


FAMILIES = ('cifar', 'imagenet')

SOME_PARAMETERS_WITHOUT_GRADIENT = frozenset(
    ['nasnet', 'attention56', 'attention92',  # layers the reference builds but never uses
     'stochasticdepth18', 'stochasticdepth34', 'stochasticdepth50', 'stochasticdepth101'])  # skipped blocks
"""Archs of which a training step can leave parameters without a gradient (DDP must look for them)."""


TIMM_PREFIX = 'timm/'


def is_timm(arch):
    return arch.startswith(TIMM_PREFIX)


def _timm():
    try:
        import timm
    except ImportError:
        raise ValueError('--arch timm/NAME needs the timm package, which is not installed: '
                         'pip install timm') from None
    return timm


def check_timm_arch(arch):
    """Raise ValueError unless ``arch`` is ``timm/NAME`` of a model timm has."""
    timm = _timm()
    name = arch[len(TIMM_PREFIX):]
    if not timm.is_model(name.split('.')[0]):
        raise ValueError(f'timm has no model {name!r} (the names of timm.list_models(), e.g. '
                         f'timm/resnet10t, timm/vit_tiny_patch16_224)')


def timm_pretrained_cfg(arch):
    """timm's pretrained config of ``timm/NAME`` (its default tag), or None."""
    from timm.models import get_pretrained_cfg
    return get_pretrained_cfg(arch[len(TIMM_PREFIX):])


def timm_normalisation(arch):
    """(mean, std) of the pretrained config of ``timm/NAME``, or None when it has none: the
    normalisation its pretrained weights expect, used for random initialisation too (one
    convention for a model whichever way it starts)."""
    cfg = timm_pretrained_cfg(arch)
    if cfg is None or not cfg.mean or not cfg.std:
        return None
    return tuple(cfg.mean), tuple(cfg.std)


def timm_cached_weights(arch):
    """The file of timm's pretrained weights of ``timm/NAME`` in the local Hugging Face cache.
    Raises FileNotFoundError naming the cache folder they belong in (nothing is downloaded),
    ValueError when timm has no pretrained weights for it."""
    import huggingface_hub
    cfg = timm_pretrained_cfg(arch)
    repo = cfg.hf_hub_id if cfg is not None else None
    if not repo:
        raise ValueError(f'timm has no pretrained weights of {arch[len(TIMM_PREFIX):]} on the '
                         f'Hugging Face hub; give --pretrained PATH')
    for filename in ('model.safetensors', 'pytorch_model.bin'):
        path = huggingface_hub.try_to_load_from_cache(repo, filename)
        if isinstance(path, str):
            return path
    folder = os.path.join(huggingface_hub.constants.HF_HUB_CACHE, 'models--' + repo.replace('/', '--'))
    raise FileNotFoundError(f'timm\'s weights of {arch[len(TIMM_PREFIX):]} are not in the local '
                            f'Hugging Face cache: put the hub repository {repo} (model.safetensors) '
                            f'in {folder} (huggingface-cli download {repo}, where there is network; '
                            f'HF_HUB_CACHE sets the cache), or give --pretrained PATH; nothing is '
                            f'downloaded')


@contextlib.contextmanager
def _hf_offline():
    """HF_HUB_OFFLINE=1 while timm loads weights: the hub is never asked (restored after)."""
    before = os.environ.get('HF_HUB_OFFLINE')
    os.environ['HF_HUB_OFFLINE'] = '1'
    try:
        yield
    finally:
        if before is None:
            del os.environ['HF_HUB_OFFLINE']
        else:
            os.environ['HF_HUB_OFFLINE'] = before


def _timm_model(arch, num_classes, in_channels, image_size, pretrained_file):
    timm = _timm()
    check_timm_arch(arch)
    name = arch[len(TIMM_PREFIX):]
    kwargs = dict(num_classes=num_classes, in_chans=in_channels)
    cfg = timm_pretrained_cfg(arch)
    # a model with a fixed input size (ViT: position embeddings per patch) is built for the
    # data's; the others (CNNs) take any size and accept no img_size
    if image_size is not None and cfg is not None and cfg.fixed_input_size:
        kwargs['img_size'] = image_size
    if pretrained_file is None:
        return timm.create_model(name, pretrained=False, **kwargs)
    # timm's own loading: classifier dropped for another class count, position embeddings
    # resized to img_size, the first conv adapted to in_chans
    with _hf_offline():
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={'file': pretrained_file},
                                 **kwargs)


def available_archs(family='cifar'):
    """Sorted list of every ``--arch`` name of ``family``."""
    if family == 'imagenet':
        import torchvision
        return sorted(torchvision.models.list_models(module=torchvision.models))
    if family != 'cifar':
        raise ValueError(f'unknown model family {family!r}; valid: {", ".join(FAMILIES)}')
    return sorted(ARCHS)


def get_model(arch, num_classes=10, in_channels=3, family='cifar', image_size=None, pretrained_file=None):
    """Build ``arch`` of ``family`` for ``num_classes`` classes and ``in_channels`` input channels
    (torchvision models take 3).  Raises ``ValueError`` naming the valid choices for an unknown name.
    ``timm/NAME`` (either family): timm's model, for ``image_size`` where it has a fixed input
    size, with timm's pretrained weights from ``pretrained_file`` (a local file) if given.
    """
    if is_timm(arch):
        return _timm_model(arch, num_classes, in_channels, image_size, pretrained_file)
    valid = available_archs(family)
    if arch not in valid:
        raise ValueError(f"unknown arch {arch!r}; valid names: {', '.join(valid)}")
    if family == 'imagenet':
        if in_channels != 3:
            raise ValueError(f'torchvision models take 3 input channels, not {in_channels}')
        import torchvision
        # (no auxiliary classifiers: their train-mode tuple outputs fit no loop here)
        extra = {'aux_logits': False, 'init_weights': True} if arch in ('googlenet', 'inception_v3') else {}
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **extra)
    return ARCHS[arch](num_classes=num_classes, in_channels=in_channels)
