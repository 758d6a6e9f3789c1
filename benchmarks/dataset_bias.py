"""The photographer's bias (Azulay & Weiss, claim 3): measure it in a dataset, and its effect.

    python -m benchmarks.dataset_bias --dataset=voc --split=validation --data_dir=DIR
    python -m benchmarks.dataset_bias --mode=experiment           # embedded digits, ~minutes

--mode=stats (the default) reads the object boxes of any TFDS dataset with a `BBoxFeature`
(found automatically, e.g. voc's and coco's 'objects/bbox'; --bbox_feature picks one) through
`tfds.data_source` and writes stats.json (mean and spread of box centres, fraction of centres in
the central square whose side is --central_fraction of the image's, quantiles of sqrt(box area /
image area), of box height and of box width, all in image-normalised units), centres.png (heat
map of centres) and sizes.png (histograms of the sizes). Malformed boxes are counted and left out.

--mode=experiment trains the same net on digits placed with each training bias (--biases:
'centred:sigma=S' draws the digit centre S px around the canvas centre, 'uniform' anywhere on
the canvas), then puts each test digit at distance r (--offsets) from the canvas centre in
--num_directions directions and measures accuracy there and P(top-1 change) under 1-px shifts
around it (--local_sweep of +-local_shift px, one evaluator sweep per position). A digit is the
central --box_size px of each image (the embedded digits: their 20 px digit; MNIST: 24 px
keep all but 0.3% of its ink), resized to --digit_size, pasted into a black --canvas_size canvas. Writes
experiment.json, experiment.csv, accuracy.png and p_top1_change.png (metric against r, a line
per bias), placements.png (where each bias put the training digits) and prints the table.
Each bias trains in --output_dir/<bias>/checkpoint and caches its result, so a rerun is cheap.

The work is `benchmarks.studies.box_survey` (stats) and `benchmarks.studies.bias_experiment`
(experiment); this module turns flags into their configs.
"""

from __future__ import annotations

import time

from absl import flags

from benchmarks.cli import flags as sb_flags
from benchmarks.cli import training as cli_training
from benchmarks.data import datasets
from benchmarks.inference import classifiers
from benchmarks.studies import bias_experiment, box_survey

FLAGS = flags.FLAGS

sb_flags.define_data_flags(default_split="test")
sb_flags.define_eval_flags(default_output_dir="runs/dataset_bias")
sb_flags.define_cluster_flags()
sb_flags.define_model_flags(default_model="vgg_small")
flags.adopt_module_key_flags(sb_flags)  # --help lists the flags of the configs too
FLAGS.set_default("width", 8)
flags.DEFINE_enum("mode", "stats", ["stats", "experiment"], "Box statistics or the experiment.")
sb_flags.define_config_flags(box_survey.BoxStatsConfig)  # --mode=stats
flags.DEFINE_list(  # --mode=experiment
    "biases", list(bias_experiment.ExperimentConfig.biases), "Training biases."
)
flags.DEFINE_list(
    "offsets",
    [str(o) for o in bias_experiment.ExperimentConfig.offsets],
    "Test distances r from the centre (px).",
)
sb_flags.define_config_flags(bias_experiment.ExperimentConfig)


def run_stats() -> None:
    """--mode=stats: stats.json, centres.png, sizes.png in --output_dir."""
    start = time.perf_counter()
    found = box_survey.survey(
        sb_flags.config_from_flags(datasets.DataConfig),
        sb_flags.config_from_flags(box_survey.BoxStatsConfig),
    )
    wall_time_s = time.perf_counter() - start
    box_survey.write_survey(FLAGS.output_dir, found, sb_flags.flag_values(), wall_time_s)


def run_experiment() -> None:
    """--mode=experiment: trains one net per bias, writes the table and plots."""
    if not FLAGS.offsets or not all(o.isdigit() for o in FLAGS.offsets):
        raise sb_flags.FlagError(f"--offsets={','.join(FLAGS.offsets)} must be ints >= 0 (px).")
    config = sb_flags.config_from_flags(
        bias_experiment.ExperimentConfig,
        biases=tuple(FLAGS.biases),
        offsets=tuple(int(o) for o in FLAGS.offsets),
        model=sb_flags.config_from_flags(classifiers.ModelConfig),
    )
    sb_flags.check_batch_size(FLAGS.batch_size)
    cli_training.run_study(bias_experiment.run, bias_experiment.write_experiment, config)


def main() -> None:
    sb_flags.join_cluster()
    if FLAGS.mode == "stats":
        run_stats()
    else:
        run_experiment()


if __name__ == "__main__":
    sb_flags.run_main(main)
