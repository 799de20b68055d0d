import pytest

from nl_detectron.layers.attention_policy import choose_path


def _rows(output):
    return [line.split(" | ") for line in output.splitlines() if line.startswith("| tiny |")]


def test_tiny_tables_name_each_path(load_tool, capsys):
    tool = load_tool("benchmark_blocks")
    tool.main(["--stages", "tiny", "--dtype", "fp32", "bf16", "--threads", "1"])
    rows = _rows(capsys.readouterr().out)
    rate_rows = [r for r in rows if r[2] == "embedded-Gaussian core alone"]
    assert len(rate_rows) == 1 and "GFLOP/s" in rate_rows[0][-2]  # CPU fp32 only
    rows = [r for r in rows if r not in rate_rows]
    # 7 block rows and 6 core rows per dtype
    assert len(rows) == 2 * (7 + 6)
    paths = {(r[1], r[2], r[3]) for r in rows}
    # CPU training on a small map keeps the affinity; dot product and SNL stay associative
    assert ("fp32", "NL embedded_gaussian", "kept") in paths
    assert ("bf16", "DNL", "kept") in paths
    assert ("fp32", "NL concatenation", "sorted") in paths
    assert ("fp32", "NL dot_product", "associative") in paths
    assert ("fp32", "GC", "pooled") in paths
    for row in rows:
        assert row[6].endswith("x") and float(row[6][:-1]) > 0


def test_budget_option_reaches_the_blocks(load_tool, capsys):
    tool = load_tool("benchmark_blocks")
    args = ["--stages", "tiny", "--tables", "block", "--threads", "1", "--budget-mb", "0.01"]
    tool.main(args + ["--variants", "NL gaussian", "DNL"])
    output = capsys.readouterr().out
    assert "affinity budget 0.01 MiB" in output
    # 0.01 MiB cannot hold the 120-position affinity twice: the CPU flash kernel instead
    variant_rows = [r for r in _rows(output) if r[2] in ("NL gaussian", "DNL")]
    assert len(variant_rows) == 2 and {r[3] for r in variant_rows} == {"fused"}


def test_paths_table_forces_every_path_of_every_variant(load_tool, capsys):
    tool = load_tool("benchmark_blocks")
    tool.main(["--stages", "tiny", "--tables", "paths", "--threads", "1", "--budget-mb", "0.05"])
    rows = _rows(capsys.readouterr().out)
    taken = {(r[2], r[3].split(" (")[0]) for r in rows}
    cpu = tool.torch.device("cpu")  # the Triton paths where the interpreter runs (conftest)
    assert taken == {
        (variant, path)
        for variant, paths in tool.PATH_VARIANTS.items()
        for path in paths
        if tool.path_runs_on(path, cpu)
    }
    assert "chunked (120 rows)" in {r[3] for r in rows}  # the whole tiny map is one chunk
    for row in rows:
        assert row[6].endswith("x") and float(row[6][:-1]) > 0
        assert float(row[7]) > 0  # first call, seconds
        # every path's y in fp32 equals the explicit block's up to rounding
        assert float(row[10]) < 1e-5, row
        # beside it, what the policy takes unforced: below 0.05 MiB the least it can hold
        assert row[11].rstrip(" |") == ("sorted" if row[2] == "NL concatenation" else "fused")
    assert tool.attention.choose_path is choose_path  # the policy is restored afterwards


def test_paths_option_picks_the_forced_paths(load_tool, capsys):
    tool = load_tool("benchmark_blocks")
    argv = ["--stages", "tiny", "--tables", "paths", "--threads", "1", "--paths", "kept", "sorted"]
    tool.main(argv + ["--variants", "DNL", "NL concatenation", "NL dot_product"])
    rows = _rows(capsys.readouterr().out)
    assert [(r[2], r[3]) for r in rows] == [("DNL", "kept"), ("NL concatenation", "sorted")]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--repeats", "0"], "--repeats=0"),
        (["--budget-mb", "-1"], "--budget-mb=-1.0"),
        (["--dtype", "tf32"], "--dtype tf32 needs --device cuda"),
        (["--paths", "kept"], "--paths kept selects rows of the paths and compile tables"),
        (
            ["--tables", "paths", "--paths", "sorted", "--variants", "DNL"],
            "--paths sorted: no variant of --variants takes any of them .*DNL: fused, kept",
        ),
    ],
)
def test_bad_arguments(load_tool, argv, message):
    tool = load_tool("benchmark_blocks")
    with pytest.raises(ValueError, match=message):
        tool.main(["--stages", "tiny"] + argv)


def test_triton_paths_need_a_device_that_runs_them(load_tool, monkeypatch):
    tool = load_tool("benchmark_blocks")
    monkeypatch.setattr(tool, "triton_runs_on", lambda device_type: False)
    argv = ["--stages", "tiny", "--tables", "paths", "--paths", "kept", "triton"]
    with pytest.raises(ValueError, match="--paths triton: Triton cannot run on cpu here"):
        tool.main(argv)


def test_compile_table_times_the_policy_and_forced_paths_compiled(load_tool, capsys):
    tool = load_tool("benchmark_blocks")
    argv = ["--stages", "tiny", "--tables", "compile", "--threads", "1", "--paths", "kept"]
    tool.main(argv + ["--compile-backend", "aot_eager", "--variants", "DNL", "GC"])
    rows = _rows(capsys.readouterr().out)
    # under compile the policy takes the fused path; kept is forced on the compiled block only
    assert [(r[2], r[3]) for r in rows] == [
        ("DNL", "fused"),
        ("DNL", "kept (forced)"),
        ("GC", "pooled"),
    ]
    for row in rows:
        assert row[6].endswith("x") and float(row[6][:-1]) > 0
        assert (row[8], row[9]) == ("1", "0")  # one graph, no graph break
        assert float(row[12]) < 1e-5, row  # compiled output against eager
        assert row[13].rstrip(" |") in ("kept", "pooled")  # eager takes the policy's path
    assert tool.attention.choose_path is choose_path
