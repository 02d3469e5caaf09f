"""`dvc plots show` and `dvc plots diff` pages, loaded in a real headless Chromium with the network
off (issue 24, item 2): no script error, every plot drawn, no image past the window's edge; a legend
that tells every line apart by colour (issue 37, item 4).

DVC's own page loads Vega from a CDN (offline: nothing drawn, nothing said) and breaks on an
apostrophe in a plot title; the project's page (templates/plots.html, the default in .dvc/config)
carries its own Vega.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from browser import Browser

from conftest import REPO, run
from spikelab.params import read_yaml

pytestmark = pytest.mark.slow

# what the page holds once drawn: per Vega plot, its line marks and axis titles; per image, whether
# it loaded and where its right edge is
PAGE_STATE = """(() => {
  const width = document.documentElement.clientWidth;
  return {
    plots: Array.from(document.querySelectorAll('.vega-embed')).map(plot => ({
      lines: plot.querySelectorAll('.mark-line path').length,
      titles: Array.from(plot.querySelectorAll('.role-axis-title text')).map(t => t.textContent),
      legend: Array.from(plot.querySelectorAll('.role-legend-label text')).map(t => t.textContent),
      swatches: Array.from(plot.querySelectorAll('.role-legend-symbol path')).map(p => p.getAttribute('stroke')),
    })),
    images: Array.from(document.querySelectorAll('img')).map(image => ({
      loaded: image.complete && image.naturalWidth > 0,
      right: image.getBoundingClientRect().right,
    })),
    width: width,
    scroll_width: document.documentElement.scrollWidth,
    page_errors: (document.getElementById('page-errors') || {}).textContent || '',
  };
})()"""


def vega_plot_count() -> int:
    """The plots dvc.yaml draws with Vega (its image plots are files, not Vega)."""
    plots = read_yaml(REPO / "dvc.yaml", "dvc")["plots"]
    return sum(1 for plot in plots if isinstance(plot, dict))


@pytest.fixture
def plots_lab(lab_repo):
    """The lab copy with a committed run's metrics, then a second run's in the workspace: two revisions
    for `dvc plots diff`."""
    (lab_repo / "metrics").mkdir(exist_ok=True)
    for name in ("history.csv", "loss_curve.png"):
        shutil.copy(REPO / "metrics" / name, lab_repo / "metrics" / name)
    run(["git", "add", "-f", "metrics"], lab_repo)
    run(["git", "commit", "-qm", "a run's metrics"], lab_repo)
    history = (lab_repo / "metrics" / "history.csv").read_text().splitlines()
    (lab_repo / "metrics" / "history.csv").write_text("\n".join(history[: len(history) // 2]) + "\n")
    return lab_repo


def page_in_browser(page: Path) -> tuple[dict, list[str]]:
    with Browser(offline=True) as browser:
        browser.open(page.as_uri(), settle_s=0.5)
        expected = vega_plot_count()
        browser.wait_until(
            f"document.querySelectorAll('.vega-embed .mark-line path').length > 0 && "
            f"document.querySelectorAll('.vega-embed').length >= {expected}",
            timeout_s=20,
        )
        return browser.evaluate(PAGE_STATE), browser.errors()


@pytest.mark.parametrize("command", [["show"], ["diff", "HEAD"]], ids=["show", "diff"])
def test_the_plots_page_draws_every_plot_offline(chromium, plots_lab, command):
    out = plots_lab / "dvc_plots"
    run(["dvc", "plots", *command, "-o", str(out)], plots_lab)
    state, errors = page_in_browser(out / "index.html")
    assert errors == [] and state["page_errors"] == "", errors or state["page_errors"]
    assert len(state["plots"]) == vega_plot_count(), state
    assert all(plot["lines"] >= 1 for plot in state["plots"]), state["plots"]
    # the legend names every line, each in a colour of its own: DVC's default told loss from val_loss
    # by a dash pattern on two grey swatches that look the same
    loss = state["plots"][0]
    revisions = ["workspace"] + (["HEAD"] if command[0] == "diff" else [])
    assert loss["legend"] == [f"{rev} {key}" for rev in revisions for key in ("loss", "val_loss")], loss
    assert len(set(loss["swatches"])) == len(loss["legend"]), loss
    # the loss axis names no particular loss: a log_cosh run is not "cross-entropy"
    assert not any("entropy" in title for plot in state["plots"] for title in plot["titles"]), state["plots"]
    images = state["images"]
    assert len(images) == (2 if command[0] == "diff" else 1)
    assert all(image["loaded"] for image in images), images
    assert all(image["right"] <= state["width"] for image in images), state
    assert state["scroll_width"] <= state["width"], state
