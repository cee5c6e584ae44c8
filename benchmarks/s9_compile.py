"""9. torch.compile and channels_last, side by side: eager (contiguous), eager channels_last,
compiled (utils.compile_model, inductor) and compiled + channels_last (on CUDA also
mode="reduce-overhead", CUDA graphs) for the SGD step, the P-SGD step (also with the projection
dldr.project_grads_ itself torch.compile'd), the P-BFGS step with its line search, and a whole epoch
with evaluation.  Besides the steady ratios: the compile warm-up (the seconds the first calls take
beyond the steady time of as many calls) and the break-even number of steps.

Dynamo settings of this section: static shapes (no automatic dynamic shapes, so the compiled and
compiled + channels_last models, which share dynamo's cache, each get their own static graph, as a
run of the scripts with one memory format does) and a raised recompile limit; dynamo's caches are
reset before each workload.  Inductor's on-disk cache is a fresh folder, so the first workload's
warm-up is a cold compile (what the first run on a machine pays); the later workloads reuse the
graphs they share with it (same shapes) from that cache, as a second run of a script does."""
import argparse
import contextlib
import copy
import math
import os
import statistics
import tempfile

import torch

import dldr
import utils
from benchmarks.common import (device_batches, interleave, local_context, ms, paired_ratio, secs,
                               spread, timed, train_steps)
from engine import batch_closure, evaluate

CIFAR10_STEPS = 391
"""Steps of one CIFAR-10 epoch at batch 128 (50,000 images): the unit of the break-even in epochs."""

CIFAR10_TRAIN = 50_000

LABELS = {'eager_cl': 'channels_last', 'compiled': 'compiled',
          'compiled_cl': 'compiled+channels_last', 'compiled_ro': 'reduce-overhead',
          'compiled_proj': 'compiled+compiled projection'}


def variant_specs(device):
    """name -> (compile mode or None, channels_last)."""
    specs = {'eager': (None, False), 'eager_cl': (None, True), 'compiled': ('default', False),
             'compiled_cl': ('default', True)}
    if device.type == 'cuda':
        specs['compiled_ro'] = ('reduce-overhead', False)  # CUDA graphs
    return specs


def memory_format(channels_last):
    return torch.channels_last if channels_last else torch.contiguous_format


def make_model(model0, mode, channels_last):
    """A copy of ``model0`` in the memory format asked (contiguous even when --channels-last made
    model0 channels_last), compiled in place by utils.compile_model when ``mode``."""
    model = copy.deepcopy(model0).to(memory_format=memory_format(channels_last))
    if mode:
        utils.compile_model(model, mode)
    return model


def in_format(batches, channels_last):
    fmt = memory_format(channels_last)
    return [(x.contiguous(memory_format=fmt), y) for x, y in batches]


def cycle(items, count, state):
    """The next ``count`` items of ``items``, round and round (``state``: a one-entry dict)."""
    out = []
    for _ in range(count):
        out.append(items[state['i'] % len(items)])
        state['i'] += 1
    return out


@contextlib.contextmanager
def compile_settings():
    """Static shapes, a recompile limit that the section's graphs cannot reach, a fresh inductor
    cache folder (cold compiles); everything restored afterwards."""
    saved = os.environ.get('TORCHINDUCTOR_CACHE_DIR')
    with tempfile.TemporaryDirectory(prefix='dldr_bench_inductor_') as folder:
        os.environ['TORCHINDUCTOR_CACHE_DIR'] = folder
        try:
            with torch._dynamo.config.patch(automatic_dynamic_shapes=False, recompile_limit=64):
                yield
        finally:
            torch._dynamo.reset()
            if saved is None:
                os.environ.pop('TORCHINDUCTOR_CACHE_DIR', None)
            else:
                os.environ['TORCHINDUCTOR_CACHE_DIR'] = saved


def break_even(warm, eager, fast):
    """Units (steps, epochs) after which ``warm`` seconds of warm-up are paid back by a unit that
    takes ``fast`` instead of ``eager`` seconds: inf when not faster."""
    saving = eager - fast
    return max(warm, 0.0) / saving if saving > 0 else math.inf


