#!/usr/bin/env bash
# A refactoring's bit-identity check (not part of the test suite: minutes of CPU). Run the seeded
# SGD -> P-SGD -> P-BFGS sequence (and a TWA run and a resume) on synthetic data, in 1 process and
# on 2 gloo ranks, with two checkouts, then compare every file:
#
#   git worktree add /tmp/before <commit>
#   OMP_NUM_THREADS=1 bash tests/bitcheck/pipeline.sh /tmp/before /tmp/out_before
#   OMP_NUM_THREADS=1 bash tests/bitcheck/pipeline.sh . /tmp/out_after
#   python tests/bitcheck/compare.py /tmp/out_before /tmp/out_after
#
# $1: repository checkout, $2: output folder.
set -euo pipefail
cd "$1"; out=$2; mkdir -p "$out"
c="--datasets synthetic --smalldatasets 0.1 --arch resnet8 -p 0 --randomseed 3"
python train_sgd.py $c --epochs 3 --lr 0.1 --snapshot-every 5 --corrupt 0.2 --save-dir $out/one > $out/one.log 2>&1
python train_psgd.py $c --corrupt 0.2 --epochs 2 --lr 1 --params_start 0 --params_end 6 --n_components 4 --save-dir $out/one >> $out/one.log 2>&1
python train_pbfgs.py $c --corrupt 0.2 --epochs 2 --batch-size 256 --params_start 0 --params_end 6 --n_components 4 --save-dir $out/one >> $out/one.log 2>&1
python train_psgd.py $c --corrupt 0.2 --epochs 1 --lr 1 --subspace twa --params_start 0 --params_end 6 --save-dir $out/one >> $out/one.log 2>&1
python train_sgd.py $c --epochs 3 --lr 0.1 --snapshot-every 5 --corrupt 0.2 --save-dir $out/one --resume auto >> $out/one.log 2>&1
t="torchrun --standalone --nproc-per-node 2"
$t train_sgd.py $c --epochs 2 --lr 0.1 --save-dir $out/two > $out/two.log 2>&1
$t train_psgd.py $c --epochs 1 --lr 1 --params_start 0 --params_end 3 --n_components 2 --save-dir $out/two >> $out/two.log 2>&1
$t train_pbfgs.py $c --epochs 1 --batch-size 256 --params_start 0 --params_end 3 --n_components 2 --save-dir $out/two >> $out/two.log 2>&1
