"""``imclass similar ... --out gallery.html``: one self-contained HTML page (thumbnails as data URIs), a row per
query with its neighbours and their scores."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .results import Match

THUMB = 160

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
h1{font-size:1.3rem} .meta{color:#666;font-size:.85rem}
.query{display:flex;gap:.8rem;align-items:flex-start;border-top:1px solid #ddd;padding:.8rem 0;overflow-x:auto}
figure{margin:0;width:{{ thumb }}px;flex:none;font-size:.75rem;word-break:break-all}
figure img{width:{{ thumb }}px;height:{{ thumb }}px;object-fit:contain;background:#f3f3f3;display:block}
figure.q img{outline:3px solid #2a6fdb} .score{font-weight:600}
.duplicate{color:#b00020} .possible{color:#a65e00} .missing{width:{{ thumb }}px;height:{{ thumb }}px;
background:#eee;display:flex;align-items:center;justify-content:center;color:#999}
</style></head><body>
<h1>{{ title }}</h1>
<p class="meta">{{ subtitle }}</p>
{% for m in matches %}
<section class="query">
  <figure class="q">{% if m.thumb %}<img src="{{ m.thumb }}" alt="query">{% else %}<div class="missing">?</div>
  {% endif %}
    <figcaption><b>query</b><br>{{ m.query }}{% if m.error %}<br><span class="duplicate">{{ m.error }}</span>{% endif %}
    </figcaption></figure>
  {% for n in m.neighbours %}
  <figure title="{{ n.path }}">{% if n.thumb %}<img src="{{ n.thumb }}" alt="">{% else %}<div class="missing">?</div>
  {% endif %}<figcaption><span class="score">{{ "%.3f"|format(n.score) }}</span>
  {% if n.match %}<span class="{{ n.match }}">{{ n.match }}</span>{% endif %}<br>{{ n.name }}</figcaption></figure>
  {% endfor %}
</section>
{% endfor %}
</body></html>
"""


def write_gallery(matches: Sequence[Match], out: str | os.PathLike, *, title: str = "Similar images",
                  subtitle: str = "", workers: int = 2) -> Path:
    """Write the gallery of ``matches`` to ``out`` (atomically); returns its path."""
    import jinja2

    from ..fileio import atomic_write_text
    from ..html_assets import thumbnail_uri

    paths = {m.query for m in matches if m.error is None or os.path.exists(m.query)}
    paths |= {n.path for m in matches for n in m.neighbours}
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="imclass-thumbs") as pool:
        thumbs = dict(zip(paths, pool.map(lambda p: thumbnail_uri(p, THUMB) if os.path.exists(p) else None, paths)))
    rows: list[dict[str, Any]] = []
    for m in matches:
        rows.append({"query": m.query, "error": m.error, "thumb": thumbs.get(m.query),
                     "neighbours": [{"path": n.path, "name": os.path.basename(n.path), "score": n.score,
                                     "match": n.match, "thumb": thumbs.get(n.path)} for n in m.neighbours]})
    html = jinja2.Environment(autoescape=True).from_string(TEMPLATE).render(
        title=title, subtitle=subtitle, matches=rows, thumb=THUMB)
    return atomic_write_text(out, html)
