"""report.html: report.md as one self-contained page."""

from __future__ import annotations

import base64
import re
from html import escape
from pathlib import Path

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.4}"
    "pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:12px;line-height:1.25}"
    "table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px}"
    "img{max-width:100%}"
)


def render_html(md: str, base: Path, title: str) -> str:
    """report.md as one HTML file with its images inlined (base64), readable in a browser with no server."""
    import markdown

    body = markdown.markdown(md, extensions=["tables", "fenced_code"])

    def inline(m: re.Match) -> str:
        path = base / m.group(1)
        if not path.is_file():
            return m.group(0)
        return f'src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode("ascii")}"'

    body = re.sub(r'src="(plots/[^"]+\.png)"', inline, body)
    return (
        f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )
