#!/usr/bin/env bash
# Experiment sequences of the DLDR paper, each step's log tee'd to log_<arch>.
#
#   bash run.sh              CIFAR-10 ResNet20: SGD 150 epochs -> P-BFGS 40-D (20 epochs) -> P-SGD 40-D (40 epochs)
#   bash run.sh labelnoise   the same with 20% label noise (C=0.4 bash run.sh labelnoise for another level)
#   bash run.sh cifar100     the CIFAR-100 table: per architecture SGD 200 epochs, then 40-D P-SGD
#                            from the first 50 and the first 100 epochs' snapshots
#   bash run.sh demo         the whole sequence on the offline synthetic dataset, on a CPU in a few
#                            minutes, ending with a table of results
#                            and figures (plot.py) in runs/demo (OUT sets the folder)
#   bash run.sh pbfgs-bn     P-BFGS at batch 1024 and 256 on synthetic data, its test accuracy with
#                            the BatchNorm running statistics and re-estimated on N batches (-e)
#                            -> tables.py pbfgs-bn, in runs/pbfgs_bn (CPU, minutes)
#   bash run.sh torchrun     one process against 2 ranks under torchrun (gloo, CPU) on synthetic
#                            data -> tables.py torchrun, in runs/torchrun (CPU, minutes)
#   bash run.sh sweep        the dimension sweep (sweep.py) at CI size on synthetic data: dldr, twa,
#                            random, fastfood at d = 2, 4, 6 -> table and figure in runs/sweep
#   DATA=/path/to/cifar bash run.sh resnet8
#                            the paper's ResNet8 / CIFAR-10 table: SGD 30 epochs (seeds 1 2 3), P-SGD
#                            in 15 D from the first 30 epochs, P-SGD in random subspaces of 10% of n
#                            (fixed dense, re-drawn every step, Fastfood) -> table beside the
#                            paper's (tables.py) and figures in runs/resnet8
#   DATA=/path/to/cifar bash run.sh pbfgs-batch
#                            after resnet8: P-BFGS in the same 15-D subspace at batch 128, 256, 1024,
#                            and how many images --bn-update needs (tables.py bn-images)
#   DATA=/path/to/cifar bash run.sh noise
#                            label noise 20% and 40% (ResNet8, 20k images, no augmentation; the
#                            reference's noise model, labels redrawn from all classes;
#                            NOISE_MODEL=wrong for always-wrong labels): SGD 30
#                            epochs, long enough to memorise wrong labels, P-BFGS / P-SGD from the
#                            snapshots before the decay
#                            -> table and noise figure in runs/noise
#                            These three: SIZE=ci runs the same sequence on synthetic data in
#                            minutes (CI does); a finished step is skipped and SGD resumes
#                            (--resume auto), so an interrupted recipe continues where it stopped;
#                            SEEDS="1 2 3" (resnet8) / LEVELS="0.2 0.4" (noise) choose the trials.
#   DATA=/path/to/cifar bash run.sh budget
#                            what DLDR buys at a fixed budget: SGD 20 epochs (seeds 1 2 3) against
#                            DLDR P-BFGS / P-SGD and TWA from the snapshots before the decay, wall-
#                            clock measured; and a trained model improved in a subspace
#                            -> tables.py budget / improve, figure accuracy vs wall-clock
#                            (SIZE=ci: synthetic, minutes; resumes where it stopped)
#   DATA=/path/to/imagefolder bash run.sh vit
#                            a trained ViT improved in a subspace of its fine-tuning trajectory:
#                            timm's vit_tiny_patch16_224 at 32 px on the CIFAR-10 JPEG folder (DATA
#                            holds train/ and val/), AdamW from scratch, SGD fine-tuning with
#                            snapshots, then P-SGD / P-BFGS in their span -> table in runs/vit
#                            (SIZE=ci: synthetic data, timm's test_vit, a minute)
#   DATA=/path/to/cifar10k bash run.sh kinds
#                            the subspace kinds side by side on a 10k / 2k CIFAR-10 subset (DATA
#                            holds its cifar-10-batches-py): ResNet20 SGD 30 epochs at constant lr
#                            0.1, then P-SGD 3 epochs in DLDR, random (from snapshot 0 and from 3),
#                            Fastfood and TWA subspaces over d (sweep.py) -> tables.py kinds and
#                            the accuracy-vs-d figure in runs/kinds
#   bash run.sh basis-dtype  the demo's P-SGD and P-BFGS with P stored in float32, bf16 and int8
#                            (synthetic data, a few CPU minutes) -> tables.py basis-dtype in
#                            runs/basis_dtype
#   DATA=/path/to/cifar10_jpeg bash run.sh imagefolder
#                            the ImageNet path on an ImageFolder (DATA holds train/ and val/):
#                            torchvision's ResNet-18 at 32 px on 5,000 images, SGD 4 epochs with a
#                            snapshot every 10 iterations, P-SGD / P-BFGS in the 8-D subspace, SGD
#                            fine-tuning, and P-BFGS's diagnostics -> tables.py imagefolder /
#                            imagefolder-diagnosis in runs/imagefolder
#                            These two: SIZE=ci runs the same steps on synthetic data in under 2
#                            minutes (CI does); finished steps are skipped, SGD resumes; OUT sets
#                            the folder.
#   DATA=/path/to/cifar bash run.sh gpu-check
#                            the first command on a machine with a GPU: the CUDA tests, bench on
#                            CUDA (and its section 9: torch.compile, CUDA graphs, channels_last
#                            vs eager; a few minutes of compiling), a short ResNet20 sequence with AMP and channels_last, torchrun
#                            with nccl; under 8 minutes on one GPU (not part of CI)
#   DATA=/path/to/cifar bash run.sh gpu-headline
#                            the paper's headline row on one GPU: ResNet20 SGD to epoch 80 (the
#                            snapshots of the 150-epoch run), 40-D P-BFGS 20 epochs at batch 1024,
#                            SEEDS (default 1 2) side by side; table beside the paper's (91.72 vs
#                            91.55) with each phase's minutes; then SGD continued to 150
#                            (CONTINUE=0: not). ~7-8 min + ~5-6 min on one H100 (estimated); SIZE=ci:
#                            the CPU version in a minute (CI runs it); resumable
#   DATA=/path/to/imagenet bash run.sh imagenet
#                            ImageNet ResNet18 (ARCH=resnet50 for another torchvision model): SGD 90
#                            epochs, a snapshot every 1000 iterations -> 120-D P-BFGS (4 epochs, 30
#                            trials) from every 2nd of snapshots 0..240
#   DATA=/path/to/imagenet bash run.sh imagenet-finetune
#                            fine-tune torchvision's pretrained ResNet18 (the weights file must be in
#                            the torch hub cache) 15 epochs at lr 0.005 -> 30-D P-BFGS 1 epoch from
#                            snapshots 1..90
#                            DATA holds train/ and val/ (one folder per class); every GPU is used
#                            through torchrun when there are several; WORKERS (default 8) loader
#                            processes per GPU.
#
# Extra flags after the mode go to every script, e.g. `bash run.sh cifar10 --data-dir /data --amp bf16`.
set -euo pipefail
cd "$(dirname "$0")"
mode=${1:-cifar10}
shift || true
py="python -u"

