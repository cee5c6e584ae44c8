"""8. The basis stored compactly (``--shard-basis``, ``--basis-dtype``, ``--basis-device``): per
option, at 1 and 2 gloo ranks (tests/scaffold.spawn_local), the bytes of P each rank holds (the
storage of its tensors) and the bytes a P-SGD and a P-BFGS step pass to the collectives (a
counting Comm), both checked against their formulas; the P-SGD step time of each option relative
to float32 P, interleaved in one run (on CUDA with P on the CPU too); and the memory table of P at
model scale (arithmetic from the formula)."""
import copy
import os

import torch

import dldr
from engine import batch_closure
import models
import utils
from benchmarks.common import interleave, ms, paired_ratio, secs, train_steps
from distributed import Context
from tests.scaffold import CountingComm, spawn_local

OPTIONS = (('float32', False, None), ('bf16', False, None), ('fp16', False, None),
           ('int8', False, None), ('float32', True, None), ('bf16', True, None))
"""(--basis-dtype, --shard-basis, --basis-device) of the compared options; on CUDA also float32 on
the CPU (``cpu_option``)."""

BYTES = {'float32': 4, 'bf16': 2, 'fp16': 2, 'int8': 1}

SCALE_MODELS = (('ResNet-18', 11_689_512), ('ResNet-50', 25_557_032), ('ViT-B/16', 86_567_656),
                ('ViT-L/16', 304_326_632))
"""Trainable parameters of torchvision's resnet18 / resnet50 and timm's vit_base/large_patch16_224."""


def name(option):
    dtype, shard, device = option
    return dtype + (' sharded' if shard else '') + (f' on {device}' if device else '')


def basis_bytes_formula(d, n, dtype, shard, rank, world):
    """P's bytes on ``rank``: d x (its columns) entries (+ 4 d of row scales for fp16 / int8)."""
    lo, hi = dldr.shard_range(n, rank, world) if shard else (0, n)
    return d * (hi - lo) * BYTES[dtype] + (4 * d if dtype in ('fp16', 'int8') else 0)


