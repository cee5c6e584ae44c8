"""``--arch timm/NAME``: timm's models through the whole sequence SGD -> snapshots -> P-SGD and
P-BFGS on the offline synthetic data (a tiny ViT at the data's 32x32, random init), checked
against timm's own models built directly; normalisation from timm's pretrained config;
``--pretrained`` from a local Hugging Face cache only (a hand-made cache here: nothing is
downloaded) or from a file.
"""
import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from helpers import (CHILD_ENV, RUNNER, SMALL, assert_one_line_error, in_process, patch_synthetic,
                     run_in_process, run_with_data)

import flags
import utils

timm = pytest.importorskip('timm')

# timm's smallest ViT (64 wide, 6 blocks, 0.3M parameters; pretrained tag r160_in1k): 16x16
# patches of a 32x32 image, 4 tokens, cheap on the CPU; the same VisionTransformer class as vit_tiny
VIT = 'test_vit'
COMMON = ['--datasets', 'synthetic', '--arch', f'timm/{VIT}', *SMALL]


def shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


def timm_vit(**kwargs):
    return timm.create_model(VIT, pretrained=False, num_classes=10, img_size=32, **kwargs)


# The runs call main(argv) in-process (as the scripts' __main__) on the synthetic data generated
# once (conftest.py); those that need an environment of their own (HF_HUB_CACHE, read when
# huggingface_hub is imported) or torchrun run tests/fixtures/run_script.py with that data.

@pytest.fixture(scope='module')
def vit_trajectory(tmp_path_factory, small_synthetic):
    """A ViT's SGD trajectory, snapshots 0..2."""
    path = tmp_path_factory.mktemp('vit')
    proc = run_in_process(small_synthetic, 'train_sgd', *COMMON, '--epochs', '2', '--lr', '0.01',
                          '--save-dir', path)
    assert proc.returncode == 0, proc.stderr
    return path


