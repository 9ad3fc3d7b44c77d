"""Our confusion-matrix scores against torchmetrics (a reference nobody here wrote)."""

import math

import pytest
import torch

from segformer.engine.metrics import ConfusionMatrix

torchmetrics = pytest.importorskip("torchmetrics")
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex  # noqa: E402


def _random_batches(num_classes: int, seed: int, absent: int | None = None):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(3):
        target = torch.randint(0, num_classes, (2, 16, 16), generator=generator)
        pred = torch.where(torch.rand(target.shape, generator=generator) < 0.6, target,
                           torch.randint(0, num_classes, target.shape, generator=generator))
        target[torch.rand(target.shape, generator=generator) < 0.1] = 255
        if absent is not None:  # a class that neither target nor prediction contains
            target[target == absent] = 255
            pred[pred == absent] = 0
        yield pred, target


@pytest.mark.parametrize("absent", [None, 2])
def test_scores_match_torchmetrics(absent):
    k = 5
    ours = ConfusionMatrix(k)
    miou = MulticlassJaccardIndex(k, average="macro", ignore_index=255)
    iou = MulticlassJaccardIndex(k, average=None, ignore_index=255)
    macc = MulticlassAccuracy(k, average="macro", ignore_index=255)
    acc = MulticlassAccuracy(k, average=None, ignore_index=255)
    aacc = MulticlassAccuracy(k, average="micro", ignore_index=255)
    for pred, target in _random_batches(k, seed=3, absent=absent):
        ours.update(pred, target)
        for metric in (miou, iou, macc, acc, aacc):
            metric.update(pred, target)
    scores = ours.compute()
    assert scores.miou == pytest.approx(float(miou.compute()), abs=1e-6)
    assert scores.aacc == pytest.approx(float(aacc.compute()), abs=1e-6)
    reference_iou, reference_acc = iou.compute(), acc.compute()
    for c in range(k):
        if c == absent:  # undefined for us (NaN, left out of the means); torchmetrics reports 0
            assert math.isnan(scores.iou[c]) and math.isnan(scores.acc[c])
        else:
            assert scores.iou[c] == pytest.approx(float(reference_iou[c]), abs=1e-6)
            assert scores.acc[c] == pytest.approx(float(reference_acc[c]), abs=1e-6)
    present_acc = [a for a in scores.acc if not math.isnan(a)]
    assert scores.macc == pytest.approx(sum(present_acc) / len(present_acc))
    if absent is None:
        assert scores.macc == pytest.approx(float(macc.compute()), abs=1e-6)


def test_predicted_but_absent_class_counts_as_zero_iou():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
    scores = cm.compute()
    assert scores.iou[2] == 0.0 and math.isnan(scores.acc[2])
    assert scores.miou == pytest.approx((1 + 0.5 + 0) / 3)
    assert 0.0 <= scores.miou <= 1.0


def test_out_of_range_target_is_a_clear_error():
    cm = ConfusionMatrix(2)
    with pytest.raises(ValueError, match="class id 7"):
        cm.update(torch.tensor([0]), torch.tensor([7]))
