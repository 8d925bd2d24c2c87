"""The one-kernel benchmarks run (tiny sizes) and write their paired ratios; ``paired_ratio``
divides repeat by repeat."""
from __future__ import annotations

import json

import pytest

from streamaug.benchmarks.timing import paired_rates, paired_ratio


@pytest.mark.parametrize("module, ratios", [
    ("noise_field_speed", ["uint8 lookup / uint8 normal_", "float lookup / float normal_"]),
    ("planar_copy", ["speedup"]),
    ("warp_layout", ["speedup"]),
])
def test_kernel_bench_writes_its_ratios(module, ratios, tmp_path, capsys):
    pytest.importorskip("cv2")
    import importlib

    main = importlib.import_module(f"streamaug.benchmarks.{module}").main
    out = tmp_path / "r.json"
    assert main(["--rows", "3", "--size", "16", "--repeats", "2", "--busy", "0", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    found = doc["ratios"] if "ratios" in doc else doc
    for name in ratios:
        assert found[name] > 0
    assert doc["machine"]["cpu_count"] >= 1
    for result in doc["results"].values():
        assert len(result["per_repeat"]) == 2 and result["items_per_s"] > 0
    printed = capsys.readouterr().out
    assert f"{found[ratios[0]]:.2f}x" in printed, "the ratio printed is the one written"


@pytest.mark.parametrize("argv, message", [(["--size", "0"], "--size: must be an int >= 1, got '0'"),
                                           (["--rows", "x"], "--rows: must be an int >= 1, got 'x'"),
                                           (["--busy", "-1"], "--busy: must be an int >= 0, got '-1'")])
def test_kernel_bench_refuses_a_bad_argument(argv, message, capsys):
    from streamaug.benchmarks import planar_copy

    with pytest.raises(SystemExit):
        planar_copy.main(argv)
    assert message in capsys.readouterr().err


def test_paired_ratio_is_the_median_of_per_repeat_quotients():
    results = {"a": {"per_repeat": [10.0, 30.0, 20.0], "busy": {"per_repeat": [5.0, 5.0, 5.0]}},
               "b": {"per_repeat": [5.0, 10.0, 40.0], "busy": {"per_repeat": [10.0, 1.0, 2.0]}}}
    assert paired_ratio(results, "a", "b") == 2.0           # quotients 2, 3, 0.5
    assert paired_ratio(results, "a", "b", busy=True) == 2.5   # 0.5, 5, 2.5


def test_paired_rates_times_every_way_in_every_repeat():
    calls = []

    def way(name):
        def fn():
            calls.append(name)
            return 10
        return fn
    out = paired_rates({"x": way("x"), "y": way("y")}, busy=0, repeats=3, warmup=1)
    assert calls == ["x", "y", "x", "y", "y", "x", "x", "y"], "warm-up, then the order reversed every other repeat"
    assert set(out) == {"x", "y"} and all(len(v["per_repeat"]) == 3 and "busy" not in v for v in out.values())