cifar10() {  # $1: label-noise level
    local c=$1 model=resnet20 dir="save_labelnoise${1}_resnet20"
    $py train_sgd.py --datasets CIFAR10 --lr 0.1 --corrupt "$c" --arch=$model --epochs=150 --save-dir="$dir" "${@:2}" |& tee -a log_$model
    $py train_pbfgs.py --epochs 20 --datasets CIFAR10 --corrupt "$c" --params_start 0 --params_end 81 --batch-size 1024 --n_components 40 --arch=$model --save-dir="$dir" "${@:2}" |& tee -a log_$model
    $py train_psgd.py --epochs 40 --datasets CIFAR10 --lr 1 --corrupt "$c" --params_start 0 --params_end 81 --batch-size 128 --n_components 40 --arch=$model --save-dir="$dir" "${@:2}" |& tee -a log_$model
}

cifar100() {
    for model in vgg11 efficientnet mobilenet densenet121 inceptionv3 xception googlenet shufflenetv2 squeezenet seresnet18 nasnet; do
        $py train_sgd.py --datasets CIFAR100 --lr 0.1 --arch=$model --epochs=200 --save-dir=save_cifar100_$model "$@" |& tee -a log_cifar100_$model
        for end in 51 101; do
            $py train_psgd.py --epochs 40 --datasets CIFAR100 --lr 1 --params_start 0 --params_end $end --batch-size 128 --n_components 40 --arch=$model --save-dir=save_cifar100_$model "$@" |& tee -a log_cifar100_$model
        done
    done
}

launcher() {  # torchrun over every GPU when there are several, else one process
    local n
    n=$(python -c 'import torch; print(torch.cuda.device_count())')
    if [ "$n" -gt 1 ]; then echo "torchrun --standalone --nproc_per_node $n"; else echo "$py"; fi
}

imagenet() {  # $1: imagenet or finetune
    need_data imagenet train val
    local data=$DATA
    local model=${ARCH:-resnet18} launch
    launch=$(launcher)
    local common=(--datasets ImageNet --data-dir "$data" --arch "$model" -b 256 -j "${WORKERS:-8}" -p 100)
    if [ "$1" = imagenet ]; then
        local dir=save_imagenet_$model log=log_imagenet_$model
        $launch train_sgd.py "${common[@]}" --lr 0.1 --weight-decay 1e-4 --epochs 90 --snapshot-every 1000 --save-dir "$dir" "${@:2}" |& tee -a "$log"
        $launch train_pbfgs.py "${common[@]}" --epochs 4 --params_start 0 --params_end 241 --params-step 2 --n_components 120 --max-trials 30 --save-dir "$dir" "${@:2}" |& tee -a "$log"
    else
        local dir=save_imagenet_finetune_$model log=log_imagenet_finetune_$model
        $launch train_sgd.py "${common[@]}" --pretrained --lr 0.005 --weight-decay 1e-4 --epochs 15 --snapshot-every 1000 --save-dir "$dir" "${@:2}" |& tee -a "$log"
        $launch train_pbfgs.py "${common[@]}" --epochs 1 --params_start 1 --params_end 91 --n_components 30 --max-trials 30 --save-dir "$dir" "${@:2}" |& tee -a "$log"
    fi
}

demo() {
    # ResNet20 on 4,999 synthetic images: 10 SGD epochs sample 11 snapshots (0..10), then 10-D
    # subspace training from snapshot 0 (P-SGD: 4 epochs, lr x0.1 after the 3rd; P-BFGS: 3 epochs
    # of batch 256, 20 steps each).  runs/demo (OUT sets another) is the demo's own folder: it is
    # replaced; its log is $dir.log.
    local dir=${OUT:-runs/demo} common="--datasets synthetic --smalldatasets 0.5 --arch resnet20 -p 0 --overwrite"
    local log="${dir%/}.log"
    mkdir -p "$(dirname "$dir")"
    $py train_sgd.py $common --lr 0.1 --epochs 10 --save-dir "$dir" "$@" |& tee "$log"
    $py train_psgd.py $common --lr 1 --epochs 4 --lr-milestones 3 --params_start 0 --params_end 11 --n_components 10 --save-dir "$dir" "$@" |& tee -a "$log"
    $py train_pbfgs.py $common --epochs 3 --batch-size 256 --params_start 0 --params_end 11 --n_components 10 --save-dir "$dir" "$@" |& tee -a "$log"
    python metrics.py table "$dir"
    echo "figures (plot.py):"
    python plot.py all "$dir" --out "$dir" |& tee -a "$log"
}

basis_dtype() {
    # P stored in float32, bf16 and int8 (docs/USAGE.md, "The memory of P"): the demo's
    # trajectory (ResNet20, 4,999 synthetic images, 10 SGD epochs) in $dir/sgd, then the demo's
    # P-SGD and P-BFGS runs (d = 10) with each --basis-dtype, in $dir/<dtype>; then tables.py
    # basis-dtype.  OUT sets the folder (default runs/basis_dtype); run again, it skips what has
    # finished.  A few CPU minutes: CI runs it as it is.
    local dir=${OUT:-runs/basis_dtype} common="--datasets synthetic --smalldatasets 0.5 --arch resnet20 -p 0" dtype
    mkdir -p "$dir"
    sgd_once "$dir/sgd" "$dir/log" $common --lr 0.1 --epochs 10 "$@"
    local sub="$common --params_start 0 --params_end 11 --n_components 10 --pretrain-dir $dir/sgd"
    for dtype in float32 bf16 int8; do
        once "$dir/$dtype/metrics_psgd_d10_0-11.json" "$dir/log" train_psgd.py $sub --lr 1 --epochs 4 \
            --lr-milestones 3 --basis-dtype $dtype --save-dir "$dir/$dtype" "$@"
        once "$dir/$dtype/metrics_pbfgs_d10_0-11.json" "$dir/log" train_pbfgs.py $sub --epochs 3 \
            --batch-size 256 --basis-dtype $dtype --save-dir "$dir/$dtype" "$@"
    done
    python tables.py basis-dtype "$dir" |& tee -a "$dir/log"
}

