"""`napari-cuts bench --results-md`: each benchmark replaces only its own section."""

from __future__ import annotations

import json

from napari_cuts.cli import main


def test_bench_writes_and_replaces_its_own_section(tmp_path, capsys):
    bdir = tmp_path / "benchmarks"
    bdir.mkdir()
    (bdir / "bench_toy.py").write_text(
        "import os\n"
        "def run(quick=False):\n"
        "    return {'value': int(os.environ.get('TOY_VALUE', '1')), 'quick': quick}\n")
    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n\n<!-- other -->\nkept\n<!-- /other -->\n")
    assert main(["bench", "toy", "--quick", "--json", "--benchmarks-dir", str(bdir),
                 "--results-md", str(md)]) == 0
    assert json.loads(capsys.readouterr().out) == {"toy": {"value": 1, "quick": True}}
    text = md.read_text()
    assert "<!-- bench:toy -->" in text and '"value": 1' in text and "kept" in text
    assert "napari-cuts bench toy --quick" in text
    import os

    os.environ["TOY_VALUE"] = "7"
    try:
        assert main(["bench", "toy", "--json", "--benchmarks-dir", str(bdir),
                     "--results-md", str(md)]) == 0
    finally:
        del os.environ["TOY_VALUE"]
    text = md.read_text()
    assert text.count("<!-- bench:toy -->") == 1 and '"value": 7' in text and '"value": 1' not in text
    assert "kept" in text