def psgd_bytes_formula(d, n, shard, world):
    """Bytes a P-SGD step passes to the collectives on one rank: the d float32 coordinates, plus
    when sharded over W > 1 ranks the reduce-scatter of the gradient and the all-gather of the
    update, W ceil(n / W) float32 each."""
    return 4 * d + (8 * world * -(-n // world) if shard and world > 1 else 0)


def storage_steps(context, opts):
    """In each rank (spawned: module-level): per option, P's bytes, the collectives' bytes of k
    P-SGD steps and 2 P-BFGS steps, and the P-SGD step times (interleaved rounds)."""
    torch.set_num_threads(opts['threads'])
    device = context.device
    torch.manual_seed(0)
    model0 = models.get_model(opts['arch'], num_classes=10).to(device)
    data = utils.make_synthetic(n_train=opts['batch'] * 4, n_test=16)
    loader = utils.DeviceLoader(data.train_x, data.train_y, opts['batch'], data.mean, data.std,
                                device, train=True, generator=torch.Generator().manual_seed(1),
                                rank=context.rank, world_size=context.world_size)
    batches = list(loader)[:opts['steps']]
    n = sum(p.numel() for p in dldr.trainable_params(model0))
    d, k, world = opts['d'], opts['steps'], context.world_size
    out, variants = {'n': n, 'options': {}}, {}
    for option in opts['options']:
        dtype, shard, where = option
        comm = CountingComm(context.comm)
        # every rank computes the same P (a seeded random one); sharded, it keeps its columns only
        block = dldr.random_basis(d, n, 0, device=where or device, comm=context.comm,
                                  gather=not shard)
        subspace = dldr.store_basis(block, n, dtype=dtype, shard_comm=comm if shard else None,
                                    device=device)
        del block
        model = copy.deepcopy(model0)
        params = dldr.trainable_params(model)
        optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)

        def step(model=model, params=params, optimizer=optimizer, subspace=subspace, comm=comm):
            # (the loop's own epoch-meter all-reduce goes through the uncounted context.comm)
            return train_steps(model, batches, optimizer, context,
                               before_step=lambda: dldr.project_grads_(params, subspace, comm))
        comm.clear()
        step()  # warm-up, and the counted steps
        record = {'basis_bytes': subspace.basis_bytes,
                  'psgd_bytes': sum(b for _, b in comm.log) / len(batches)}
        pbfgs_model = copy.deepcopy(model0)
        pbfgs = dldr.PBFGS(dldr.trainable_params(pbfgs_model), subspace, comm=comm, max_trials=3)
        comm.clear()
        x, y = batches[0]
        for _ in range(2):
            pbfgs.step(batch_closure(pbfgs_model, [(x, y)], pbfgs))
        record['pbfgs_bytes'] = sum(b for _, b in comm.log) / 2
        record['pbfgs_trials'] = pbfgs.stats['trials'] / 2
        out['options'][name(option)] = record
        variants[name(option)] = step
    results = interleave(variants, opts['rounds'], device)
    for key in variants:
        out['options'][key]['step_s'] = [s / len(batches) for s in secs(results, key)]
    return out


def cpu_projection(d, n, report, repeats=5):
    """The work a step adds with P on the CPU (--basis-device cpu): coords + lift of a d x n P
    there, per byte of P, float32 and bf16 (in this process, the bench's threads)."""
    P = dldr.random_basis(d, n, 0)
    g, rates = torch.randn(n), {}
    spaces = {dtype: dldr.CompactSubspace(P, n, dtype=dtype) for dtype in ('float32', 'bf16')}
    results = interleave({dtype: lambda s=s: s.lift(s.coords(g)) for dtype, s in spaces.items()},
                         repeats + 1, torch.device('cpu'))
    resnet50 = SCALE_MODELS[1][1]
    for dtype, subspace in spaces.items():
        seconds = sorted(secs(results, dtype)[1:])[repeats // 2]  # median after the first round
        rates[dtype] = subspace.basis_bytes / seconds
        scaled = basis_bytes_formula(120, resnet50, dtype, False, 0, 1)
        print(f'  P on the CPU: coords + lift of a {d} x {n} {dtype} P: {ms(seconds)} = '
              f'{rates[dtype] / 1e9:.2f} GB of P per second; ResNet-50 at d = 120 '
              f'({scaled / 1e9:.1f} GB) would add ~{scaled / rates[dtype]:.1f} s per step')
    report.rows.append(dict(metric='CPU projection throughput, bf16 P / float32 P (GB/s; not rated)',
                            ours=None, baseline=None, ratio=rates['bf16'] / rates['float32'],
                            target='-', ok='info', unit='', detail=rates))


def memory_table(dims=(30, 40, 120), world=8):
    """Markdown table of P's bytes per rank (GB, 1e9) at model scale for each option."""
    head = ['model', 'd', 'float32', 'bf16 / fp16', 'int8',
            f'float32 sharded / {world}', f'bf16 sharded / {world}']
    lines = ['| ' + ' | '.join(head) + ' |', '| --- | ---: |' + ' ---: |' * (len(head) - 2)]
    for model, n in SCALE_MODELS:
        for d in dims:
            cells = [basis_bytes_formula(d, n, 'float32', False, 0, 1),
                     basis_bytes_formula(d, n, 'bf16', False, 0, 1),
                     basis_bytes_formula(d, n, 'int8', False, 0, 1),
                     basis_bytes_formula(d, n, 'float32', True, 0, world),
                     basis_bytes_formula(d, n, 'bf16', True, 0, world)]
            lines.append(f'| {model} | {d} | ' + ' | '.join(f'{c / 1e9:.1f} GB' for c in cells) + ' |')
    return '\n'.join(lines)


def run(args, shared, report):
    device = args.device
    cpus = os.cpu_count() or 1
    options = list(OPTIONS) + ([('float32', False, 'cpu')] if device.type == 'cuda' else [])
    d = args.n_components
    opts = dict(arch=args.arch, batch=args.batch_size, d=d, steps=args.steps,
                rounds=max(3, args.repeats // 5), options=options)
    print(f'\n== 8. basis storage: P bytes per rank, bytes per step, P-SGD step time per option '
          f'(batch {args.batch_size}, d = {d}) ==')
    if device.type == 'cpu':
        threads = args.threads or cpus  # 1 process x threads, 2 processes x threads / 2
        per_world = {1: spawn_local(storage_steps, 1, dict(opts, threads=threads), timeout=900),
                     2: spawn_local(storage_steps, 2, dict(opts, threads=max(1, threads // 2)),
                                    timeout=900)}
    else:  # one process on the device (the 2-rank gloo runs are the CPU's)
        per_world = {1: [storage_steps(Context(device), dict(opts, threads=torch.get_num_threads()))]}
    n = per_world[1][0]['n']
    print(f'  n = {n}; counted: the tensor each collective reduces or gathers on one rank')
    print('  | ranks | option | P bytes / rank (formula) | P-SGD bytes / step (formula) | '
          'P-BFGS bytes / step (trials / step) | P-SGD step | step / float32 step |')
    print('  |---|---|---|---|---|---|---|')
    for world, ranks in per_world.items():
        for option in options:
            key = name(option)
            dtype, shard, _ = option
            rows = [r['options'][key] for r in ranks]
            measured = [r['basis_bytes'] for r in rows]
            expected = [basis_bytes_formula(d, n, dtype, shard, rank, world) for rank in range(world)]
            step_bytes, step_formula = rows[0]['psgd_bytes'], psgd_bytes_formula(d, n, shard, world)
            base = ranks[0]['options'][name(('float32', False, None))]['step_s']
            ratio = paired_ratio(rows[0]['step_s'], base)
            print(f'  | {world} | {key} | {measured[0]:.0f} ({expected[0]}) | {step_bytes:.0f} '
                  f'({step_formula}) | {rows[0]["pbfgs_bytes"]:.0f} ({rows[0]["pbfgs_trials"]:.1f}) | '
                  f'{ms(sorted(rows[0]["step_s"])[len(rows[0]["step_s"]) // 2])} | {ratio:.3f} |')
            report.add(f'P bytes per rank / formula ({key}, {world} rank{"s" if world > 1 else ""})',
                       measured[0], expected[0], max(m / e for m, e in zip(measured, expected)),
                       '<=', 1.0, unit='B', detail=dict(measured=measured, expected=expected))
            report.add(f'P-SGD bytes per step / formula ({key}, {world} rank{"s" if world > 1 else ""})',
                       step_bytes, step_formula, step_bytes / step_formula, '<=', 1.0, unit='B')
            if key != name(('float32', False, None)):
                print_only = dict(step_s=rows[0]['step_s'], float32_s=base)
                report.rows.append(dict(metric=f'P-SGD step / float32-P step ({key}, {world} rank'
                                               f'{"s" if world > 1 else ""}; not rated)',
                                        ours=None, baseline=None, ratio=ratio, target='-', ok='info',
                                        unit='s', detail=print_only))
    if device.type != 'cuda':
        print('  (--basis-device cpu is only a choice next to a GPU: its step ratio is measured by '
              'python bench.py --device cuda --only 8)')
    cpu_projection(d, n, report)
    print(f'\n  memory of P per rank at model scale (GB = 1e9 bytes; formula d x n x bytes / W):\n')
    print(memory_table())