pbfgs_bn() {
    # P-BFGS at the reference's batch 1024 and BatchNorm statistics (docs/RESULTS.md, issue 11):
    # ResNet20 on the synthetic dataset, SGD 8 epochs (snapshots 0..8), then 8-D P-BFGS from
    # snapshot 0, 3 epochs at batch 1024 (in $dir) and at 256 (in $dir/b256), measured with the
    # running statistics only (--bn-update 0); then each saved model evaluated (-e) with the
    # statistics re-estimated on N batches of 256, its stdout kept as $folder/evaluate_b256_n<N>.log
    # (a record tables.py reads).  OUT sets the folder (default runs/pbfgs_bn); its runs are replaced.
    local dir=${OUT:-runs/pbfgs_bn} common="--datasets synthetic --arch resnet20 --overwrite"
    local sub="--params_start 0 --params_end 9 --n_components 8" d n
    mkdir -p "$dir/b256"
    $py train_sgd.py $common --epochs 8 --lr 0.1 -p 0 --save-dir "$dir" "$@" |& tee "$dir/log"
    $py train_pbfgs.py $common --epochs 3 --batch-size 1024 $sub -p 0 --bn-update 0 --save-dir "$dir" "$@" |& tee -a "$dir/log"
    $py train_pbfgs.py $common --epochs 3 --batch-size 256 $sub -p 0 --bn-update 0 --pretrain-dir "$dir" --save-dir "$dir/b256" "$@" |& tee -a "$dir/log"
    for d in "$dir" "$dir/b256"; do
        for n in 0 1 2 5 10 20 40; do
            $py train_pbfgs.py -e --datasets synthetic --arch resnet20 --batch-size 256 $sub --save-dir "$d" --bn-update $n "$@" |& tee "$d/evaluate_b256_n$n.log"
        done
    done
    python tables.py pbfgs-bn "$dir"
}

torchrun_study() {
    # One process against 2 processes under torchrun (gloo, CPU; docs/RESULTS.md): ResNet20 on
    # 4,999 synthetic images, SGD 6 epochs (snapshots 0..6), 6-D P-SGD 3 epochs (lr 1, x0.1 after
    # 2) and P-BFGS 3 epochs of batch 256 from snapshot 0, the same global batches once in one
    # process ($dir/one) and once as 2 ranks ($dir/two); then the subspace phase alone as 2 ranks
    # on the one-process trajectory ($dir/two_on_one).  OUT sets the folder (default runs/torchrun);
    # its runs are replaced.
    local dir=${OUT:-runs/torchrun} common="--datasets synthetic --smalldatasets 0.5 --arch resnet20 -p 0 --device cpu --overwrite"
    local psgd="--lr 1 --epochs 3 --lr-milestones 2 --params_start 0 --params_end 7 --n_components 6"
    local pbfgs="--epochs 3 --batch-size 256 --params_start 0 --params_end 7 --n_components 6"
    local two="torchrun --standalone --nproc_per_node 2" launch save
    mkdir -p "$dir"
    for launch in "$py" "$two"; do
        save=$dir/one; [ "$launch" = "$two" ] && save=$dir/two
        $launch train_sgd.py $common --lr 0.1 --epochs 6 --save-dir "$save" "$@" |& tee -a "$dir/log"
        $launch train_psgd.py $common $psgd --save-dir "$save" "$@" |& tee -a "$dir/log"
        $launch train_pbfgs.py $common $pbfgs --save-dir "$save" "$@" |& tee -a "$dir/log"
    done
    $two train_psgd.py $common $psgd --pretrain-dir "$dir/one" --save-dir "$dir/two_on_one" "$@" |& tee -a "$dir/log"
    $two train_pbfgs.py $common $pbfgs --pretrain-dir "$dir/one" --save-dir "$dir/two_on_one" "$@" |& tee -a "$dir/log"
    python tables.py torchrun "$dir"
}

sweep() {
    # The dimension sweep at CI size: ResNet8 on 2,000 synthetic images, 6 SGD epochs (snapshots
    # 0..6), then 2 epochs of P-SGD per (kind, d, seed) for dldr, twa, random and fastfood at
    # d = 2, 4, 6 (dldr: d < 7; 2 seeds of the random kinds); a table with the threshold training
    # dimension at 90% of SGD's accuracy, and the accuracy-vs-d figure.  runs/sweep is replaced.
    local dir=runs/sweep common="--datasets synthetic --smalldatasets 0.2 --arch resnet8 -p 0"
    mkdir -p runs
    rm -rf "$dir"
    $py train_sgd.py $common --lr 0.1 --epochs 6 --save-dir $dir "$@" |& tee runs/sweep.log
    $py sweep.py --save-dir $dir --kinds dldr twa random fastfood --dims 2 4 6 --seeds 1 2 \
        -- $common --lr 1 --epochs 2 --lr-milestones 1 --params_start 0 --params_end 7 "$@" |& tee -a runs/sweep.log
    python plot.py dims "$dir" --out "$dir" |& tee -a runs/sweep.log
}

finished() {  # $1: a metrics JSON; true when its run has finished
    python metrics.py finished "$1"
}

once() {  # $1: the run's metrics JSON, $2: its log, then the command: skipped when $1 has finished
    local metrics=$1 log=$2
    shift 2
    if finished "$metrics"; then echo "done already: $metrics"; return; fi
    local again=()
    [ -e "$metrics" ] && again=(--overwrite)  # an interrupted subspace run starts again
    $py "$@" "${again[@]}" |& tee -a "$log"
}

sgd_once() {  # $1: save-dir, $2: log, then train_sgd.py's flags: resumes an interrupted run
    local dir=$1 log=$2
    shift 2
    if finished "$dir/metrics_sgd.json"; then echo "done already: $dir/metrics_sgd.json"; return; fi
    $py train_sgd.py --save-dir "$dir" --resume auto "$@" |& tee -a "$log"
}

