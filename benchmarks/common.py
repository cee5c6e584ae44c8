"""What every comparison shares: timing (interleaved rounds, medians of per-round ratios), the
report table, and the set-up (data, model, resident batches, a short real trajectory on disk)."""
import copy
import os
import platform
import statistics
import time

import torch

import dldr
import models
import utils
# Each engine name is imported by one module of benchmarks/ only (these three here; the others by
# the one comparison using them), so moving a helper out of engine.py is a one-line change.
from distributed import Context
from engine import grad_scaler, train_epoch

MiB = 2**20


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------

def sync(device):
    # CUDA kernels run asynchronously: without this a timer would stop before the work is done
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn, device):
    """(seconds, fn's result) of ``fn()``, synchronised on CUDA before and after."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def interleave(variants, rounds, device):
    """Run every variant once per round, in the order A B | B A | A B ...; returns name -> list of
    (seconds, result) per round."""
    names = list(variants)
    results = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            results[name].append(timed(variants[name], device))
    return results


def secs(results, name):
    return [s for s, _ in results[name]]


def paired_ratio(num, den):
    """Median over rounds of num[r] / den[r] (a round's variants share the machine's state)."""
    return statistics.median(a / b for a, b in zip(num, den))


def ms(x):
    return f'{1e3 * x:.1f} ms' if x < 10 else f'{x:.2f} s'


def spread(values):
    """'median (min..max)' of a list of seconds."""
    return f'{ms(statistics.median(values))} ({ms(min(values))}..{ms(max(values))})'


def profile_variants(variants, args, part):
    """With --profile PART: torch.profiler (and cProfile) over one call of each variant, printing
    where the time goes (device kernels on CUDA, operators on CPU, Python functions)."""
    if part not in args.profile:
        return
    # imported here: only a --profile run pays for them
    import cProfile
    import io
    import pstats
    from torch.profiler import ProfilerActivity, profile
    cuda = args.device.type == 'cuda'
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    for name, fn in variants.items():
        with profile(activities=activities) as prof:
            wall, _ = timed(fn, args.device)
        events = prof.key_averages()
        line = f'  --- torch.profiler, one call of {name}: wall {ms(wall)}'
        if cuda:
            busy = sum(getattr(e, 'self_device_time_total', 0) for e in events) / 1e6
            line += f', GPU kernels busy {ms(busy)} ({busy / wall:.0%} of wall)'
        print(line)
        key = 'self_cuda_time_total' if cuda else 'self_cpu_time_total'
        print(events.table(sort_by=key, row_limit=args.profile_rows))
        profiler = cProfile.Profile()
        profiler.enable()
        timed(fn, args.device)
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats('tottime').print_stats(args.profile_rows)
        body = text.getvalue()
        print(f'  --- cProfile, one call of {name} (by own time):')
        print(body[body.find('   ncalls'):].rstrip())


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

class Report:
    """The rows of the final table: metric, ours, baseline, ratio, target, ok / MISS / SKIP."""

    def __init__(self):
        self.rows = []

    def add(self, metric, ours, baseline, ratio, op, target, unit='s', detail=None):
        ok = ratio <= target if op == '<=' else ratio >= target
        self.rows.append(dict(metric=metric, ours=ours, baseline=baseline, ratio=ratio,
                              target=f'{op} {target}', ok='ok' if ok else 'MISS', unit=unit,
                              detail=detail or {}))

    def skip(self, metric, why):
        self.rows.append(dict(metric=metric, ours=None, baseline=None, ratio=None, target='-',
                              ok=f'SKIP ({why})', unit='', detail={}))

    @staticmethod
    def _fmt(value, unit):
        if value is None:
            return '-'
        if unit == 'B':
            return f'{value:.0f} B'
        return f'{value:.1f}' if unit == 'MiB' else ms(value)

    @staticmethod
    def _ratio(ratio):
        if ratio is None:
            return '-'
        return f'{ratio:.3g}' if ratio < 0.01 else f'{ratio:.3f}'  # tiny byte ratios keep 3 digits

    def table(self):
        head = ['metric', 'ours', 'baseline', 'ratio', 'target', 'ok?']
        body = [[r['metric'], self._fmt(r['ours'], r['unit']), self._fmt(r['baseline'], r['unit']),
                 self._ratio(r['ratio']), r['target'], r['ok']] for r in self.rows]
        lines = ['| ' + ' | '.join(head) + ' |', '|' + '|'.join(['---'] * len(head)) + '|']
        lines += ['| ' + ' | '.join(row) + ' |' for row in body]
        return '\n'.join(lines)

    def misses(self):
        return [r['metric'] for r in self.rows if r['ok'] == 'MISS']


# ---------------------------------------------------------------------------------------------
# Set-up: device description, data, model, batches, training loop
# ---------------------------------------------------------------------------------------------

def cpu_model():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device):
    if device.type == 'cuda':
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return (f'{torch.cuda.get_device_name(index)} ({props.total_memory / 2**30:.0f} GiB, '
                f'{props.multi_processor_count} SMs), CUDA {torch.version.cuda}, '
                f'cuDNN {torch.backends.cudnn.version()}; host {cpu_model()}, {os.cpu_count()} CPUs')
    return f'{cpu_model()}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads'


def load_images(args, n_train):
    """uint8 NCHW train images, labels, mean, std: CIFAR-10 or synthetic with >= n_train images."""
    if args.data == 'cifar10':
        data = utils.read_cifar(args.data_dir, 'CIFAR10')
        if len(data.train_y) < n_train:
            print(f'note: only {len(data.train_y)} CIFAR-10 training images (< {n_train} asked)')
    else:
        data = utils.make_synthetic(seed=args.seed, n_train=n_train, n_test=16)
    return data


def build_model(arch, device, seed, channels_last=False):
    """The 10-class ``arch`` on ``device``, initialised from ``seed`` (the same weights in every
    process: the basis workers rebuild the model the trajectory was written from)."""
    torch.manual_seed(seed)
    model = models.get_model(arch, num_classes=10, in_channels=3).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def device_batches(data, args, batch_size, count, seed):
    """``count`` augmented, normalised batches of ``batch_size`` made by utils.DeviceLoader (cycling
    over epochs if needed), resident on the device."""
    loader = utils.DeviceLoader(data.train_x, data.train_y, batch_size, data.mean, data.std,
                                args.device, train=True, generator=torch.Generator().manual_seed(seed),
                                channels_last=args.channels_last)
    batches = []
    while len(batches) < count:
        for x, y in loader:
            if len(y) == batch_size:
                batches.append((x, y))
            if len(batches) == count:
                break
    return batches


class ToDevice:
    """A DataLoader whose batches are moved to the device as the reference's loop does."""

    def __init__(self, loader, device, channels_last):
        self.loader, self.device = loader, device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            yield (x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format),
                   y.to(self.device, non_blocking=True))


