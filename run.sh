#!/usr/bin/env bash
# Experiment sequences of the DLDR paper, each step's log tee'd to log_<arch>.
#
#   bash run.sh              CIFAR-10 ResNet20: SGD 150 epochs -> P-BFGS 40-D (20 epochs) -> P-SGD 40-D (40 epochs)
#   bash run.sh labelnoise   the same with 20% label noise (C=0.4 bash run.sh labelnoise for another level)
#   bash run.sh cifar100     the CIFAR-100 table: per architecture SGD 200 epochs, then 40-D P-SGD
#                            from the first 50 and the first 100 epochs' snapshots
#   bash run.sh demo         the whole sequence on the offline synthetic dataset, on a CPU in a few
#                            minutes, ending with a table of results
#                            and figures (plot.py) in runs/demo
#   bash run.sh sweep        the dimension sweep (sweep.py) at CI size on synthetic data: dldr, twa,
#                            random, fastfood at d = 2, 4, 6 -> table and figure in runs/sweep
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
    local data=${DATA:?set DATA=/path/to/imagenet (train/ and val/, one folder per class)}
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
    # ResNet20 on 5,000 synthetic images: 10 SGD epochs sample 11 snapshots (0..10), then 10-D
    # subspace training from snapshot 0 (P-SGD: 4 epochs, lr x0.1 after the 3rd; P-BFGS: 3 epochs
    # of batch 256, 20 steps each).  runs/demo is the demo's own folder: it is replaced.
    local dir=runs/demo common="--datasets synthetic --smalldatasets 0.5 --arch resnet20 -p 0 --overwrite"
    mkdir -p runs
    $py train_sgd.py $common --lr 0.1 --epochs 10 --save-dir $dir "$@" |& tee runs/demo.log
    $py train_psgd.py $common --lr 1 --epochs 4 --lr-milestones 3 --params_start 0 --params_end 11 --n_components 10 --save-dir $dir "$@" |& tee -a runs/demo.log
    $py train_pbfgs.py $common --epochs 3 --batch-size 256 --params_start 0 --params_end 11 --n_components 10 --save-dir $dir "$@" |& tee -a runs/demo.log
    python metrics.py table "$dir"
    echo "figures (plot.py):"
    python plot.py all "$dir" --out "$dir" |& tee -a runs/demo.log
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

case "$mode" in
    cifar10) cifar10 0 "$@" ;;
    labelnoise) cifar10 "${C:-0.2}" "$@" ;;
    cifar100) cifar100 "$@" ;;
    demo) demo "$@" ;;
    sweep) sweep "$@" ;;
    imagenet) imagenet imagenet "$@" ;;
    imagenet-finetune) imagenet finetune "$@" ;;
    *) echo "usage: bash run.sh [cifar10|labelnoise|cifar100|demo|sweep|imagenet|imagenet-finetune] [extra flags]" >&2; exit 2 ;;
esac