need_data() {  # $1: the recipe, then the folders DATA must hold: an error line and exit 2 unless it does
    local recipe=$1 sub wanted
    shift
    wanted=$(printf '%s/ ' "$@")
    if [ -z "${DATA:-}" ]; then
        local hint=" (SIZE=ci: synthetic data instead)"
        [ "$recipe" = imagenet ] && hint=  # no CI size
        echo "error: $recipe needs DATA=/path/to/data holding ${wanted% }$hint" >&2
        exit 2
    fi
    for sub in "$@"; do
        [ -d "$DATA/$sub" ] || { echo "error: DATA=$DATA holds no $sub/ ($recipe needs ${wanted% })" >&2; exit 2; }
    done
}

resnet8() {
    # Full: CIFAR-10 (50k/10k) from $DATA; SGD lr 0.1, batch 128, momentum 0.9, wd 1e-4, 30 epochs
    # (x0.1 after 15 and 25) per seed; P-SGD 5 epochs (lr 1, x0.1 after 3 and 4) in the 15-D DLDR
    # subspace of snapshots 0..30 of each seed, and in random / re-drawn / Fastfood subspaces of
    # d = 7,529 (10% of n = 75,290) from snapshot 0 of the first seed.
    local dir common seeds=${SEEDS:-1 2 3} e m pe pm end d rd
    if [ "${SIZE:-full}" = ci ]; then
        dir=runs/resnet8_ci common="--datasets synthetic --smalldatasets 0.2 --arch resnet8 -p 0"
        seeds=${SEEDS:-1 2} e=6 m="3 5" pe=2 pm=1 end=7 d=5 rd=750
    else
        dir=runs/resnet8 common="--datasets CIFAR10 --data-dir ${DATA:-./data} --arch resnet8 -p 100"
        e=30 m="15 25" pe=5 pm="3 4" end=31 d=15 rd=7529
    fi
    mkdir -p "$dir"
    for s in $seeds; do
        sgd_once "$dir/sgd_s$s" "$dir/log" $common --lr 0.1 --epochs $e --lr-milestones $m --randomseed "$s" "$@"
    done
    local sub="$common --lr 1 --epochs $pe --lr-milestones $pm --params_start 0 --params_end $end"
    for s in $seeds; do
        once "$dir/sgd_s$s/metrics_psgd_d${d}_0-$end.json" "$dir/log" train_psgd.py $sub --n_components $d \
            --randomseed "$s" --save-dir "$dir/sgd_s$s" "$@"
    done
    local first=${seeds%% *}
    for kind in ${KINDS-redrawn fastfood random}; do
        once "$dir/sgd_s$first/metrics_psgd_${kind}_s1_d${rd}_0-$end.json" "$dir/log" train_psgd.py $sub \
            --subspace $kind --subspace-seed 1 --n_components $rd --randomseed "$first" \
            --save-dir "$dir/sgd_s$first" "$@"
    done
    python tables.py resnet8 "$dir"
    python plot.py curves "$dir/sgd_s$first" --out "$dir" |& tee -a "$dir/log"
    python plot.py spectrum "$dir"/sgd_s* --out "$dir" |& tee -a "$dir/log"
}