def local_context(device):
    """This process alone on ``device`` (no process group)."""
    return Context(device)


def make_scaler(args):
    """The GradScaler the training scripts use with these flags (fp16 on CUDA), else None."""
    return grad_scaler(args, args.device)


def train_steps(model, batches, optimizer, context, *, amp='off', scaler=None, before_step=None):
    """One pass of engine.train_epoch, the loop of train_sgd.py / train_psgd.py, over ``batches``;
    returns its (loss, accuracy)."""
    return train_epoch(model, batches, optimizer, context, amp=amp, scaler=scaler,
                       before_step=before_step)


def sgd_run(model, optimizer, batches, args, scaler=None, before_step=None):
    """A callable running :func:`train_steps` over ``batches`` with the flags' amp, in this process."""
    context = local_context(args.device)
    return lambda: train_steps(model, batches, optimizer, context, amp=args.amp, scaler=scaler,
                               before_step=before_step)


# ---------------------------------------------------------------------------------------------
# A short real trajectory on disk (comparison 2's basis, comparison 4's input)
# ---------------------------------------------------------------------------------------------

def write_trajectory(model0, data, args, folder):
    """Snapshot 0 = model0, then ``--traj-steps`` SGD steps (lr 0.1, momentum 0.9, wd 1e-4) between
    snapshots, saved as state_dicts 0.pt .. (t-1).pt as train_sgd.py writes them."""
    model = copy.deepcopy(model0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    steps = (args.snapshots - 1) * args.traj_steps
    batches = device_batches(data, args, args.traj_batch_size, steps, args.seed + 1)
    context = local_context(args.device)
    torch.save(model.state_dict(), utils.snapshot_path(folder, 0))
    losses = []
    for i in range(1, args.snapshots):
        chunk = batches[(i - 1) * args.traj_steps:i * args.traj_steps]
        losses.append(train_steps(model, chunk, optimizer, context, amp=args.amp)[0])
        torch.save(model.state_dict(), utils.snapshot_path(folder, i))
    return steps, losses