def fmt_units(x):
    return '∞' if math.isinf(x) else f'{x:,.0f}'


def measure(title, unit, makers, args, *, rounds, per_call, warm_calls):
    """Build every variant (``makers``: name -> () -> (run(count), model or None)), time its first
    ``warm_calls`` calls of one unit each (compiling there), one untimed interleaved round of
    ``per_call`` units, then ``rounds`` interleaved rounds.  Returns name -> dict(steady=[seconds
    per unit per round], warm=seconds beyond steady of the first calls, compiled=bool)."""
    device = args.device
    torch._dynamo.reset()  # a workload's graphs do not count against another's
    print(f'  -- {title}')
    runs, out = {}, {}
    for name, make in makers.items():
        run, model = make()
        firsts = [timed(lambda: run(1), device)[0] for _ in range(warm_calls)]
        runs[name] = run
        out[name] = dict(firsts=firsts, compiled=model is not None and utils.is_compiled(model),
                         wants_compile=model is not None and name.startswith('compiled'))
    interleave({n: (lambda run=run: run(per_call)) for n, run in runs.items()}, 1, device)
    res = interleave({n: (lambda run=run: run(per_call)) for n, run in runs.items()}, rounds, device)
    eager = None
    for name in runs:
        steady = [s / per_call for s in secs(res, name)]
        info = out[name]
        info['steady'] = steady
        info['warm'] = sum(info['firsts']) - warm_calls * statistics.median(steady)
        if name == 'eager':
            eager = steady
        line = f'    {name:14s} {spread(steady)} per {unit}'
        if eager is not None and name != 'eager':
            line += f'  = {paired_ratio(steady, eager):.3f} of eager'
        if info['wants_compile']:
            # the saving per unit: eager's median x (1 - the paired ratio), the rated figure
            info['fast'] = statistics.median(eager) * paired_ratio(steady, eager)
            be = break_even(info['warm'], statistics.median(eager), info['fast'])
            info['break_even'] = be
            line += (f'; warm-up {info["warm"]:.1f} s (first {warm_calls} {unit}s '
                     f'{sum(info["firsts"]):.1f} s), break-even {fmt_units(be)} {unit}s')
            if not info['compiled']:
                line += '  (FELL BACK TO EAGER)'
        print(line, flush=True)
    return out


def rate(report, what, results, unit, extra=None):
    """The report rows of one workload: every variant / eager, target <= 1.0 (a fast path must not
    be slower)."""
    eager = results['eager']['steady']
    for name, info in results.items():
        if name == 'eager':
            continue
        metric = f'{what}: {LABELS.get(name, name)} / eager'
        if info['wants_compile'] and not info['compiled']:
            report.skip(metric, 'compile fell back to eager')
            continue
        detail = dict(eager_s=eager, variant_s=info['steady'], first_calls_s=info['firsts'],
                      unit=unit, **(extra or {}))
        if info['wants_compile']:
            detail.update(warm_up_s=info['warm'], break_even=info['break_even'])
        report.add(metric, statistics.median(info['steady']), statistics.median(eager),
                   paired_ratio(info['steady'], eager), '<=', 1.0, detail=detail)


