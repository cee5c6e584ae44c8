"""Side-by-side performance ratios of this DLDR implementation on the current device.

A report, not a test: it always exits 0 and prints MISS next to a ratio that misses its target.
Absolute times are noise on shared machines; the ratios are what we report (docs/BENCHMARKS.md).
One module per comparison, run in this order:

1. ``s1_psgd_step``: P-SGD step / SGD step at batch 128 (d = 40, random orthonormal P).  <= 1.05
2. ``s2_pbfgs_step``: P-BFGS step / floor at batch 1024; floor = SGD step + (mean trials) x
   forward (train-mode forward, no grad), P from a short real SGD trajectory.         <= 1.10
3. ``s3_epoch``: one SGD epoch through utils.DeviceLoader + engine.train_epoch
   (a) / the same epoch on pre-made batches already on the device                    <= 1.05
   (b) torchvision DataLoader (PIL + RandomCrop/Flip/ToTensor/Normalize) / ours       >= 1.25 CPU
                                                                                      (>= 1.5 CUDA)
4. ``s4_basis``: basis extraction dldr.dldr_basis from memory-mapped snapshot files
   (utils.open_trajectory) vs load + full numpy SVD of the centred t x n trajectory (and sklearn
   PCA if importable): time, and peak memory measured in a fresh process per method
   (``basis_worker``, its own entry point).
5. ``s5_eval``: evaluation per image (engine.evaluate at the default evaluation batch) /
   training per image (engine.train_epoch at --batch-size).                            <= 0.45
6. ``s6_distributed``: data parallel on the CPU (gloo, tests/scaffold.spawn_local): bytes all-reduced
   per P-SGD step (the d coordinates) / per DDP SGD step (the n-dim gradient)       <= 1.1 d/n
   and the P-SGD step of 2 ranks / 1 process at the same global batch                 <= 1.0
7. ``s7_imagefolder``: ImageFolder loading (decode + augment of JPEG files, no model):
   utils.FolderLoader vs the reference's torchvision ImageFolder + RandomResizedCrop/Flip/
   ToTensor/Normalize DataLoader, same worker count: images per second               >= 1.0
   (the decode alone, PIL vs torchvision.io.decode_jpeg, is printed, not rated)
8. ``s8_basis_storage``: the basis stored compactly (--shard-basis, --basis-dtype, --basis-device),
   1 and 2 gloo ranks: P bytes per rank / formula and P-SGD bytes per step / formula   <= 1.0
   (counted by wrapping dldr.Comm), and the P-SGD step time of each option / float32 P (printed,
   not rated; on CUDA also P on the CPU); the memory table of P at model scale
9. ``s9_compile`` (only with ``--only 9``: its cold compiles take minutes): torch.compile
   (utils.compile_model) and channels_last vs eager, contiguous, for the SGD step, the P-SGD step,
   the P-BFGS step (line search included) and an epoch with evaluation; on CUDA also
   mode="reduce-overhead" (CUDA graphs).  Every variant / eager                        <= 1.0
   and torch.compile(dldr.project_grads_) / eager                                       <= 1.0;
   the compile warm-up and the break-even steps (and CIFAR-10 epochs) are printed

Timing (``common``): warm-up first; torch.cuda.synchronize() around timed regions on CUDA only;
the compared variants are interleaved A B | B A | A B ... so drift and other tenants hit all of
them; a ratio is the median over rounds of the per-round ratio.

    python bench.py                       # default run (~8 min on a quiet 2-core CPU)
    python bench.py --only 9 --arch resnet8   # torch.compile / channels_last (section 9)
    python bench.py --quick               # smoke run (a few minutes on CPU; ratios too noisy to report)
    python bench.py --device cuda --amp bf16 --channels-last
    python -m benchmarks ...              # the same
"""
