"""``bitnas report``: one self-contained HTML page of a run folder (inline PNG plots, no scripts, nothing
loaded from anywhere), with every section a reader looks for and the artifact's own figures."""

from __future__ import annotations

import base64
import json
import shutil
from html.parser import HTMLParser

from bitnas.cli import main

SECTIONS = ["Pareto front", "Hypervolume against evaluations", "Bit widths of the front",
            "LUT: predicted against measured latency", "Artifact"]


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs, self.h2, self.cells, self._in = [], [], [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, k, v or "") for k, v in attrs]
        self._in = tag

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "h2":
            self.h2.append(data)
        elif self._in == "td":
            self.cells.append(data)


def _parse(path):
    page = _Page()
    page.feed(path.read_text())
    return page


def test_report_is_one_self_contained_page_of_the_run(demo_run, tmp_path, capsys):
    summary, demo = demo_run
    run = tmp_path / "run"
    shutil.copytree(demo, run)
    # the LUT's fidelity, measured as a user would, is kept in the run folder for the report
    assert main(["lut", "validate", "--project", str(run), "--lut", str(run / "lut.json"), "--samples", "4",
                 "--repeats", "20", "--rounds", "2", "--plot", str(tmp_path / "v.png")]) == 0
    assert (run / "lut_validate.json").is_file()
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    out = run / "report.html"
    assert capsys.readouterr().out.strip() == str(out)
    page = _parse(out)
    assert page.h2 == SECTIONS
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    srcs = [v for tag, k, v in page.attrs if k in ("src", "href")]
    assert len(srcs) == 5  # front, hypervolume, bit widths, LUT scatter, latency breakdown; nothing else
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    man = json.loads((next((run / "artifacts").iterdir()) / "manifest.json").read_text())
    text = out.read_text()
    assert man["candidate"]["id"] in text
    assert f"{man['measured']['ort']['latency_ms']:.4g}" in page.cells  # the artifact's measured figure, as read


def test_report_of_a_folder_without_a_search_is_one_clear_error(tmp_path, capsys):
    run = tmp_path / "p"
    assert main(["init", str(run)]) == 0
    capsys.readouterr()
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert "no search result in this run folder" in err and err.count("error:") == 1