def run(args, shared, report):
    device, bs, k = args.device, args.batch_size, args.steps
    amp_pbfgs = 'off' if args.amp == 'fp16' else args.amp  # P-BFGS refuses fp16 (train_pbfgs.py)
    specs = variant_specs(device)
    print(f'\n== 9. torch.compile and channels_last ({args.arch}, batch {bs}, P-BFGS batch '
          f'{args.pbfgs_batch_size}, d = {args.n_components}; variants {", ".join(specs)}) ==')
    model0 = shared.model0
    n = sum(p.numel() for p in dldr.trainable_params(model0))
    P = dldr.random_basis(args.n_components, n, args.seed, device=device)
    batches = device_batches(shared.data, args, bs, max(k, 2), args.seed + 9)
    pool = device_batches(shared.data, args, args.pbfgs_batch_size, 4, args.seed + 10)
    context = local_context(device)
    warm_steps = 3  # reduce-overhead records its CUDA graphs on the 2nd-3rd call
    summary = {}

    with compile_settings():
        # --- SGD and P-SGD steps -----------------------------------------------------------
        def sgd_maker(mode, cl, project=None):
            def make():
                model = make_model(model0, mode, cl)
                params = dldr.trainable_params(model)
                if project is None:
                    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
                    before = None
                else:
                    opt = torch.optim.SGD(params, lr=1.0, momentum=0.9, weight_decay=0.0)
                    before = lambda: project(params, P)  # noqa: E731
                mine, state = in_format(batches, cl), {'i': 0}

                def run(count):
                    return train_steps(model, cycle(mine, count, state), opt, context,
                                       amp=args.amp, before_step=before)
                return run, (model if mode else None)
            return make

        res = measure(f'SGD step (batch {bs}): forward, backward, SGD step', 'step',
                      {name: sgd_maker(mode, cl) for name, (mode, cl) in specs.items()}, args,
                      rounds=args.repeats, per_call=k, warm_calls=warm_steps)
        rate(report, f'SGD step ({args.arch} b{bs})', res, 'step')
        summary['sgd'] = res

        # the projection alone: eager vs torch.compile(dldr.project_grads_)
        torch._dynamo.reset()
        model = make_model(model0, None, False)
        params = dldr.trainable_params(model)
        for p in params:
            p.grad = torch.randn_like(p)
        compiled_project = torch.compile(dldr.project_grads_)
        firsts = [timed(lambda: compiled_project(params, P), device)[0] for _ in range(warm_steps)]
        calls = 10
        proj = interleave({'eager': lambda: [dldr.project_grads_(params, P) for _ in range(calls)],
                           'compiled': lambda: [compiled_project(params, P) for _ in range(calls)]},
                          max(args.repeats, 3), device)
        pe, pc = ([s / calls for s in secs(proj, v)] for v in ('eager', 'compiled'))
        proj_warm = sum(firsts) - warm_steps * statistics.median(pc)
        print(f'  -- dldr.project_grads_ alone (d = {args.n_components}, n = {n}): eager {spread(pe)}, '
              f'torch.compile {spread(pc)} = {paired_ratio(pc, pe):.3f} of eager; warm-up '
              f'{proj_warm:.1f} s')
        report.add(f'project_grads_ (d={args.n_components}, n={n}): torch.compile / eager',
                   statistics.median(pc), statistics.median(pe), paired_ratio(pc, pe), '<=', 1.0,
                   detail=dict(eager_s=pe, compiled_s=pc, warm_up_s=proj_warm))
        summary['projection'] = dict(eager=pe, compiled=pc, warm=proj_warm)
        del model, params

        makers = {name: sgd_maker(mode, cl, dldr.project_grads_) for name, (mode, cl) in specs.items()}
        makers['compiled_proj'] = sgd_maker('default', False, torch.compile(dldr.project_grads_))
        res = measure(f'P-SGD step (batch {bs}, d = {args.n_components}, random orthonormal P)',
                      'step', makers, args, rounds=args.repeats, per_call=k, warm_calls=warm_steps)
        rate(report, f'P-SGD step ({args.arch} b{bs}, d={args.n_components})', res, 'step')
        summary['psgd'] = res

        # --- P-BFGS step (line search included) ----------------------------------------------
        def pbfgs_maker(mode, cl):
            def make():
                model = make_model(model0, mode, cl)
                optimizer = dldr.PBFGS(dldr.trainable_params(model), P, buffers=list(model.buffers()))
                mine, state = in_format(pool, cl), {'i': 0}

                def run(count):
                    for x, y in cycle(mine, count, state):  # as train_pbfgs.py (accumulate 1)
                        optimizer.step(batch_closure(model, [(x, y)], optimizer, amp_pbfgs))
                    return optimizer.stats['trials']
                run.optimizer = optimizer
                return run, (model if mode else None)
            return make

        pk = args.pbfgs_steps
        pbfgs_runs = {}

        def keep(name, make):
            def wrapped():
                run, model = make()
                pbfgs_runs[name] = run
                return run, model
            return wrapped

        res = measure(f'P-BFGS step (batch {args.pbfgs_batch_size}, line search; random P: the '
                      f'same trials in every variant)', 'step',
                      {name: keep(name, pbfgs_maker(mode, cl)) for name, (mode, cl) in specs.items()},
                      args, rounds=args.pbfgs_repeats, per_call=pk, warm_calls=warm_steps)
        trials = {name: r.optimizer.stats['trials'] / max(r.optimizer.stats['steps'], 1)
                  for name, r in pbfgs_runs.items()}
        print('    trials per step: ' + ', '.join(f'{n} {t:.2f}' for n, t in trials.items()))
        rate(report, f'P-BFGS step ({args.arch} b{args.pbfgs_batch_size})', res, 'step',
             extra=dict(trials=trials))
        summary['pbfgs'] = res
        del pbfgs_runs

        # --- a whole epoch with evaluation ---------------------------------------------------
        data = shared.data
        n_img = min(args.epoch_images, len(data.train_y))
        n_eval = max(n_img * 10_000 // CIFAR10_TRAIN, 1)  # CIFAR-10's test : train = 1 : 5
        eval_bs = utils.eval_batch_size(argparse.Namespace(eval_batch_size=None), device)  # the scripts' default
        x, y = data.train_x[:n_img], data.train_y[:n_img]

        def epoch_maker(mode, cl):
            def make():
                model = make_model(model0, mode, cl)
                opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
                train = utils.DeviceLoader(x, y, bs, data.mean, data.std, device, train=True,
                                           generator=torch.Generator().manual_seed(args.seed),
                                           channels_last=cl)
                test = utils.DeviceLoader(x[:n_eval], y[:n_eval], eval_bs, data.mean, data.std,
                                          device, train=False, channels_last=cl)

                def run(count):
                    for _ in range(count):
                        train_steps(model, train, opt, context, amp=args.amp)
                        scores = evaluate(model, test, context, args.amp)
                    return scores
                return run, (model if mode else None)
            return make

        steps_per_epoch = math.ceil(n_img / bs)
        res = measure(f'epoch: engine.train_epoch over {n_img} images ({steps_per_epoch} steps) + '
                      f'engine.evaluate over {n_eval} (batch {eval_bs})', 'epoch',
                      {name: epoch_maker(mode, cl) for name, (mode, cl) in specs.items()}, args,
                      rounds=args.epoch_repeats, per_call=1, warm_calls=2)
        rate(report, f'epoch+eval ({args.arch}, {n_img} img)', res, 'epoch')
        summary['epoch'] = res

    # --- break-even in CIFAR-10 epochs --------------------------------------------------------
    scale = CIFAR10_TRAIN / n_img
    print(f'  -- break-even in CIFAR-10 epochs ({CIFAR10_STEPS} steps of batch {bs} + evaluation of '
          f'10,000 images; savings from the paired ratios; warm-up = the SGD workload\'s cold '
          f'compile (+ the epoch workload\'s: its evaluation graph), an upper estimate):')
    eager_step = statistics.median(summary['sgd']['eager']['steady'])
    eager_epoch = statistics.median(summary['epoch']['eager']['steady'])
    for name in summary['sgd']:
        if not name.startswith('compiled') or name not in summary['epoch']:
            continue
        step, epoch = summary['sgd'][name]['fast'], summary['epoch'][name]['fast']
        warm_step = summary['sgd'][name]['warm']
        warm_epoch = summary['epoch'][name]['warm']
        by_step = break_even(warm_step, eager_step, step) / CIFAR10_STEPS
        by_epoch = break_even(warm_step + max(warm_epoch, 0.0), eager_epoch * scale, epoch * scale)
        print(f'    {name:14s} from the SGD step: {by_step:.2f} epochs (warm-up {warm_step:.1f} s, '
              f'saving {ms(eager_step - step)} a step); from the measured epoch with evaluation: '
              f'{by_epoch:.2f} epochs (warm-up {warm_step:.1f} + {warm_epoch:.1f} s, saving '
              f'{ms((eager_epoch - epoch) * scale)} a CIFAR-10 epoch)')

