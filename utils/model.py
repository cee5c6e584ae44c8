"""The model of a run: ``--arch`` built for the data (:func:`build_model`), ``--pretrained``
weights, ``--compile`` (:func:`compile_model`, eager again if compilation fails)."""
import os

import torch

import models
from errors import UserError

from .files import check_state_dict, load_file, weights_of
from .imagefolder import FolderData
from .loading import dataset_family


def build_model(args, data, device, pretrained=None):
    """``--arch`` for ``data`` on ``device``; ``pretrained``: True (torchvision's default weights,
    from the local torch hub cache) or the path of a state_dict / checkpoint to start from."""
    family = dataset_family(args.datasets)
    timm_file = None
    if pretrained is True and models.is_timm(args.arch):  # timm's weights, from the local cache only
        try:
            timm_file = models.timm_cached_weights(args.arch)
        except (FileNotFoundError, ValueError) as e:
            raise UserError(f'--pretrained: {e}') from None
        pretrained = None
    # the in-memory datasets have their images' size (32x32); ImageFolder data --image-size
    image_size = data.image_size if isinstance(data, FolderData) else data.train_x.shape[-1]
    try:
        model = models.get_model(args.arch, num_classes=data.num_classes, in_channels=data.channels,
                                 family=family, image_size=image_size, pretrained_file=timm_file)
    except ValueError as e:
        raise UserError(str(e)) from None
    if pretrained:
        path, state = pretrained_weights(pretrained, args.arch, family)
        check_state_dict(state, model, path)
        model.load_state_dict(state)
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if getattr(args, 'compile', None):
        compile_model(model, args.compile)
    return model


def compile_model(model, mode='default', backend='inductor', warn=print):
    """``torch.compile`` ``model`` in place (``nn.Module.compile``: the module is not wrapped, so
    its state_dict keys carry no ``_orig_mod.`` and snapshots, checkpoints and the reference's
    files load into compiled and eager models alike).  Compilation happens at the first call of
    each new graph; if it fails there, the model runs eager from then on after one ``warn`` line,
    and :func:`is_compiled` turns False."""
    model.compile(mode=None if mode == 'default' else mode, backend=backend)
    compiled = model._compiled_call_impl

    def call(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except Exception as e:  # dynamo's Unsupported, BackendCompilerFailed, ...
            if not _compile_error(e):
                raise
            model._compiled_call_impl = None
            first = (str(e).strip().splitlines() or [''])[0][:200]
            warn(f'warning: torch.compile failed for {type(model).__name__} ({type(e).__name__}: '
                 f'{first}); running eager')
            return model._call_impl(*args, **kwargs)

    model._compiled_call_impl = call
    return model


def _compile_error(e):
    """Whether ``e`` came from torch.compile (not from the model's own code or bad input)."""
    from torch import _dynamo
    return isinstance(e, (_dynamo.exc.BackendCompilerFailed, _dynamo.exc.Unsupported,
                          _dynamo.exc.InternalTorchDynamoError, _dynamo.exc.TorchRuntimeError))


def is_compiled(model):
    """Whether ``model`` (or the model a DDP wrapper holds) runs through torch.compile."""
    model = getattr(model, 'module', model)
    return getattr(model, '_compiled_call_impl', None) is not None


def pretrained_weights(spec, arch, family):
    """(path, state_dict) of ``--pretrained``: a file, or (``spec`` True) torchvision's default
    weights of ``arch``, which must be in the local torch hub cache: nothing is downloaded."""
    path = spec
    if spec is True:
        if family != 'imagenet':
            raise UserError('--pretrained without a file means torchvision\'s ImageNet weights '
                            '(--datasets ImageNet only); give --pretrained PATH for a weights file')
        import torchvision
        try:
            url = torchvision.models.get_model_weights(arch).DEFAULT.url
        except (ValueError, AttributeError, KeyError):
            raise UserError(f'torchvision has no pretrained weights for {arch}') from None
        path = os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(url))
        if not os.path.isfile(path):
            raise UserError(f'--pretrained: {path} is missing; download {url} and put it there '
                            f'(nothing is downloaded automatically), or give --pretrained PATH')
    if str(path).endswith('.safetensors'):  # timm's hub files (safetensors comes with timm)
        if not os.path.isfile(path):
            raise UserError(f'missing weights file: {path}')
        from safetensors import SafetensorError
        from safetensors.torch import load_file as load_safetensors
        try:
            return path, load_safetensors(path)
        except (SafetensorError, OSError) as e:
            raise UserError(f'corrupt or truncated weights file: {path} ({str(e)[:120]})') from None
    return path, weights_of(load_file(path, '--pretrained weights file'))
