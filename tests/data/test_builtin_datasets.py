"""Registration of the built-in datasets with detectron2's catalogs."""

import os

import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog, detection_utils
from detectron2.data.detection_utils import create_keypoint_hflip_indices

import nl_detectron  # noqa: F401  (registers on import)
from nl_detectron.data import (
    COCO_PERSON_MINI,
    CONTEXT_DATASETS,
    GENERATED_DATASETS,
    SHAPES_DATASETS,
    context,
    context_source,
    find_coco_person_mini,
    missing_datasets,
    prepare_datasets,
    register_builtin_datasets,
    shapes,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED_MINI = os.path.join(REPO_ROOT, "..", "shared", "data", COCO_PERSON_MINI)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Registers the built-ins under a temporary root, then restores the default registration."""
    path = str(tmp_path_factory.mktemp("datasets"))
    register_builtin_datasets(path)
    yield path
    register_builtin_datasets()


def test_import_registers_generated_splits():
    for name in SHAPES_DATASETS:
        assert name in DatasetCatalog.list()
        assert MetadataCatalog.get(name).evaluator_type == "coco"


def test_registration_reads_and_writes_nothing(tmp_path):
    register_builtin_datasets(str(tmp_path / "fresh"))
    try:
        assert not os.path.exists(tmp_path / "fresh")
    finally:
        register_builtin_datasets()


def test_load_generates_on_first_use(root):
    dicts = DatasetCatalog.get("nl_shapes_val")
    meta = MetadataCatalog.get("nl_shapes_val")
    assert meta.json_file.startswith(root) and os.path.isfile(meta.json_file)
    assert len(dicts) == shapes.SPLITS["val"].num_images
    record = dicts[0]
    assert os.path.isfile(record["file_name"])
    assert record["height"] == record["width"] == shapes.SPLITS["val"].image_size
    for obj in record["annotations"]:
        assert 0 <= obj["category_id"] < len(shapes.CATEGORY_NAMES)  # contiguous ids
        assert len(obj["keypoints"]) == 3 * len(shapes.KEYPOINT_NAMES)
    # load_coco_json set the same classes that registration declared up front.
    assert meta.thing_classes == list(shapes.CATEGORY_NAMES)
    assert meta.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(5)}


def test_train_and_val_differ(root):
    prepare_datasets(["nl_shapes_train", "nl_shapes_val", "coco_2017_train"])
    train = MetadataCatalog.get("nl_shapes_train").json_file
    val = MetadataCatalog.get("nl_shapes_val").json_file
    assert os.path.isfile(train) and os.path.isfile(val) and train != val
    a, b = DatasetCatalog.get("nl_shapes_train"), DatasetCatalog.get("nl_shapes_val")
    assert len(a) == shapes.SPLITS["train"].num_images
    assert a[0]["annotations"] != b[0]["annotations"]


def test_keypoint_metadata_drives_flipping(root):
    meta = MetadataCatalog.get("nl_shapes_train")
    assert meta.keypoint_names == shapes.KEYPOINT_NAMES
    assert len(meta.keypoint_oks_sigmas) == len(meta.keypoint_names)
    flip = create_keypoint_hflip_indices(["nl_shapes_train"])
    names = meta.keypoint_names
    assert names[flip[names.index("head")]] == "head"
    assert names[flip[names.index("left_wrist")]] == "right_wrist"
    assert sorted(flip) == list(range(len(names)))


def test_generated_data_needs_no_files_to_pass_the_check(tmp_path):
    register_builtin_datasets(str(tmp_path))
    try:
        assert missing_datasets(list(GENERATED_DATASETS)) == []
    finally:
        register_builtin_datasets()


def test_missing_datasets_names_the_missing_paths(tmp_path):
    from detectron2.data.datasets import register_coco_instances

    json_file = str(tmp_path / "annotations" / "instances_x.json")
    register_coco_instances("nl_test_absent", {}, json_file, str(tmp_path / "x"))
    try:
        problems = missing_datasets(["nl_test_absent", "nl_test_unregistered"])
    finally:
        DatasetCatalog.remove("nl_test_absent")
        MetadataCatalog.remove("nl_test_absent")
    assert problems == [
        f"nl_test_absent: json_file {json_file} does not exist",
        f"nl_test_absent: image_root {tmp_path / 'x'} does not exist",
        "nl_test_unregistered: not a registered dataset",
    ]


@pytest.mark.skipif(not os.path.isdir(SHARED_MINI), reason="../shared/data is absent")
def test_coco_person_mini_loads_with_coco_keypoint_metadata():
    assert os.path.samefile(find_coco_person_mini(os.devnull), SHARED_MINI)
    assert COCO_PERSON_MINI in DatasetCatalog.list()
    dicts = DatasetCatalog.get(COCO_PERSON_MINI)
    meta = MetadataCatalog.get(COCO_PERSON_MINI)
    assert len(dicts) == 4 and sum(len(d["annotations"]) for d in dicts) == 14
    assert meta.thing_classes == ["person"]
    assert len(meta.keypoint_names) == 17 == len(meta.keypoint_oks_sigmas)
    assert ("left_eye", "right_eye") in meta.keypoint_flip_map
    num_labelled = 0
    for record in dicts:
        assert os.path.isfile(record["file_name"])
        for obj in record["annotations"]:
            kp = np.asarray(obj["keypoints"]).reshape(17, 3)
            labelled = kp[kp[:, 2] > 0]
            num_labelled += len(labelled)
            # Real labels may leave the box (an occluded ankle), never the image; +0.5 applied.
            assert (labelled[:, 0] > 0).all() and (labelled[:, 0] < record["width"]).all()
            assert (labelled[:, 1] > 0).all() and (labelled[:, 1] < record["height"]).all()
            assert obj["segmentation"]
    assert num_labelled > 100


def test_nl_context_is_registered_with_its_metadata(root):
    register_builtin_datasets(root)  # earlier tests restore the default root
    assert sorted(CONTEXT_DATASETS) == [
        "nl_context_bind_train",
        "nl_context_bind_val",
        "nl_context_pair_train",
        "nl_context_pair_val",
    ]
    for name, (rung, split) in CONTEXT_DATASETS.items():
        assert name == f"nl_context_{rung}_{split}" and name in GENERATED_DATASETS
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "coco"
        assert meta.thing_classes == [
            "paired_with_solid",
            "paired_with_striped",
            "solid_square",
            "striped_square",
        ]
        assert meta.target_classes == meta.thing_classes[:2]
        assert meta.cues == ["solid", "striped"]
        if split == "train":  # drawn on the fly: no files at all
            assert "json_file" not in meta.as_dict() and "image_root" not in meta.as_dict()
        else:
            folder = context_source.split_dir(root, rung, split)
            assert meta.json_file == os.path.join(folder, "instances.json")
            assert meta.image_root == os.path.join(folder, "images")
    assert missing_datasets(list(CONTEXT_DATASETS)) == []


@pytest.fixture
def small_context_splits(root, monkeypatch):
    """The nl_context splits registered under ``root`` with small specs (SPLITS is read when a
    split is loaded); yields {(rung, split): spec}."""
    register_builtin_datasets(root)  # earlier tests restore the default root
    small = {
        (rung, split): context.ContextSpec(rung, num_images=n, seed=seed)
        for rung in context.RUNGS
        for split, n, seed in (("train", 6, 1), ("val", 4, 2))
    }
    for key, spec in small.items():
        monkeypatch.setitem(context.SPLITS, key, spec)
    yield small


def test_nl_context_train_is_drawn_on_the_fly(root, small_context_splits):
    for rung in context.RUNGS:
        spec = small_context_splits[(rung, "train")]
        dicts = DatasetCatalog.get(f"nl_context_{rung}_train")
        assert dicts == context_source.generated_records(spec)
        assert [d["file_name"] for d in dicts] == [
            context_source.image_uri(spec, i) for i in range(spec.num_images)
        ]
        image = detection_utils.read_image(dicts[1]["file_name"], format="BGR")
        assert np.array_equal(image, context.draw_image(spec, 1)[0])
        # nothing was written for it
        assert not os.path.exists(context_source.split_dir(root, rung, "train"))


def test_nl_context_val_loads_with_partners(root, small_context_splits):
    for rung in context.RUNGS:
        name = f"nl_context_{rung}_val"
        spec = small_context_splits[(rung, "val")]
        dicts = DatasetCatalog.get(name)
        meta = MetadataCatalog.get(name)
        assert meta.json_file.startswith(root) and os.path.isfile(meta.json_file)
        assert len(dicts) == spec.num_images
        assert meta.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(4)}
        for record in dicts:
            assert os.path.isfile(record["file_name"])
            targets = [a for a in record["annotations"] if a["category_id"] in (0, 1)]
            cues = [a for a in record["annotations"] if a["category_id"] in (2, 3)]
            assert len(targets) == len(cues) == spec.pairs
            for obj in targets:
                # the partner survives loading, for the attention statistic
                assert obj["partner"]["cue"] in context.CUES
                assert obj["partner"]["segmentation"]
                assert obj["category_id"] == context.CUES.index(obj["partner"]["cue"])
            assert not any("partner" in obj for obj in cues)
        # the val records are the drawn images, read from the written PNGs
        image = detection_utils.read_image(dicts[2]["file_name"], format="BGR")
        assert np.array_equal(image, context.draw_image(spec, 2)[0])
    prepare_datasets(list(CONTEXT_DATASETS))
    assert missing_datasets(list(CONTEXT_DATASETS)) == []
