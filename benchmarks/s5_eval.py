"""5. Evaluation vs training, per image: the two halves of a logged epoch.  Evaluation at the
default evaluation batch (utils.eval_batch_size) and at 1024, the previous default."""
import argparse
import copy
import statistics

import torch

import utils
from benchmarks.common import interleave, local_context, paired_ratio, secs, train_steps
from engine import evaluate


def run(args, shared, report):
    data, device, bs = shared.data, args.device, args.batch_size
    n = min(args.epoch_images, len(data.train_y))
    # the scripts' default: no --eval-batch-size given
    eval_bs = utils.eval_batch_size(argparse.Namespace(eval_batch_size=None), device)
    print(f'\n== 5. evaluation vs training per image ({n} images; training batch {bs}, evaluation '
          f'batch {eval_bs} = the default here, and 1024 = the previous default) ==')
    x, y = data.train_x[:n], data.train_y[:n]
    context = local_context(device)
    model = copy.deepcopy(shared.model0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train_loader = utils.DeviceLoader(x, y, bs, data.mean, data.std, device, train=True,
                                      generator=torch.Generator().manual_seed(args.seed),
                                      channels_last=args.channels_last)
    evals = {b: utils.DeviceLoader(x, y, b, data.mean, data.std, device, train=False,
                                   channels_last=args.channels_last) for b in sorted({eval_bs, 1024})}
    variants = {'train': lambda: train_steps(model, train_loader, opt, context, amp=args.amp)}
    for b, loader in evals.items():
        variants[f'eval_b{b}'] = lambda loader=loader: evaluate(model, loader, context, args.amp)
    interleave(variants, 1, device)  # warm-up
    res = interleave(variants, args.epoch_repeats, device)
    per_image = {k: [s / n for s in secs(res, k)] for k in variants}
    for k, v in per_image.items():
        print(f'  {k:10s} {1e3 * statistics.median(v):.3f} ms per image')
    report.add(f'eval / train per image (eval batch {eval_bs})',
               statistics.median(per_image[f'eval_b{eval_bs}']), statistics.median(per_image['train']),
               paired_ratio(per_image[f'eval_b{eval_bs}'], per_image['train']), '<=', 0.45,
               detail=per_image)
    if eval_bs != 1024:
        print(f'  (the previous default, batch 1024: '
              f'{paired_ratio(per_image["eval_b1024"], per_image["train"]):.3f} of a training image)')
