"""Build templates/plots.html, the page of `dvc plots show` / `dvc plots diff`, from
templates/plots.src.html and the pinned npm packages of Vega, Vega-Lite and Vega-Embed.

    python templates/build_plots_page.py        # make plots-page; needs npm and the registry once

DVC's own page loads Vega from a CDN: offline it draws nothing and says nothing. This page carries
the three libraries inlined (about 840 kB), so it draws anywhere. Each package is fetched with
`npm pack` at its pinned version and checked against the registry's sha512 before it is used.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE, PAGE = HERE / "plots.src.html", HERE / "plots.html"
MARK = "<!-- INLINE_LIBRARIES -->"
# (package, version, the file a browser loads, the registry's dist.integrity): in load order, each
# UMD build defines the global the next one needs (vega -> vegaLite -> vegaEmbed)
PACKAGES = (
    (
        "vega",
        "6.4.0",
        "build/vega.min.js",
        "sha512-rHXCq2LpEWCLMjXBEj7hocY9G0/i5TGYRayGGSj06VTF4+l2IG2Z7oeZKCjWbUh/7hTE/mVhbaOPB72wCElh6g==",
    ),
    (
        "vega-lite",
        "6.5.0",
        "build/vega-lite.min.js",
        "sha512-fMXF6s0MrIg0UTWnLIfeFtgSLzVhyzSKobzGrh5rhS+mL6FOYFG3m7ouJ4U23gj65EK+gl9FIIT5w7wLNaAzkA==",
    ),
    (
        "vega-embed",
        "7.3.0",
        "build/vega-embed.min.js",
        "sha512-wQ8s5GaSzqoKgmRfbRolgBrjE2CP7ZKHXqH7NijxMqPjpdWxSs4Dn8tvp9g0giQvh2cK+3p56sxjWWM0wNngGw==",
    ),
)
# DVC fills its page by replacing these; a library holding one would be corrupted
DVC_PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")


def fetched(package: str, version: str, folder: Path) -> Path:
    result = subprocess.run(
        ["npm", "pack", "--silent", f"{package}@{version}"], cwd=folder, capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(f"error: npm pack {package}@{version} failed: {' '.join(result.stderr.split())[:300]}")
    return folder / result.stdout.split()[-1]


def checked_members(tarball: Path, integrity: str, path: str) -> tuple[str, str]:
    """(the library's text, its LICENSE) from the package, once its sha512 matches the pin."""
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if digest != integrity:
        sys.exit(f"error: {tarball.name}: sha512 {digest} is not the pinned {integrity}")
    with tarfile.open(tarball) as archive:
        library = archive.extractfile(f"package/{path}").read().decode()
        license_text = archive.extractfile("package/LICENSE").read().decode()
    if "</script" in library or any(mark in library for mark in DVC_PLACEHOLDERS):
        sys.exit(f"error: {tarball.name}: {path} cannot be inlined (holds </script or a DVC placeholder)")
    return library, license_text


def main() -> int:
    blocks = []
    with tempfile.TemporaryDirectory() as folder:
        for package, version, path, integrity in PACKAGES:
            library, license_text = checked_members(fetched(package, version, Path(folder)), integrity, path)
            notice = license_text.replace("--", "- -").strip()
            blocks.append(
                f"<!-- {package} {version} ({path}), BSD-3-Clause:\n{notice}\n-->\n<script>\n{library}\n</script>"
            )
    source = SOURCE.read_text()
    if MARK not in source:
        sys.exit(f"error: {SOURCE} has no {MARK}")
    PAGE.write_text(source.replace(MARK, "\n".join(blocks)))
    print(f"{PAGE.relative_to(HERE.parent)}: {', '.join(f'{p} {v}' for p, v, _, _ in PACKAGES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