def test_vit_sgd_snapshots_psgd_pbfgs(vit_trajectory, small_synthetic):
    tmp_path = vit_trajectory
    expected = shapes(timm_vit().state_dict())
    for k in range(3):  # timm's own names and shapes: a timm checkpoint loads as it is
        snap = torch.load(tmp_path / f'{k}.pt', map_location='cpu', weights_only=True)
        assert shapes(snap) == expected
    model = timm_vit()
    model.load_state_dict(snap)  # strict

    subspace = ['--params_start', '0', '--params_end', '3', '--n_components', '2', '--epochs', '1']
    proc = run_in_process(small_synthetic, 'train_psgd', *COMMON, *subspace, '--lr', '0.1',
                          '--save-dir', tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = run_in_process(small_synthetic, 'train_pbfgs', *COMMON, *subspace, '--batch-size', '256',
                          '--save-dir', tmp_path)
    assert proc.returncode == 0, proc.stderr
    start = torch.load(tmp_path / '0.pt', map_location='cpu', weights_only=True)
    for tag in ('psgd_d2_0-3', 'pbfgs_d2_0-3'):
        metrics = json.loads((tmp_path / f'metrics_{tag}.json').read_text())
        assert len(metrics['epochs']) == 1 and 0 <= metrics['final_test_acc'] <= 100
        assert metrics['n_parameters'] == sum(p.numel() for p in timm_vit().parameters())
        final = torch.load(tmp_path / f'{tag}.pt', map_location='cpu', weights_only=True)
        assert shapes(final) == expected
        assert all(torch.isfinite(v).all() for v in final.values())
        assert any(not torch.equal(final[k], start[k]) for k in start)  # it trained


def test_cnn_and_vit_are_timms_models_with_its_normalisation(synthetic, monkeypatch):
    """utils.build_model / load_data against timm.create_model and timm's pretrained configs."""
    from timm.models import get_pretrained_cfg
    patch_synthetic(monkeypatch, synthetic)  # (generated once per session)
    for name, kwargs in (('resnet10t', {}), (VIT, {'img_size': 32})):
        parser = flags.common_parser('', epochs=1)
        flags.add_sgd_args(parser)
        args = flags.finish_sgd_args(parser.parse_args(
            ['--datasets', 'synthetic', '--arch', f'timm/{name}', '--smalldatasets', '0.01']))
        data = utils.load_data(args)
        cfg = get_pretrained_cfg(name)
        assert (data.mean, data.std) == (tuple(cfg.mean), tuple(cfg.std))
        model = utils.build_model(args, data, torch.device('cpu'))
        assert shapes(model.state_dict()) == shapes(
            timm.create_model(name, pretrained=False, num_classes=10, **kwargs).state_dict())
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert get_pretrained_cfg(VIT).mean == (0.5, 0.5, 0.5)  # (not the ImageNet default: it matters)


def test_unknown_timm_model_and_missing_cache_are_one_error_line(tmp_path, capsys, small_synthetic_file):
    result = in_process(capsys, 'train_sgd', '--datasets', 'synthetic', '--arch', 'timm/no_such_net',
                        '--save-dir', tmp_path)
    assert_one_line_error(result, 'no_such_net')
    cache = tmp_path / 'hf'
    env = {**CHILD_ENV, 'HF_HUB_CACHE': str(cache)}
    proc = run_with_data(small_synthetic_file, 'train_sgd', *COMMON, '--pretrained', '--epochs', '0',
                         '--save-dir', tmp_path / 'x', env=env)
    from timm.models import get_pretrained_cfg
    repo = get_pretrained_cfg(VIT).hf_hub_id
    assert_one_line_error(proc, str(cache / ('models--' + repo.replace('/', '--'))), '--pretrained PATH')
    assert not (tmp_path / 'x' / '0.pt').exists()


def test_pretrained_from_the_local_cache_and_from_a_file(tmp_path, small_synthetic, small_synthetic_file):
    from safetensors.torch import save_file
    from timm.models import get_pretrained_cfg
    # a hub cache as huggingface_hub lays it out, holding "pretrained" ImageNet weights (224, 1000)
    repo = get_pretrained_cfg(VIT).hf_hub_id
    folder = tmp_path / 'hf' / ('models--' + repo.replace('/', '--'))
    (folder / 'refs').mkdir(parents=True)
    (folder / 'refs' / 'main').write_text('0' * 40)
    (folder / 'snapshots' / ('0' * 40)).mkdir(parents=True)
    torch.manual_seed(3)
    imagenet = timm.create_model(VIT, pretrained=False).state_dict()
    save_file(imagenet, folder / 'snapshots' / ('0' * 40) / 'model.safetensors')

    env = {**CHILD_ENV, 'HF_HUB_CACHE': str(tmp_path / 'hf'), 'HF_HUB_OFFLINE': '1'}
    proc = run_with_data(small_synthetic_file, 'train_sgd', *COMMON, '--pretrained', '--epochs', '0',
                         '--save-dir', tmp_path / 'cached', env=env)
    assert proc.returncode == 0, proc.stderr
    start = torch.load(tmp_path / 'cached' / '0.pt', map_location='cpu', weights_only=True)
    assert shapes(start) == shapes(timm_vit().state_dict())
    for k in start:  # the body is the cached weights; the head is new (10 classes) and the
        if k.startswith(('blocks.', 'patch_embed.', 'norm.', 'cls_token')):  # position
            assert torch.equal(start[k], imagenet[k]), k                   # embedding resized
    width = timm_vit().embed_dim
    assert start['head.weight'].shape == (10, width) and start['pos_embed'].shape == (1, 5, width)

    torch.manual_seed(4)
    mine = {k: v.contiguous() for k, v in timm_vit().state_dict().items()}
    save_file(mine, tmp_path / 'mine.safetensors')
    proc = run_in_process(small_synthetic, 'train_sgd', *COMMON, '--pretrained', tmp_path / 'mine.safetensors',
                          '--epochs', '0', '--save-dir', tmp_path / 'file')
    assert proc.returncode == 0, proc.stderr
    start = torch.load(tmp_path / 'file' / '0.pt', map_location='cpu', weights_only=True)
    assert start.keys() == mine.keys() and all(torch.equal(start[k], mine[k]) for k in mine)


def test_vit_psgd_under_torchrun_equals_one_process(vit_trajectory, tmp_path, small_synthetic,
                                                   small_synthetic_file):
    """P-SGD of the ViT by 2 gloo ranks under torchrun ends at the 1-process run's weights (the
    ranks split each global batch; a ViT has no BatchNorm and no dropout here) to float rounding."""
    import shutil
    import subprocess
    args = [*COMMON, '--params_start', '0', '--params_end', '3', '--n_components', '2', '--epochs',
            '1', '--lr', '0.1', '--bn-update', '0', '--device', 'cpu']
    for name in ('one', 'two'):
        (tmp_path / name).mkdir()
        for k in range(3):
            shutil.copy(vit_trajectory / f'{k}.pt', tmp_path / name / f'{k}.pt')
    one = run_in_process(small_synthetic, 'train_psgd', *args, '--save-dir', tmp_path / 'one')
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone',
                          '--nproc_per_node', '2', RUNNER, 'package', '--synthetic', small_synthetic_file,
                          'train_psgd', *args, '--save-dir', tmp_path / 'two'], cwd=ROOT, env=CHILD_ENV,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    a = torch.load(tmp_path / 'one' / 'psgd_d2_0-3.pt', map_location='cpu', weights_only=True)
    b = torch.load(tmp_path / 'two' / 'psgd_d2_0-3.pt', map_location='cpu', weights_only=True)
    start = torch.load(vit_trajectory / '0.pt', map_location='cpu', weights_only=True)
    assert a.keys() == b.keys() and any(not torch.equal(a[k], start[k]) for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    metrics = json.loads((tmp_path / 'two' / 'metrics_psgd_d2_0-3.json').read_text())
    assert metrics['world_size'] == 2