pbfgs_batch() {
    # P-BFGS (paper Algorithm 2) in resnet8's 15-D DLDR subspace (snapshots 0..30 of seed 1) at
    # batch 128, 256 and 1024, the same number of epochs each, each in its own folder; and with
    # same-batch curvature pairs (--curvature-pairs same-batch) at 128 and 1024.
    local dir common e end d
    if [ "${SIZE:-full}" = ci ]; then
        dir=runs/resnet8_ci common="--datasets synthetic --smalldatasets 0.2 --arch resnet8 -p 0" e=1 end=7 d=5
    else
        dir=runs/resnet8 common="--datasets CIFAR10 --data-dir ${DATA:-./data} --arch resnet8 -p 100" e=2 end=31 d=15
    fi
    if [ ! -f "$dir/sgd_s1/$((end - 1)).pt" ]; then
        echo "error: no trajectory in $dir/sgd_s1: run 'bash run.sh resnet8' first" >&2
        exit 2
    fi
    local b pairs out
    for run in 128:consecutive 256:consecutive 1024:consecutive 128:same-batch 1024:same-batch; do
        b=${run%%:*} pairs=${run#*:} out="$dir/sgd_s1/pbfgs_b$b"
        [ "$pairs" = consecutive ] || out+="_$pairs"
        once "$out/metrics_pbfgs_d${d}_0-$end.json" "$dir/log" train_pbfgs.py $common \
            --epochs $e --batch-size $b --curvature-pairs $pairs --params_start 0 --params_end $end \
            --n_components $d --pretrain-dir "$dir/sgd_s1" --save-dir "$out" "$@"
    done
    # --bn-update's size: the batch-1024 model evaluated (-e) with BatchNorm re-estimated on n
    # batches of 128 training images (0: the running statistics), two data-order seeds; each
    # stdout kept as a record (evaluate_b128_n<n>_s<seed>.log, tables.py bn-images)
    out="$dir/sgd_s1/pbfgs_b1024"
    local s n
    for s in 1 2; do
        for n in ${BN_BATCHES:-1 2 4 8 16 80 0}; do
            [ -s "$out/evaluate_b128_n${n}_s$s.log" ] && continue
            $py train_pbfgs.py -e $common --batch-size 128 --bn-update $n --randomseed $s --params_start 0 \
                --params_end $end --n_components $d --pretrain-dir "$dir/sgd_s1" --save-dir "$out" "$@" \
                > "$out/evaluate_b128_n${n}_s$s.log.part" && mv "$out/evaluate_b128_n${n}_s$s.log.part" "$out/evaluate_b128_n${n}_s$s.log"
        done
    done
    python tables.py pbfgs-batch "$dir"
    python tables.py bn-images "$dir"
}

noise() {
    # Label noise C in 0.2 0.4: ResNet8 on 20k CIFAR-10 images (--smalldatasets 0.4), without
    # augmentation (--no-augment: with it ResNet8 does not fit the wrong labels in a CPU budget),
    # SGD 30 epochs (x0.1 after 15 and 25: after the first decay SGD memorises the wrong labels,
    # training accuracy rising, test accuracy falling); P-BFGS (batch 256: 79 steps an epoch, see
    # pbfgs-batch) and P-SGD in the 15-D subspace of snapshots 0..15 (up to the decay), 3 epochs each.
    # The reference's noise model (--noise-model uniform: about 1/10 of the redrawn labels keep
    # their class), the table in docs/RESULTS.md; NOISE_MODEL=wrong (every redrawn label another
    # class) in a folder of its own (runs/noise_wrong).
    local dir common e m end d pe pm levels=${LEVELS:-0.2 0.4} nm=${NOISE_MODEL:-uniform}
    if [ "${SIZE:-full}" = ci ]; then
        dir=runs/noise_ci common="--datasets synthetic --smalldatasets 0.2 --arch resnet8 --no-augment --noise-model $nm -p 0"
        e=6 m="3 5" end=4 d=3 pe=2 pm=1
    else
        dir=runs/noise common="--datasets CIFAR10 --data-dir ${DATA:-./data} --smalldatasets 0.4 --arch resnet8 --no-augment --noise-model $nm -p 100"
        e=30 m="15 25" end=16 d=15 pe=3 pm=2
    fi
    [ "$nm" = uniform ] || dir+="_$nm"
    mkdir -p "$dir"
    for c in $levels; do
        local run="$dir/c$c"
        sgd_once "$run" "$dir/log" $common --corrupt "$c" --lr 0.1 --epochs $e --lr-milestones $m "$@"
        local sub="$common --corrupt $c --params_start 0 --params_end $end --n_components $d --save-dir $run"
        once "$run/metrics_pbfgs_d${d}_0-$end.json" "$dir/log" train_pbfgs.py $sub --epochs $pe --batch-size 256 "$@"
        once "$run/metrics_psgd_d${d}_0-$end.json" "$dir/log" train_psgd.py $sub --lr 1 --epochs $pe \
            --lr-milestones $pm "$@"
    done
    python tables.py noise "$dir"
    python plot.py noise "$dir"/c* --out "$dir" |& tee -a "$dir/log"
    python plot.py curves "$dir"/c* --out "$dir" |& tee -a "$dir/log"
}

vit() {
    # Full: timm/vit_tiny_patch16_224 (5.5M parameters) at 32 px (2x2 patches of 16) on 20k of the
    # folder's training images (--smalldatasets 0.4), the full val/ set.  1. AdamW from scratch,
    # lr 5e-4, wd 0.05, batch 128, 10 epochs (x0.1 after 7 and 9): the trained model.  2. SGD
    # fine-tuning from it (lr 0.01, momentum 0.9, 4 epochs), a snapshot every 40 iterations.
    # 3. From the trained model (fine-tuning snapshot 0): P-SGD (lr 0.01 as the fine-tuning: the
    # paper's lr 1, meant for training from scratch, wrecks a trained model) and P-BFGS (batch
    # 256), 2 epochs each, in the 10-D DLDR subspace of the fine-tuning snapshots.
    local dir common e m fe every d pe
    if [ "${SIZE:-full}" = ci ]; then
        dir=runs/vit_ci common="--datasets synthetic --smalldatasets 0.1 --arch timm/test_vit -p 0"
        e=3 m="2" fe=2 every=4 d=4 pe=1
    else
        need_data vit train val
        local data=$DATA
        dir=runs/vit common="--datasets ImageNet --data-dir $data --image-size 32 -j 1 --smalldatasets 0.4 --arch timm/vit_tiny_patch16_224 -p 100"
        e=10 m="7 9" fe=4 every=40 d=10 pe=2
    fi
    mkdir -p "$dir"
    sgd_once "$dir/train" "$dir/log" $common --optimizer adamw --lr 5e-4 --wd 0.05 --epochs $e \
        --lr-milestones $m "$@"
    sgd_once "$dir/finetune" "$dir/log" $common --pretrained "$dir/train/$e.pt" --lr 0.01 --epochs $fe \
        --lr-milestones --snapshot-every $every "$@"
    local end
    end=$(python metrics.py snapshots "$dir/finetune/metrics_sgd.json")
    local sub="$common --params_start 0 --params_end $end --n_components $d --save-dir $dir/finetune"
    once "$dir/finetune/metrics_psgd_d${d}_0-$end.json" "$dir/log" train_psgd.py $sub --lr 0.01 --epochs $pe \
        --lr-milestones "$@"
    once "$dir/finetune/metrics_pbfgs_d${d}_0-$end.json" "$dir/log" train_pbfgs.py $sub --epochs $pe \
        --batch-size 256 "$@"
    python tables.py vit "$dir"
}

budget() {
    # What DLDR buys at a fixed budget (the paper's headline protocol, scaled to 2 CPU cores).
    # Full: ResNet8 on CIFAR-10 (50k/10k), SGD E = 20 epochs, lr 0.1, batch 128, momentum 0.9,
    # wd 1e-4, one x0.1 decay at 13 (2/3 E, as 100 of 150), a snapshot every 64 iterations (78
    # snapshots by epoch K = 11, as the reference's 81 by epoch 80 of 150; K = 0.53 E).  From
    # snapshot 0 in the subspace of snapshots 0..K: 40-D P-BFGS 3 epochs (0.13 E, as 20 of 150)
    # at batch 1024 and at 256 (the batch study's better one); 40-D P-SGD 5 epochs (0.27 E, as 40
    # of 150; lr 1, x0.1 after 4); TWA (its paper's protocol: all the snapshots, from their mean,
    # lr 2, x0.1 at half, 2 epochs as 10 on top of 100 of 200).  Control: SGD from the epoch-K
    # snapshot at the decayed lr 0.01 for as many epochs as P-BFGS b1024 took wall-clock.
    # Improvement: from each trained SGD-E model, SGD at lr 0.01 (its final lr) 4 epochs with a
    # snapshot every 40 iterations; in the span of its first 2 epochs (d = t - 1): P-BFGS (batch
    # 256, 1 epoch), P-SGD (lr 0.01 as the SGD continuation, 1 epoch), TWA (lr 2, 2 epochs, from
    # the last snapshot as its tail-stage protocol) and SWA (the snapshots' mean, BatchNorm
    # re-estimated on the training set).  Every script runs --compile; OUT sets the folder.
    local dir common e m k every d pb ps pm tw ie iev seeds=${SEEDS:-1 2 3}
    if [ "${SIZE:-full}" = ci ]; then
        dir=${OUT:-runs/budget_ci} common="--datasets synthetic --smalldatasets 0.2 --arch resnet8 -p 0"
        seeds=${SEEDS:-1 2} e=6 m=4 k=3 every=4 d=6 pb=1 ps=2 pm=1 tw=1 ie=2 iev=3
    else
        dir=${OUT:-runs/budget} common="--datasets CIFAR10 --data-dir ${DATA:-./data} --arch resnet8 -p 100 --compile"
        e=20 m=13 k=11 every=64 d=40 pb=3 ps=5 pm=4 tw=2 ie=4 iev=40
    fi
    mkdir -p "$dir"
    local s run end last sub t
    for s in $seeds; do
        run="$dir/sgd_s$s"
        sgd_once "$run" "$dir/log" $common --lr 0.1 --epochs $e --lr-milestones $m --snapshot-every $every \
            --randomseed "$s" "$@"
        end=$(python metrics.py snapshots "$run/metrics_sgd.json" --until-epoch $k)
        sub="$common --randomseed $s --pretrain-dir $run --params_start 0 --params_end $end"
        once "$run/pbfgs_b1024/metrics_pbfgs_d${d}_0-$end.json" "$dir/log" train_pbfgs.py $sub --n_components $d \
            --epochs $pb --batch-size 1024 --save-dir "$run/pbfgs_b1024" "$@"
        once "$run/pbfgs_b256/metrics_pbfgs_d${d}_0-$end.json" "$dir/log" train_pbfgs.py $sub --n_components $d \
            --epochs $pb --batch-size 256 --save-dir "$run/pbfgs_b256" "$@"
        once "$run/psgd/metrics_psgd_d${d}_0-$end.json" "$dir/log" train_psgd.py $sub --n_components $d \
            --epochs $ps --lr 1 --lr-milestones $pm --save-dir "$run/psgd" "$@"
        once "$run/twa/metrics_psgd_twa_d${end}_0-$end.json" "$dir/log" train_psgd.py $sub --subspace twa \
            --epochs $tw --lr 2 --lr-milestones 1 --save-dir "$run/twa" "$@"
        t=$(python metrics.py sgd-epochs-like "$run/pbfgs_b1024/metrics_pbfgs_d${d}_0-$end.json" "$run/metrics_sgd.json")
        sgd_once "$run/control" "$dir/log" $common --pretrained "$run/$((end - 1)).pt" --lr 0.01 --epochs "$t" \
            --lr-milestones --randomseed "$s" "$@"
        # the trained model improved
        last=$(( $(python metrics.py snapshots "$run/metrics_sgd.json") - 1 ))
        sgd_once "$run/improve" "$dir/log" $common --pretrained "$run/$last.pt" --lr 0.01 --epochs $ie \
            --lr-milestones --snapshot-every $iev --randomseed "$s" "$@"
        end=$(python metrics.py snapshots "$run/improve/metrics_sgd.json" --until-epoch 2)
        sub="$common --randomseed $s --pretrain-dir $run/improve --params_start 0 --params_end $end"
        once "$run/improve/swa/metrics_psgd_twa_d${end}_0-$end.json" "$dir/log" train_psgd.py $sub --subspace twa \
            --epochs 0 --save-dir "$run/improve/swa" "$@"
        once "$run/improve/pbfgs/metrics_pbfgs_d$((end - 1))_0-$end.json" "$dir/log" train_pbfgs.py $sub \
            --n_components $((end - 1)) --epochs 1 --batch-size 256 --save-dir "$run/improve/pbfgs" "$@"
        once "$run/improve/psgd/metrics_psgd_d$((end - 1))_0-$end.json" "$dir/log" train_psgd.py $sub \
            --n_components $((end - 1)) --epochs 1 --lr 0.01 --lr-milestones --save-dir "$run/improve/psgd" "$@"
        once "$run/improve/twa/metrics_psgd_twa_d${end}_0-${end}_from$((end - 1)).json" "$dir/log" train_psgd.py $sub \
            --subspace twa --train-start $((end - 1)) --epochs 2 --lr 2 --lr-milestones 1 \
            --save-dir "$run/improve/twa" "$@"
    done
    python tables.py budget "$dir"
    python tables.py improve "$dir"
    python plot.py budget "$dir" --out "$dir" |& tee -a "$dir/log"
}

kinds() {
    # The subspace kinds side by side (docs/RESULTS.md).  Full: DATA holds the cifar-10-batches-py
    # of a 10,000 / 2,000 CIFAR-10 subset; ResNet20, SGD 30 epochs at constant lr 0.1 (snapshots
    # 0..30).  Then P-SGD on one budget for every kind (3 epochs, lr 1, x0.1 after 2, BatchNorm
    # re-estimated on 10 batches), one seed: sweep.py over d for DLDR (snapshots 0..30), random
    # from snapshot 0 and from snapshot 3 (a burn-in subspace) and Fastfood; TWA in the last d
    # snapshots, from their mean.  Each kind in its own folder ($dir/dldr, ...) beside the
    # trajectory ($dir/sgd); then tables.py kinds and the accuracy-vs-d figure.  OUT sets the folder.
    # SIZE=ci: 500 synthetic images, ResNet8, SGD 4 epochs, P-SGD 1 epoch at one or two d per kind.
    local dir common e pe pm dldr random burnin fastfood twa
    if [ "${SIZE:-full}" = ci ]; then
        dir=${OUT:-runs/kinds_ci} common="--datasets synthetic --smalldatasets 0.05 --arch resnet8 -p 0"
        e=4 pe=1 pm="" dldr="2 4" random="2 40" burnin=2 fastfood=40 twa="2 4"
    else
        need_data kinds cifar-10-batches-py
        dir=${OUT:-runs/kinds} common="--datasets CIFAR10 --data-dir $DATA --arch resnet20 -p 0"
        e=30 pe=3 pm=2 dldr="5 10 15 30" random="5 10 15 40 500 2000" burnin="5 10 15 40"
        fastfood="40 500 2000 5000 20000" twa="5 10 15 30"
    fi
    local end=$((e + 1)) d
    mkdir -p "$dir"
    sgd_once "$dir/sgd" "$dir/log" $common --lr 0.1 --epochs $e --lr-milestones "$@"
    local sub="$common --epochs $pe --lr 1 --lr-milestones $pm --bn-update 10 --pretrain-dir $dir/sgd --params_end $end"
    $py sweep.py --save-dir "$dir/dldr" --kinds dldr --dims $dldr --seeds 1 -- $sub --params_start 0 \
        "$@" |& tee -a "$dir/log"
    $py sweep.py --save-dir "$dir/random" --kinds random --dims $random --seeds 1 -- $sub --params_start 0 \
        "$@" |& tee -a "$dir/log"
    $py sweep.py --save-dir "$dir/burnin" --kinds random --dims $burnin --seeds 1 -- $sub --params_start 0 \
        --train-start 3 "$@" |& tee -a "$dir/log"
    $py sweep.py --save-dir "$dir/fastfood" --kinds fastfood --dims $fastfood --seeds 1 -- $sub --params_start 0 \
        "$@" |& tee -a "$dir/log"
    for d in $twa; do
        once "$dir/twa/metrics_psgd_twa_d${d}_$((end - d))-$end.json" "$dir/log" train_psgd.py $sub --subspace twa \
            --params_start $((end - d)) --n_components $d --save-dir "$dir/twa" "$@"
    done
    python tables.py kinds "$dir"
    python plot.py dims "$dir"/{sgd,dldr,twa,random,burnin,fastfood} --out "$dir" |& tee -a "$dir/log"
}

imagefolder() {
    # The ImageNet path (--datasets ImageNet) on a small ImageFolder, and why P-BFGS makes no
    # progress there (docs/RESULTS.md).  Full: DATA holds train/ and val/ (the CIFAR-10 JPEGs);
    # torchvision's ResNet-18 at 32 px on 5,000 training images (--smalldatasets 0.1).  SGD 4
    # epochs (x0.1 after 3), a snapshot every 10 iterations (0..16, 4 an epoch), in $dir/sgd.  In
    # the 8-D DLDR subspace of every 2nd of them, from snapshot 0: P-SGD 2 epochs (lr 1, x0.1 after
    # 1), P-BFGS 2 epochs of batch 256 with consecutive (the paper's) and with same-batch
    # curvature pairs; the diagnosis (besides the first of those epochs): P-BFGS 1 epoch in the
    # subspace of snapshots 8..16 from snapshot 8, P-SGD 1 epoch (lr 1).  SGD fine-tuning from snapshot 16 (--pretrained,
    # lr 0.005, 1 epoch).  Then tables.py imagefolder / imagefolder-diagnosis.  OUT sets the
    # folder.  SIZE=ci: 500 synthetic images, ResNet8, a snapshot every iteration (4 an epoch, so
    # the same snapshots 0..16).
    local dir common every
    if [ "${SIZE:-full}" = ci ]; then
        dir=${OUT:-runs/imagefolder_ci} common="--datasets synthetic --smalldatasets 0.05 --arch resnet8 -p 0"
        every=1
    else
        need_data imagefolder train val
        dir=${OUT:-runs/imagefolder}
        common="--datasets ImageNet --data-dir $DATA --arch resnet18 --image-size 32 --smalldatasets 0.1 -j 1 -p 0"
        every=10
    fi
    mkdir -p "$dir"
    sgd_once "$dir/sgd" "$dir/log" $common --lr 0.1 --epochs 4 --lr-milestones 3 --snapshot-every $every "$@"
    local basis="$common --params_start 0 --params_end 17 --params-step 2 --n_components 8 --pretrain-dir $dir/sgd"
    local tag=d8_0-17_step2 pairs
    once "$dir/psgd/metrics_psgd_$tag.json" "$dir/log" train_psgd.py $basis --lr 1 --epochs 2 --lr-milestones 1 \
        --save-dir "$dir/psgd" "$@"
    for pairs in consecutive same-batch; do
        once "$dir/pbfgs_$pairs/metrics_pbfgs_$tag.json" "$dir/log" train_pbfgs.py $basis -b 256 --epochs 2 \
            --curvature-pairs $pairs --save-dir "$dir/pbfgs_$pairs" "$@"
    done
    once "$dir/pbfgs_diag_from8/metrics_pbfgs_d8_8-17.json" "$dir/log" train_pbfgs.py $common -b 256 --epochs 1 \
        --params_start 8 --params_end 17 --n_components 8 --pretrain-dir "$dir/sgd" --save-dir "$dir/pbfgs_diag_from8" "$@"
    once "$dir/psgd_from0/metrics_psgd_$tag.json" "$dir/log" train_psgd.py $basis --lr 1 --epochs 1 \
        --save-dir "$dir/psgd_from0" "$@"
    sgd_once "$dir/finetune" "$dir/log" $common --pretrained "$dir/sgd/16.pt" --lr 0.005 --epochs 1 "$@"
    python tables.py imagefolder "$dir"
    python tables.py imagefolder-diagnosis "$dir"
}

gpu_check() {
    # One GPU, under 8 minutes: what CI (CPU only) cannot check.  Prints what it measured.
    python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' ||
        { echo "error: gpu-check needs a CUDA device (torch.cuda.is_available() is False)" >&2; exit 2; }
    local data=${DATA:-./data} dir=runs/gpu_check n
    n=$(python -c 'import torch; print(torch.cuda.device_count())')
    mkdir -p runs && rm -rf "$dir"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    echo "== 1. the tests that need CUDA"
    python -m pytest -q -k cuda -p no:cacheprovider
    echo "== 2. bench on CUDA (bf16, channels_last)"
    python bench.py --device cuda --amp bf16 --channels-last --quick
    echo "== 2b. bench 9 on CUDA: torch.compile (default and reduce-overhead = CUDA graphs) and channels_last vs eager, float32"
    python bench.py --device cuda --only 9 --quick
    echo "== 3. ResNet20 on CIFAR-10 ($data): SGD 5 epochs -> P-SGD / P-BFGS in 5 D, AMP bf16, channels_last"
    local common="--datasets CIFAR10 --data-dir $data --arch resnet20 --amp bf16 --channels-last -p 0 --save-dir $dir"
    $py train_sgd.py $common --lr 0.1 --epochs 5 |& tee "$dir.log"
    $py train_psgd.py $common --lr 1 --epochs 2 --params_start 0 --params_end 6 --n_components 5 |& tee -a "$dir.log"
    $py train_pbfgs.py $common --epochs 1 --batch-size 1024 --params_start 0 --params_end 6 --n_components 5 |& tee -a "$dir.log"
    echo "== 4. torchrun with nccl over $n GPU(s): P-SGD 1 epoch"
    torchrun --standalone --nproc_per_node "$n" train_psgd.py $common --lr 1 --epochs 1 --params_start 0 \
        --params_end 6 --n_components 5 --dist-backend nccl --overwrite |& tee -a "$dir.log"
    echo "gpu-check: done; the log of 3-4 is $dir.log"
}

epochs_done() {  # $1: a metrics JSON: how many epochs its run has completed (0 when absent)
    python -c 'import json, os, sys; p = sys.argv[1]; print(len(json.load(open(p))["epochs"]) if os.path.isfile(p) else 0)' "$1"
}

sgd_to() {  # $1: save-dir, $2: log, $3: epoch, then train_sgd.py's flags: sgd_once, but up to
    # epoch $3 of a run that may have finished earlier (continued from its checkpoint); skipped
    # when it has got there already
    local dir=$1 log=$2 upto=$3
    shift 3
    if [ "$(epochs_done "$dir/metrics_sgd.json")" -ge "$upto" ]; then echo "done already: $dir to epoch $upto"; return; fi
    $py train_sgd.py --save-dir "$dir" --resume auto --epochs "$upto" "$@" |& tee -a "$log"
}

wait_all() {  # the background jobs $@: wait for every one, then fail if any failed
    local rc=0 pid
    for pid in "$@"; do wait "$pid" || rc=$?; done
    [ "$rc" = 0 ] || { echo "error: a concurrent run failed (exit $rc); its log says why" >&2; exit "$rc"; }
}

gpu_headline() {
    # The paper's headline row (ResNet20 / CIFAR-10: 40-D P-BFGS 91.72 vs SGD 150 epochs 91.55) on
    # one GPU, the SEEDS (default 1 2) run side by side as background processes on it:
    #   1. SGD lr 0.1, batch 128, to epoch 80, with the reference's milestones 100 150: the lr is
    #      constant up to 80, so snapshots 0..80 are those of the 150-epoch run;
    #   2. 40-D P-BFGS, 20 epochs at batch 1024, from snapshot 0 in the span of snapshots 0..80;
    #   3. the table beside the paper's (tables.py gpu-headline: accuracy with the running BatchNorm
    #      statistics, the reference's metric; minutes of each phase);
    #   4. SGD continued to epoch 150 (CONTINUE=0 skips it), then the table again.
    # Every step is resumable: run it again and finished steps are skipped, SGD continues from its
    # checkpoint (--resume auto), an interrupted P-BFGS starts again.
    # Estimate on one H100 (docs/BENCHMARKS.md, CUDA, float32: an SGD step at batch 128 8.9 ms,
    # launch-bound; an epoch through the loader 3.7 s per 50k images; a P-BFGS step at batch 1024
    # 49 ms at 1.4 trials): SGD ~4 s an epoch with the evaluation, 80 epochs ~5.5 min for one
    # seed; P-BFGS ~2.7 s an epoch, 20 epochs + basis + start ~1.5 min. Launch-bound processes
    # share the GPU well (16 host cores), so 2 seeds side by side: phases 1-2 ~7-8 min (3 seeds:
    # ~9-10), phase 4 another ~5-6 min (70 epochs). Not measured yet: no GPU was lent.
    # SIZE=ci: the same sequence on the CPU (synthetic data, resnet8, 500 images, SGD to epoch 3 of
    # 5, 2-D P-BFGS 1 epoch), a minute.
    local dir common seeds=${SEEDS:-1 2} e full m pe d b pids t0 s
    if [ "${SIZE:-full}" = ci ]; then
        dir=runs/gpu_headline_ci common="--datasets synthetic --smalldatasets 0.05 --arch resnet8 -p 0"
        e=3 full=5 m="4 5" pe=1 d=2 b=256
        export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # the seeds side by side on the CPU cores
    else
        python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' ||
            echo "warning: no CUDA device: gpu-headline runs on the CPU (hours; SIZE=ci for the CPU version)" >&2
        dir=runs/gpu_headline common="--datasets CIFAR10 --data-dir ${DATA:-./data} --arch resnet20 -p 100"
        e=80 full=150 m="100 150" pe=20 d=40 b=1024
    fi
    mkdir -p "$dir"
    echo "== 1. SGD to epoch $e, seeds $seeds side by side (logs: $dir/sgd_s<seed>/log)"
    t0=$SECONDS pids=()
    for s in $seeds; do
        mkdir -p "$dir/sgd_s$s"
        sgd_to "$dir/sgd_s$s" "$dir/sgd_s$s/log" $e $common --lr 0.1 --lr-milestones $m --randomseed "$s" "$@" >/dev/null &
        pids+=($!)
    done
    wait_all "${pids[@]}"
    echo "phase 1: $((SECONDS - t0)) s wall"
    echo "== 2. ${d}-D P-BFGS, $pe epochs at batch $b from snapshots 0..$e, side by side"
    t0=$SECONDS pids=()
    for s in $seeds; do
        once "$dir/sgd_s$s/metrics_pbfgs_d${d}_0-$((e + 1)).json" "$dir/sgd_s$s/log" train_pbfgs.py $common \
            --epochs $pe --batch-size $b --params_start 0 --params_end $((e + 1)) --n_components $d \
            --randomseed "$s" --save-dir "$dir/sgd_s$s" "$@" >/dev/null &
        pids+=($!)
    done
    wait_all "${pids[@]}"
    echo "phase 2: $((SECONDS - t0)) s wall"
    python tables.py gpu-headline "$dir"
    if [ "${CONTINUE:-1}" = 0 ]; then return; fi
    echo "== 4. SGD continued to epoch $full, side by side"
    t0=$SECONDS pids=()
    for s in $seeds; do
        sgd_to "$dir/sgd_s$s" "$dir/sgd_s$s/log" $full $common --lr 0.1 --lr-milestones $m --randomseed "$s" "$@" >/dev/null &
        pids+=($!)
    done
    wait_all "${pids[@]}"
    echo "phase 4: $((SECONDS - t0)) s wall"
    python tables.py gpu-headline "$dir"
}

case "$mode" in
    cifar10) cifar10 0 "$@" ;;
    labelnoise) cifar10 "${C:-0.2}" "$@" ;;
    cifar100) cifar100 "$@" ;;
    demo) demo "$@" ;;
    pbfgs-bn) pbfgs_bn "$@" ;;
    torchrun) torchrun_study "$@" ;;
    sweep) sweep "$@" ;;
    resnet8) resnet8 "$@" ;;
    pbfgs-batch) pbfgs_batch "$@" ;;
    noise) noise "$@" ;;
    vit) vit "$@" ;;
    budget) budget "$@" ;;
    kinds) kinds "$@" ;;
    basis-dtype) basis_dtype "$@" ;;
    imagefolder) imagefolder "$@" ;;
    gpu-check) gpu_check "$@" ;;
    gpu-headline) gpu_headline "$@" ;;
    imagenet) imagenet imagenet "$@" ;;
    imagenet-finetune) imagenet finetune "$@" ;;
    *) echo "usage: bash run.sh [cifar10|labelnoise|cifar100|demo|pbfgs-bn|torchrun|sweep|resnet8|pbfgs-batch|noise|vit|budget|kinds|basis-dtype|imagefolder|gpu-check|gpu-headline|imagenet|imagenet-finetune] [extra flags]" >&2; exit 2 ;;
esac
