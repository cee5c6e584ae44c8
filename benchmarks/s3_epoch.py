"""3. One SGD epoch: utils.DeviceLoader (augmentation batched on the device, no workers) vs the
same epoch on pre-made resident batches (its floor) and vs the reference's torchvision
DataLoader (PIL + RandomCrop/Flip/ToTensor/Normalize per image)."""
import copy
import statistics

import torch

import utils
from benchmarks.common import (ToDevice, interleave, make_scaler, paired_ratio, profile_variants,
                               secs, sgd_run, spread, timed)


class PILDataset(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's access pattern: HWC uint8 array -> PIL image -> transform."""

    def __init__(self, x_nchw, y, transform):
        self.data = x_nchw.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = y.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        from PIL import Image  # in the worker processes, where it is used
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def drain(loader):
    """A callable iterating one epoch of ``loader`` without a model: the data alone."""
    def run():
        last = None
        for last in loader:
            pass
        return last
    return run


def run(args, shared, report):
    import torchvision.transforms as T  # the baseline's, not needed by the other comparisons
    data, model0 = shared.data, shared.model0
    n, bs, device = min(args.epoch_images, len(data.train_y)), args.batch_size, args.device
    cuda = device.type == 'cuda'
    print(f'\n== 3. one SGD epoch of {n} images, batch {bs}: DeviceLoader vs torchvision DataLoader '
          f'(num_workers {", ".join(map(str, args.workers))}; pin_memory={cuda}) vs pre-made batches ==')
    x, y = data.train_x[:n], data.train_y[:n]
    ours_loader = utils.DeviceLoader(x, y, bs, data.mean, data.std, device, train=True,
                                     generator=torch.Generator().manual_seed(args.seed),
                                     channels_last=args.channels_last)
    premade = list(utils.DeviceLoader(x, y, bs, data.mean, data.std, device, train=True,
                                      generator=torch.Generator().manual_seed(args.seed + 1),
                                      channels_last=args.channels_last))
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(data.mean, data.std)])
    dataset = PILDataset(x, y, transform)
    loaders = {'ours': ours_loader}
    for w in args.workers:
        loaders[f'dataloader_w{w}'] = ToDevice(torch.utils.data.DataLoader(
            dataset, batch_size=bs, shuffle=True, num_workers=w, pin_memory=cuda), device,
            args.channels_last)
    loaders['premade'] = premade

    data_only = interleave({k: drain(v) for k, v in loaders.items() if k != 'premade'}, 3, device)
    print('  data only, no model, per epoch: '
          + '; '.join(f'{k} {spread(secs(data_only, k))}' for k in data_only))
    runs = {}
    for name, loader in loaders.items():
        m = copy.deepcopy(model0)
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        scaler = make_scaler(args)
        timed(sgd_run(m, opt, premade[:3], args, scaler), device)  # warm-up of this copy
        runs[name] = sgd_run(m, opt, loader, args, scaler)
    rounds = args.epoch_repeats
    if cuda and not args.quick:
        interleave(runs, 1, device)  # a whole warm-up epoch each (cheap on a GPU)
    res = interleave(runs, rounds, device)
    profile_variants(runs, args, 3)
    print(f'  {rounds} rounds; {len(premade)} steps per epoch')
    for name in runs:
        values = secs(res, name)
        print(f'  {name:16s} {spread(values)}  = {n / statistics.median(values):.0f} img/s')
    ours, pre = secs(res, 'ours'), secs(res, 'premade')
    report.add(f'epoch ({n} img): ours / pre-made batches', statistics.median(ours),
               statistics.median(pre), paired_ratio(ours, pre), '<=', 1.05,
               detail=dict(ours_s=ours, premade_s=pre))
    for w in args.workers:
        tv = secs(res, f'dataloader_w{w}')
        report.add(f'epoch ({n} img) speed-up: DataLoader(w={w}) / ours', statistics.median(ours),
                   statistics.median(tv), paired_ratio(tv, ours), '>=', 1.5 if cuda else 1.25,
                   detail=dict(dataloader_s=tv, ours_s=ours, workers=w))
