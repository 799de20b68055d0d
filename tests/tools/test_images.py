import pytest

from nl_detectron.analysis import expand_image_paths


def test_files_folders_and_patterns(tmp_path):
    for name in ("b.jpg", "a.PNG", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    single = str(tmp_path / "b.jpg")
    folder = [str(tmp_path / "a.PNG"), str(tmp_path / "b.jpg")]
    assert expand_image_paths([single]) == [single]
    assert expand_image_paths([str(tmp_path)]) == folder
    assert expand_image_paths([str(tmp_path / "*.jpg"), single]) == [single, single]


def test_missing_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        expand_image_paths([str(tmp_path / "nothing-here" / "*.jpg")])
    with pytest.raises(ValueError, match="no input images"):
        expand_image_paths([])
