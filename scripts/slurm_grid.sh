#!/bin/bash
# The eight cells of Tables 1-2 (four methods x two data sets) as a SLURM job array: one cell per job, each cell
# data-parallel over the GPUs of one node with torchrun. Submit from the repository's root, then print the tables:
#
#   sbatch --array=0-7 scripts/slurm_grid.sh [--set key=value ...]
#   .venv/bin/adaq-lora tables runs/paper
#
# Each cell resumes from its last checkpoint when resubmitted (the profile checkpoints every 500 steps), so a job
# cut by the time limit continues where it stopped. GPUS_PER_NODE overrides the GPUs per cell (default 8).
#SBATCH --job-name=adaq-lora-grid
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=2-00:00:00
#SBATCH --output=slurm-%A_%a.out
set -euo pipefail

METHODS=(base lora qlora adaq_lora)
DATASETS=(shibing624/alpaca-zh BelleGroup/school_math_0.25M)
index=${SLURM_ARRAY_TASK_ID:?submit as a job array: sbatch --array=0-7 scripts/slurm_grid.sh}
if (( index < 0 || index >= ${#METHODS[@]} * ${#DATASETS[@]} )); then
    echo "array index $index is outside 0-$(( ${#METHODS[@]} * ${#DATASETS[@]} - 1 ))" >&2
    exit 2
fi
method=${METHODS[index % ${#METHODS[@]}]}
dataset=${DATASETS[index / ${#METHODS[@]}]}
out="runs/paper/${dataset##*/}/$method"
mkdir -p "$out"
echo "cell $index: $method on $dataset -> $out"
srun .venv/bin/torchrun --standalone --nproc_per_node="${GPUS_PER_NODE:-8}" -m adaq_lora.cli run \
    --method "$method" --dataset "$dataset" --profile paper --out "$out" "$@"
