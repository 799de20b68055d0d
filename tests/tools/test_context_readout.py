"""The nl_context readouts: the reference AP of the true boxes and the true-box accuracy."""

import os

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.datasets import load_coco_json
from detectron2.modeling import build_model

from nl_detectron import add_nonlocal_config
from nl_detectron.analysis.context_readout import reference_ap, true_box_accuracy
from nl_detectron.data import context, context_source

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAIR_CONFIG = os.path.join(
    REPO, "configs", "quick_schedules", "faster_rcnn_nl_R18_C4_context_pair_quick.yaml"
)
SPECS = {
    "pair": context.ContextSpec("pair", num_images=12, seed=4),
    "bind": context.ContextSpec("bind", num_images=6, seed=4),
}
# larger splits for the reference AP: a coin's AP on a dozen targets ranges over 50-95
REFERENCE_SPECS = {
    "pair": context.ContextSpec("pair", num_images=64, seed=4),
    "bind": context.ContextSpec("bind", num_images=32, seed=4),
}
SOLID, STRIPED, SOLID_SQUARE, STRIPED_SQUARE = range(4)
BACKGROUND = 4


@pytest.fixture(scope="module")
def splits(write_context_splits):
    """rung -> (json_file, dataset dicts) of SPECS[rung] written as a val split."""
    out = {}
    for rung, (json_file, image_root) in write_context_splits(SPECS).items():
        name = f"nl_context_readout_{rung}"
        out[rung] = json_file, load_coco_json(json_file, image_root, name, ["partner"])
    yield out
    for rung in SPECS:  # load_coco_json set the classes of each name
        MetadataCatalog.remove(f"nl_context_readout_{rung}")


@pytest.fixture(scope="module")
def reference_jsons(write_context_splits):
    """rung -> json_file of REFERENCE_SPECS[rung] written as a val split."""
    return {rung: paths[0] for rung, paths in write_context_splits(REFERENCE_SPECS).items()}


@pytest.fixture(scope="module")
def model_cfg():
    """The pair rung's untrained R-18 model (eval mode) and its config."""
    cfg = get_cfg()
    add_nonlocal_config(cfg)
    cfg.merge_from_file(PAIR_CONFIG)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    torch.manual_seed(0)
    return build_model(cfg).eval(), cfg


def _transform(cfg):
    return T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)


def _fractions(records, wanted_target, wanted_cue):
    anns = [a for r in records for a in r["annotations"]]
    targets = [a for a in anns if "partner" in a]
    cues = [a for a in anns if "partner" not in a]
    return (
        sum(a["category_id"] == wanted_target for a in targets) / len(targets),
        sum(a["category_id"] == wanted_cue for a in cues) / len(cues),
    )


@pytest.mark.parametrize("rung", sorted(SPECS))
def test_reference_ap_of_the_rule_and_of_a_coin(reference_jsons, rung):
    json_file = reference_jsons[rung]
    rule = reference_ap(json_file, "rule")
    assert rule == {"AP": pytest.approx(100.0), "AP50": pytest.approx(100.0)}
    chance = reference_ap(json_file, "chance", seed=0)
    # half the boxes of each category are right at random ranks: AP about 50-70 (precision
    # interpolation lifts it above 50); true boxes overlap perfectly, so AP50 == AP
    assert 45 < chance["AP"] < 75
    assert chance["AP50"] == pytest.approx(chance["AP"])
    assert reference_ap(json_file, "chance", seed=0) == chance  # deterministic per seed
    others = [reference_ap(json_file, "chance", seed=s)["AP"] for s in (1, 2)]
    assert any(ap != chance["AP"] for ap in others)
    with pytest.raises(ValueError, match="naming='coin' is not one of 'rule', 'chance'"):
        reference_ap(json_file, "coin")


@pytest.mark.parametrize("rung", sorted(SPECS))
def test_true_box_accuracy_of_an_untrained_model(splits, model_cfg, rung):
    model, cfg = model_cfg
    _, records = splits[rung]
    result = true_box_accuracy(model, records, _transform(cfg), cfg.INPUT.FORMAT)
    spec = SPECS[rung]
    assert set(result) == {"target_accuracy", "cue_accuracy", "targets", "cues"}
    assert result["targets"] == result["cues"] == spec.pairs * spec.num_images
    for key in ("target_accuracy", "cue_accuracy"):
        assert 0 <= result[key] <= 1
        right = result[key] * result[key.replace("_accuracy", "s")]
        assert right == pytest.approx(round(right))  # a count of right answers
    # records drawn on the fly (the training splits' URIs) read the same pixels and boxes
    drawn = context_source.generated_records(spec)
    assert true_box_accuracy(model, drawn, _transform(cfg), cfg.INPUT.FORMAT) == result


@pytest.mark.parametrize(
    "bias, target, cue",
    [
        # the highest target score decides between the two target categories only, and the
        # highest cue score between the cue categories, whatever the other scores
        ({SOLID: 1.0, STRIPED_SQUARE: 2.0}, SOLID, STRIPED_SQUARE),
        ({STRIPED: 0.2, SOLID: 0.1, SOLID_SQUARE: 5.0, BACKGROUND: 9.0}, STRIPED, SOLID_SQUARE),
    ],
)
@pytest.mark.parametrize("rung", sorted(SPECS))
def test_a_rigged_classifier_scores_the_share_of_its_class(
    splits, model_cfg, rung, bias, target, cue
):
    model, cfg = model_cfg
    _, records = splits[rung]
    predictor = model.roi_heads.box_predictor.cls_score
    saved = {k: v.clone() for k, v in predictor.state_dict().items()}
    try:
        with torch.no_grad():
            predictor.weight.zero_()
            predictor.bias.zero_()
            for index, value in bias.items():
                predictor.bias[index] = value
        result = true_box_accuracy(model, records, _transform(cfg), cfg.INPUT.FORMAT)
    finally:
        predictor.load_state_dict(saved)
    target_share, cue_share = _fractions(records, target, cue)
    assert result["target_accuracy"] == pytest.approx(target_share)
    assert result["cue_accuracy"] == pytest.approx(cue_share)
    if rung == "bind":  # one solid and one striped partner per image
        assert target_share == cue_share == 0.5
    else:
        assert 0 < target_share < 1


def test_only_detectron2_box_heads(splits, model_cfg):
    model, cfg = model_cfg
    _, records = splits["pair"]
    roi_heads = model.roi_heads
    try:
        model.roi_heads = torch.nn.Identity()
        with pytest.raises(ValueError, match="StandardROIHeads.*got Identity"):
            true_box_accuracy(model, records[:1], _transform(cfg), cfg.INPUT.FORMAT)
    finally:
        model.roi_heads = roi_heads
    # images without annotations are skipped
    empty = [dict(records[0], annotations=[])]
    result = true_box_accuracy(model, empty, _transform(cfg), cfg.INPUT.FORMAT)
    assert result == {"target_accuracy": 0.0, "cue_accuracy": 0.0, "targets": 0, "cues": 0}
