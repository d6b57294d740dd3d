"""The page: the HTML template with the CSS, the JavaScript and the data inlined; shared HTML helpers.

The template, CSS and JavaScript live in damage_smp/assets/report/ (packaged with the wheel). ``Page`` says where
a page's files are written while it is built and how the page links them (relative URLs, so the page and its
``<name>_files/`` folder can be moved, zipped and sent together).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from string import Template
from urllib.parse import quote

from .. import __version__
from ..console import MISSING, is_missing

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "report"
MARKER = ".damage-smp-report"  # inside every files folder we write: only such folders are ever replaced


@dataclass(frozen=True)
class Page:
    """Where a page's files go while it is built (``staging``) and how the page links them (``prefix``)."""

    staging: Path
    prefix: str  # the files folder's name, URL-quoted, as the page links it

    def url(self, rel: str | Path) -> str:
        """A file under the files folder -> its relative URL from the page."""
        return f"{self.prefix}/{quote(Path(rel).as_posix())}"


@dataclass
class Built:
    """A page body and its data, as the gallery and study builders return them."""

    title: str
    body: str
    data: dict
    n_shown: int
    n_total: int
    notes: list[str] = field(default_factory=list)


# ============================================================================================ helpers
def render_page(kind: str, title: str, body: str, data: dict, source: Path) -> str:
    """The HTML page: the template with the CSS, the JavaScript and the data inlined."""
    template = Template((ASSETS / "page.html").read_text(encoding="utf-8"))
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return template.substitute(
        version=html.escape(__version__),
        title=html.escape(title),
        kind=kind,
        css=(ASSETS / "report.css").read_text(encoding="utf-8"),
        js=(ASSETS / "report.js").read_text(encoding="utf-8"),
        body=body,
        data=payload,
        when=datetime.now().strftime("%Y-%m-%d %H:%M"),
        source=html.escape(str(source)),
    )


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def swatch(color: str) -> str:
    return f'<span class="sw" style="--c:{esc(color)}" aria-hidden="true"></span>'


def legend_html(classes: list[dict]) -> str:
    """A list of colour swatches and class names (classes: [{name, color}])."""
    items = "".join(f"<li>{swatch(c['color'])}{esc(c['name'])}</li>" for c in classes)
    return f'<ul class="legend">{items}</ul>'


def fmt_pct(value: float) -> str:
    if is_missing(value):
        return MISSING
    if value == 0:
        return "0"
    if value < 0.01:
        return "&lt;0.01"
    return f"{value:.2f}"


def hex_color(color) -> str:
    return "#{:02X}{:02X}{:02X}".format(*color)
