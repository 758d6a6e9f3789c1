"""The stride ablation, shiftbench's main job: train each subsampling variant, measure each.

    python -m benchmarks.stride_ablation                      # embedded digits, ~minutes on CPU
    python -m benchmarks.stride_ablation --dataset=mnist --data_dir=../shared/data/tfds \
        --train_split='test[:80%]' --split='test[80%:]'

For every variant (default subsample, blur, aps, full) and seed, trains the same model with
optax (resuming from, or returning, its checkpoint in --output_dir), evaluates it under each
protocol (default: crop and embed shifts in 1-pixel steps, and a grid of circular shifts; also
`translate`, whose table splits accuracy and P(top-1 change) at --aug_max_shift) and
measures its per-stage feature equivariance. Writes ablation.json, ablation.csv, a markdown
table (printed; with several --seeds also mean +- std over them, in ablation_seeds.csv),
metrics.png (each metric per variant), curves.png (true-class probability against the first
protocol's shift for a few images, as Azulay & Weiss' Figure 1) and equivariance.png (error
against depth). A variant whose training and evaluation are finished is not redone.

Variants: 'subsample', 'blur' (BlurPool, size --blur_size), 'blur:K' (size K), 'aps', 'full'
(no subsampling anywhere), 'full:K' (subsampling removed from the last K stages only).
The work is `benchmarks.studies.ablation` (training and measuring) and
`benchmarks.studies.ablation_summary` (tables and files); this module turns flags into configs.
"""

from __future__ import annotations

from absl import flags

from benchmarks.cli import flags as sb_flags
from benchmarks.cli import training as cli_training
from benchmarks.inference import classifiers
from benchmarks.studies import ablation, ablation_summary

FLAGS = flags.FLAGS

sb_flags.define_data_flags(default_split="test")
sb_flags.define_eval_flags(default_output_dir="runs/ablation")
sb_flags.define_cluster_flags()
sb_flags.define_model_flags(default_model="vgg_small")
flags.adopt_module_key_flags(sb_flags)  # --help lists the flags of the configs too
flags.DEFINE_list("variants", list(ablation.AblationConfig.variants), "Variants to compare.")
flags.DEFINE_list("seeds", ["0"], "Training seeds (repeats of every variant).")
flags.DEFINE_list("protocols", list(ablation.AblationConfig.protocols), "Protocols to evaluate.")
sb_flags.define_config_flags(ablation.AblationConfig)


def main() -> None:
    sb_flags.join_cluster()
    sb_flags.check_batch_size(FLAGS.batch_size)
    if not FLAGS.seeds or not all(s.isdigit() for s in FLAGS.seeds):
        raise sb_flags.FlagError(f"--seeds={','.join(FLAGS.seeds)} must be non-negative ints.")
    config = sb_flags.config_from_flags(
        ablation.AblationConfig,
        variants=tuple(FLAGS.variants),
        seeds=tuple(int(s) for s in FLAGS.seeds),
        protocols=tuple(FLAGS.protocols),
        model=sb_flags.config_from_flags(classifiers.ModelConfig),
    )
    cli_training.run_study(ablation.run, ablation_summary.write_ablation, config)


if __name__ == "__main__":
    sb_flags.run_main(main)
