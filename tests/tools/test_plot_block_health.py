"""tools/plot_block_health.py: reads the monitor's scalars from metrics.json and plots them."""

import json

import pytest


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("plot_block_health")


def _write_run(folder, blocks=("res4.nonlocal1",), iterations=(19, 39, 59), health=True):
    """A metrics.json as detectron2's JSONWriter writes it: one line per written iteration."""
    folder.mkdir(parents=True)
    with open(folder / "metrics.json", "w") as f:
        for it in iterations:
            line = {"iteration": it, "total_loss": 1.0 / (it + 1), "lr": 0.01}
            for b in blocks if health else ():
                line.update(
                    {
                        f"nonlocal/{b}/gate": 0.001 * it,
                        f"nonlocal/{b}/share": 0.0001 * it,
                        f"nonlocal/{b}/path/kept": 1.0,
                    }
                )
                if b.startswith("res4"):  # an attention block; the other has no entropy
                    line[f"nonlocal/{b}/entropy"] = 1.0 - 0.001 * it
                    line[f"nonlocal/{b}/diversity"] = 0.001 * it
            f.write(json.dumps(line) + "\n")
    return folder


def test_reads_the_health_series(tool, tmp_path):
    run = _write_run(tmp_path / "nl_seed0", blocks=("res4.nonlocal1", "keypoint_head.nonlocal2"))
    with open(run / "metrics.json", "a") as f:
        f.write('{"iteration": 39, "nonlocal/res4.nonlocal1/gate": 7.0}\n')  # a resumed run
        f.write('{"iteration": 79, "nonlocal/res4.nonl')  # killed while writing
    series = tool.read_health(tool.metrics_file(str(run)))
    iterations, gates = series["res4.nonlocal1", "gate"]
    assert iterations == [19, 39, 59] and gates == pytest.approx([0.019, 7.0, 0.059])
    assert series["res4.nonlocal1", "entropy"][0] == [19, 39, 59]
    assert ("keypoint_head.nonlocal2", "entropy") not in series
    assert {stat for _, stat in series} == {"gate", "share", "entropy", "diversity"}


def test_plots_several_runs_into_one_png(tool, tmp_path, capsys):
    a = _write_run(tmp_path / "a" / "seed0")
    b = _write_run(tmp_path / "b" / "seed0", blocks=("res4.nonlocal1", "keypoint_head.nonlocal2"))
    c = _write_run(tmp_path / "dnl_seed1")
    output = tmp_path / "plots" / "health.png"
    tool.main([str(a), str(b / "metrics.json"), str(c), "--output", str(output)])
    with open(output, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {output}" in capsys.readouterr().out
    # Folder names label the runs; two runs named alike keep their paths.
    assert tool.run_labels([str(a), str(b / "metrics.json"), str(c)]) == [
        str(a),
        str(b / "metrics.json"),
        "dnl_seed1",
    ]
    tool.main([str(a), str(c), "--labels", "NL", "DNL", "--output", str(output)])


def test_run_without_metrics_is_named(tool, tmp_path):
    with pytest.raises(SystemExit, match=rf"{tmp_path}: no metrics\.json \(looked for "):
        tool.main([str(tmp_path), "--output", str(tmp_path / "h.png")])


def test_run_without_health_says_the_monitor_may_be_off(tool, tmp_path):
    run = _write_run(tmp_path / "stock", health=False)
    with pytest.raises(SystemExit) as e:
        tool.main([str(run), "--output", str(tmp_path / "h.png")])
    message = str(e.value.code)
    assert str(run / "metrics.json") in message
    assert "no 'nonlocal/' metrics" in message and "MODEL.NONLOCAL.MONITOR_PERIOD" in message
    assert not (tmp_path / "h.png").exists()


def test_labels_must_match_the_runs(tool, tmp_path, capsys):
    run = _write_run(tmp_path / "a")
    with pytest.raises(SystemExit):
        tool.main([str(run), "--labels", "A", "B", "--output", str(tmp_path / "h.png")])
    assert "--labels has 2 names for 1 runs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main([str(run), str(run), "--output", str(tmp_path / "h.png")])
    assert "the runs need distinct labels" in capsys.readouterr().err
