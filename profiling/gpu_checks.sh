#!/usr/bin/env bash
# Every check that needs a GPU, prepared for one call of the device machine (torch + triton there):
#   bash profiling/gpu_checks.sh [STAGE ...]        default: env micro kernels chains graphs benches tune seeds
# Stages (each under its own time limit; exit status and seconds in the log's summary lines):
#   env      nvidia-smi, versions
#   micro    profiling/micro.py: graph launch gap (and with PDL), grid barrier, L2 bandwidth, mma.sync vs
#            wgmma, kernels per update pair -> micro.json (its own budget 50 s, each part guarded)
#   kernels  the kernel and op tests compiled on the GPU (FASTBDM_TEST_DEVICE=cuda, tests/conftest.py)
#   chains   profiling/micro.py --parts chains: today's reverse chain vs the weight-stationary one (persistent,
#            staged), B = 1024/2048, S = 1/4/8, tf32/bf16 -> chains.json; then profiling/chain_model.py's
#            predictions with micro.json's constants beside the measured times
#   graphs   profiling/graph_checks.py: eager vs graphed parameters (one and two streams), one stream vs two,
#            policy graph, ms per update
#   benches  pytest benches/ --benchmark-only at paper size (B=1024) and the kernels at B=2048, tables (with
#            launches_per_pair and torch.profiler's cuda_kernels_per_pair), then profiling/kernel_model.py
#            on micro.json and bench.json: the designs' predicted us per update beside the measured
#   tune     profiling/tune_chain.py: the reverse chain per BLOCK_M / num_warps / precision vs its floor
#   seeds    profiling/tune_chain.py --seeds 1 2 4 8: the chain on S stacked seeds at B = 1024, time per
#            seed and programs per SM (docs/PERFORMANCE.md#the-seed-axis-issue-12-a-written-model-pending-a-gpu);
#            tests/test_seed_graphs.py: graphed updates draw from each seed's registered generator, and
#            tests/test_branches.py: two streams' eager and graphed updates equal one stream's (120 s)
#   train:N  python -m fastbdm.train on halfcheetah-medium-replay up to N updates, evaluation every 5k
#            (resumes the run a previous call on the same machine left, from its last checkpoint)
# The limits are caps (env 60 + micro 60 + kernels 300 + chains 150 + graphs 240 + benches 300 + 200 + 150 + tune 180
# + seeds 240 s = 31 min,
# over one device call's 10, which ends inside kernels or graphs at the latest): stages run in order of
# importance and log.txt grows as they finish, so a call cut short still returns the stages it ran;
# name the missing ones in the next call.
# Results go to $OUT (else profiling/out/gpu), at most 9 files: log.txt (every stage's output), micro.json, chains.json,
# graph_checks.json, bench.json, bench_table.md, bench2048.json, bench2048_table.md, train_metrics.csv. Needs .gpu/ from
# profiling/gpu_bundle.sh (carried) for gymnasium, mujoco, minari, nvtx and the dataset; fastbdm
# itself is installed editable without dependencies.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-profiling/out/gpu}
mkdir -p "$out"
log="$out/log.txt"
export PYTHONUNBUFFERED=1
if compgen -G ".gpu/whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/fastbdm-deps .gpu/whl/*.whl
    export PYTHONPATH=/tmp/fastbdm-deps
fi
[ -d .gpu/datasets ] && export MINARI_DATASETS_PATH="$PWD/.gpu/datasets"
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || { echo "fastbdm install failed"; exit 1; }

run_stage() {  # name, seconds, command...
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "=== $name (limit ${limit} s): $*" | tee -a "$log"
    timeout -s INT -k 15 "$limit" "$@" >> "$log" 2>&1
    rc=$?
    echo "=== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$log"
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(env micro kernels chains graphs benches tune seeds)
for stage in "${stages[@]}"; do
    case $stage in
    env)
        run_stage env 60 bash -c 'nvidia-smi; python3 -c "import torch, triton, numpy; print(torch.__version__,
            triton.__version__, numpy.__version__, torch.cuda.get_device_name())"' ;;
    micro)
        run_stage micro 60 python3 profiling/micro.py --out "$out" --budget 50 ;;
    kernels)
        run_stage kernels 300 env FASTBDM_TEST_DEVICE=cuda python3 -m pytest -q -rs -p no:cacheprovider \
            tests/test_kernels_forward.py tests/test_kernels_backward.py tests/test_kernels_backward_group.py \
            tests/test_kernels_bf16.py tests/test_kernels_tf32.py tests/test_kernels_seeds.py \
            tests/test_kernels_weight_stationary.py \
            tests/test_ops.py tests/test_kernels_small_mlp.py tests/test_kernels_critic_side.py \
            tests/test_actor_loss_ops.py tests/test_gather_fields.py tests/test_kernels_denoiser_group.py \
            tests/test_small_mlp_chains.py ;;
    chains)
        run_stage chains 150 python3 profiling/micro.py --parts chains --json chains.json --out "$out" --budget 140
        run_stage chain_model 20 python3 profiling/chain_model.py --micro "$out/micro.json" \
            --measured "$out/chains.json" ;;
    graphs)
        run_stage graphs 240 python3 profiling/graph_checks.py --out "$out" ;;
    benches)
        run_stage benches 300 python3 -m pytest benches/ --benchmark-only -q -p no:cacheprovider \
            --benchmark-json="$out/bench.json"
        run_stage benches2048 200 python3 -m pytest benches/bench_kernels.py benches/bench_roofline.py \
            --benchmark-only -q -p no:cacheprovider --bench-size paper2048 --benchmark-json="$out/bench2048.json"
        for name in bench bench2048; do
            python3 benches/table.py "$out/$name.json" > "$out/${name}_table.md" 2>> "$log"
            cat "$out/${name}_table.md" >> "$log"
        done
        model_inputs=(--bench "$out/bench.json")  # the update's model, measured beside predicted (issue 14)
        [ -f "$out/micro.json" ] && model_inputs+=(--micro "$out/micro.json")
        run_stage kernel_model 150 python3 profiling/kernel_model.py "${model_inputs[@]}" --kernels ;;
    tune)
        run_stage tune 180 python3 profiling/tune_chain.py --rows 1024 2048 4096 ;;
    seeds)  # the chain with S seeds stacked (issue 12): time per seed and programs per SM, S = 1, 2, 4, 8;
            # the graphed update draws from each seed's registered generator (graphed == eager)
        run_stage seeds 120 python3 profiling/tune_chain.py --rows 1024 --seeds 1 2 4 8 --block-m 32 64
        run_stage seedgraphs 120 env FASTBDM_TEST_DEVICE=cuda python3 -m pytest -q -rs -p no:cacheprovider \
            tests/test_seed_graphs.py tests/test_branches.py ;;
    train:*)  # a later call on the same warm machine continues from the last checkpoint
        run=/tmp/fastbdm-runs/halfcheetah-medium-replay/seed0
        resume=()
        [ -f "$run/checkpoint.pt" ] && resume=(--resume)
        run_stage train 590 python3 -m fastbdm.train --env halfcheetah-medium-replay --steps "${stage#train:}" \
            --eval-every 5000 --checkpoint-every 50000 --out /tmp/fastbdm-runs --no-progress "${resume[@]}"
        cp "$run/metrics.csv" "$out/train_metrics.csv" ;;
    *)
        echo "unknown stage $stage: env, micro, kernels, chains, graphs, benches, tune, seeds or train:N" | tee -a "$log" ;;
    esac
done
grep "^=== .*: exit" "$log"
