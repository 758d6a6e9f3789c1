"""The photographer's bias in a dataset: where its object boxes sit, and how large they are.

Reads the object boxes of any TFDS dataset with a `BBoxFeature` (found automatically, e.g.
voc's and coco's 'objects/bbox'; `BoxStatsConfig.bbox_feature` picks one) through
`tfds.data_source`, leaves malformed boxes out (counted), and summarises the others with
`benchmarks.studies.bias_stats` (`survey`); `write_survey` writes stats.json, centres.png
(heat map of centres) and sizes.png (histograms of the sizes). All positions and sizes are in
image-normalised units (fractions of the image side).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from benchmarks.core import options
from benchmarks.core.options import option
from benchmarks.data import datasets
from benchmarks.results import plots, report
from benchmarks.studies import bias_stats


@dataclasses.dataclass(frozen=True)
class BoxStatsConfig:
    """How the boxes are read and summarised (the option fields are also the CLI's flags)."""

    bbox_feature: str | None = option(
        None, "Box feature, e.g. 'objects/bbox' (default: the first)."
    )
    central_fraction: float = option(
        0.5,
        "Side of the central square region as a fraction of the image side (area: its square).",
        lower=1e-6,
        upper=1.0,
    )
    bins: int = option(20, "Heat-map cells per side and histogram bins.", lower=1)

    def __post_init__(self):
        options.check(self)


def bbox_features(features: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Key paths of every `BBoxFeature` in a TFDS feature tree, in feature order."""
    import tensorflow_datasets as tfds  # only here: the rest of the package runs without it

    if isinstance(features, tfds.features.BBoxFeature):
        return [prefix]
    if isinstance(features, tfds.features.Sequence):
        return bbox_features(features.feature, prefix)
    if isinstance(features, tfds.features.FeaturesDict):
        return [p for k, f in features.items() for p in bbox_features(f, (*prefix, k))]
    return []


def open_boxes(
    name: str, split: str, data_dir: str | None, bbox_feature: str | None
) -> tuple[Sequence[dict], tuple[str, ...]]:
    """The random-access source of a TFDS detection dataset and the key path of its boxes.

    Raises:
      datasets.DataError: unknown dataset, no box feature, data_dir missing or without the dataset.
    """
    if name in datasets.EMBEDDED:
        raise datasets.DataError(
            f"dataset={name!r} has no object boxes: the box statistics read a TFDS detection "
            "dataset (voc, coco, ...); the digits serve the placement experiment."
        )
    builder = datasets.tfds_builder(name, data_dir)
    paths = bbox_features(builder.info.features)
    names = ["/".join(p) for p in paths]
    if not paths:
        raise datasets.DataError(
            f"dataset={name!r} has no BBoxFeature: the box statistics read a detection dataset "
            "(voc, coco, ...); the placement experiment needs no boxes."
        )
    if bbox_feature is not None and bbox_feature not in names:
        raise datasets.DataError(f"bbox_feature={bbox_feature!r}: {name!r} has boxes at {names}.")
    return datasets.tfds_split(builder, split), paths[
        names.index(bbox_feature) if bbox_feature else 0
    ]


def read_boxes(source: Sequence[dict], path: tuple[str, ...], num: int) -> np.ndarray:
    """The boxes of the first `num` examples, concatenated: float32 [M, 4]."""
    boxes = []
    for i in range(num):
        value = source[i]
        for key in path:
            value = value[key]
        boxes.append(np.asarray(value, np.float32).reshape(-1, 4))
    return np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)


@dataclasses.dataclass(frozen=True)
class BoxSurvey:
    """The valid boxes of a dataset's first images and their statistics.

    Attributes:
      data: the dataset read.
      config: the settings of the summary.
      bbox_feature: the key path of the boxes read, e.g. 'objects/bbox'.
      num_images: images read.
      boxes: float32 [M, 4] valid boxes (ymin, xmin, ymax, xmax), normalised.
      num_invalid: malformed boxes left out.
      summary: `bias_stats.summarize` of the boxes (numpy values).
      heatmap: float32 [bins, bins], the fraction of box centres in each cell.
    """

    data: datasets.DataConfig
    config: BoxStatsConfig
    bbox_feature: str
    num_images: int
    boxes: np.ndarray
    num_invalid: int
    summary: dict[str, np.ndarray]
    heatmap: np.ndarray


def survey(data: datasets.DataConfig, config: BoxStatsConfig) -> BoxSurvey:
    """Reads the boxes of the first `data.num_images` images (default: all) and summarises
    the valid ones.

    Raises:
      datasets.DataError: a dataset without boxes, or none of them valid.
    """
    source, path = open_boxes(data.dataset, data.split, data.data_dir, config.bbox_feature)
    num = len(source) if data.num_images is None else min(data.num_images, len(source))
    boxes = read_boxes(source, path, num)
    valid = np.asarray(bias_stats.valid_boxes(boxes))
    if not valid.any():
        raise datasets.DataError(
            f"dataset={data.dataset!r} split={data.split!r}: the first {num} examples "
            f"hold {len(boxes)} boxes, none valid."
        )
    boxes = boxes[valid]
    centres = bias_stats.box_centres(boxes)
    return BoxSurvey(
        data=data,
        config=config,
        bbox_feature="/".join(path),
        num_images=num,
        boxes=boxes,
        num_invalid=int((~valid).sum()),
        summary=jax.device_get(bias_stats.summarize(boxes, config.central_fraction)),
        heatmap=np.asarray(bias_stats.centre_heatmap(centres, config.bins)),
    )


def write_survey(
    output_dir: str, found: BoxSurvey, record_config: dict[str, Any], wall_time_s: float
) -> None:
    """stats.json, centres.png and sizes.png in `output_dir`, and the table on stdout.

    Args:
      found: the `survey`.
      record_config: the settings to record under 'config'.
      wall_time_s: the survey's wall time (s).
    """
    fraction, num, boxes = found.config.central_fraction, found.num_images, found.boxes
    record = {
        "config": record_config,
        "bbox_feature": found.bbox_feature,
        "num_images": num,
        "num_boxes": len(boxes),
        "num_invalid_boxes": found.num_invalid,
        "central_region": {"side_fraction": fraction, "area_fraction": fraction**2},
        "quantile_levels": bias_stats.QUANTILES,
        "summary": found.summary,
        "centre_heatmap": found.heatmap,
        "versions": report.versions(),
        "wall_time_s": wall_time_s,
    }
    report.write_json(os.path.join(output_dir, "stats.json"), record)
    title = f"{found.data.dataset} {found.data.split}: {len(boxes)} boxes of {num} images"
    plots.plot_heatmaps(
        os.path.join(output_dir, "centres.png"),
        {"fraction of box centres": found.heatmap},
        "x / width",
        "y / height",
        title,
    )
    extents = np.asarray(bias_stats.box_extents(boxes))
    plots.plot_histograms(
        os.path.join(output_dir, "sizes.png"),
        {
            "sqrt(area)": np.asarray(bias_stats.box_sizes(boxes)),
            "height": extents[:, 0],
            "width": extents[:, 1],
        },
        found.config.bins,
        "fraction of the image side",
        title,
        value_range=(0.0, 1.0),
    )
    rows = [
        {
            "statistic": "images / valid boxes / malformed boxes",
            "value": f"{num} / {len(boxes)} / {found.num_invalid}",
        },
        {"statistic": "quantile levels", "value": " ".join(map(str, bias_stats.QUANTILES))},
    ] + [
        {"statistic": k, "value": " ".join(f"{v:.3f}" for v in np.atleast_1d(found.summary[k]))}
        for k in found.summary
    ]
    print(report.markdown_table(rows, ["statistic", "value"]))
