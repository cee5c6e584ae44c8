"""7. ImageFolder loading (decode + augment of JPEG files, no model): utils.FolderLoader (the
ImageNet path) vs the reference's torchvision ImageFolder + RandomResizedCrop/Flip/ToTensor/
Normalize DataLoader at the same worker count, in images per second.  The decode alone (PIL vs
torchvision.io.decode_jpeg) is printed for the record; it is not rated: we decode with PIL so that
the transforms after it are the reference's, whichever decoder is faster."""
import os
import statistics
import tempfile

import torch
import torch.nn.functional as F

import utils
from benchmarks.common import ToDevice, interleave, ms, paired_ratio, secs, spread, sync


def write_jpeg_folder(root, n, classes=4, seed=0):
    """``n`` JPEG files of about ImageNet's mean size (~400x350, quality 90; smooth random content)
    in ``root/train/<class>/``."""
    from PIL import Image
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        h, w = 300 + int(torch.randint(100, (1,), generator=g)), 350 + int(torch.randint(100, (1,), generator=g))
        low = torch.rand(1, 3, h // 16, w // 16, generator=g)
        img = F.interpolate(low, size=(h, w), mode='bilinear', align_corners=False)[0]
        img = (img + 0.05 * torch.randn(img.shape, generator=g)).clamp(0, 1)
        folder = os.path.join(root, 'train', f'c{i % classes}')
        os.makedirs(folder, exist_ok=True)
        Image.fromarray((img.permute(1, 2, 0) * 255).byte().numpy()).save(
            os.path.join(folder, f'{i}.jpg'), quality=90)


def run(args, shared, report, size=224, batch=64):
    """Images per second through our ImageFolder loader vs the reference's DataLoader."""
    import torchvision  # the baseline's, not needed by the other comparisons
    import torchvision.transforms as T
    from PIL import Image
    n, device = (64 if args.quick else 512), args.device
    print(f'\n== 7. ImageFolder loading: {n} JPEGs (~400x350) -> {size}px crops, batch {batch}, '
          f'to {device}, no model: utils.FolderLoader vs torchvision ImageFolder DataLoader ==')
    with tempfile.TemporaryDirectory(prefix='dldr_bench_jpeg_') as root:
        write_jpeg_folder(root, n)
        _, paths, labels = utils.scan_image_folder(os.path.join(root, 'train'))
        train_t, _ = utils.folder_transforms(size)
        ref_t = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(utils.IMAGENET_MEAN, utils.IMAGENET_STD)])
        reference = torchvision.datasets.ImageFolder(os.path.join(root, 'train'), ref_t)

        def decode_pil():
            for p in paths:
                with Image.open(p) as im:
                    im.convert('RGB').load()

        def decode_tv():
            for p in paths:
                torchvision.io.decode_jpeg(torchvision.io.read_file(p))

        dec = interleave({'pil': decode_pil, 'decode_jpeg': decode_tv}, 3, torch.device('cpu'))
        pil, tv = secs(dec, 'pil'), secs(dec, 'decode_jpeg')
        print(f'  decode only, per image: PIL {ms(statistics.median(pil) / n)}, '
              f'torchvision.io.decode_jpeg {ms(statistics.median(tv) / n)} (for the record, not rated)')
        for w in args.workers:
            ours = utils.FolderLoader(utils.ImageFiles(paths, labels, train_t), batch,
                                      utils.IMAGENET_MEAN, utils.IMAGENET_STD, device, train=True,
                                      generator=torch.Generator().manual_seed(args.seed), workers=w)
            ref = ToDevice(torch.utils.data.DataLoader(reference, batch_size=batch, shuffle=True,
                                                       num_workers=w, pin_memory=device.type == 'cuda'),
                           device, False)

            def drain(loader):
                def run_epoch():
                    for _ in loader:
                        pass
                    sync(device)
                return run_epoch

            variants = {'ours': drain(ours), 'reference': drain(ref)}
            interleave(variants, 1, device)  # warm-up: worker start, file cache
            res = interleave(variants, args.epoch_repeats + 2, device)
            o, r = secs(res, 'ours'), secs(res, 'reference')
            print(f'  workers {w}: ours {spread(o)} = {n / statistics.median(o):.0f} img/s; reference '
                  f'{spread(r)} = {n / statistics.median(r):.0f} img/s')
            report.add(f'ImageFolder img/s (w={w}): ours / reference', statistics.median(o),
                       statistics.median(r), paired_ratio(r, o), '>=', 1.0,
                       detail=dict(ours_s=o, reference_s=r, images=n, workers=w,
                                   decode_pil_s=pil, decode_jpeg_s=tv))
