"""Jinja2 template of the audit report (inline CSS; no external resources)."""

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:16px 24px;
color:#1d2430;background:#fbfbfc}
h1{font-size:22px;margin:8px 0} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #dde;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #dde;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f6} td.n{text-align:right;font-variant-numeric:tabular-nums} .bad{color:#b3261e;font-weight:600}
.ok{color:#2e7d32} .muted{color:#667} .zero{background:#fde8e8}
.gallery{display:flex;flex-wrap:wrap;gap:8px} .group{display:flex;gap:6px;padding:6px;border:1px solid #dde;
border-radius:6px;margin:0 8px 8px 0;background:#fff}
figure{margin:0;width:124px;font-size:11px;word-break:break-all} figure img{display:block;max-width:{{ 112 }}px;
max-height:112px;border-radius:3px;background:#eee} figure .cap{font-weight:600;word-break:normal}
.noimg{width:112px;height:84px;background:#eee;display:flex;align-items:center;justify-content:center;color:#999}
.plots{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start} .plots img{max-width:100%}
code{background:#f0f2f6;padding:0 3px;border-radius:3px}
.group.dup{flex-direction:column} table.ev{font-size:11px;margin:4px 0} table.ev td{border:0;padding:0 6px 0 0}
</style></head><body>
{% macro fig(c) -%}
<figure title="{{ c.path }}">
{% if c.src %}<img src="{{ c.src }}" alt="">{% else %}<div class="noimg">unreadable</div>{% endif %}
{% if c.caption %}<div class="cap">{{ c.caption }}</div>{% endif %}
{% if c.note %}<div class="muted">{{ c.note }}</div>{% endif %}
<div class="muted">{{ c.name }}</div></figure>
{%- endmacro %}
{% macro more(items, shown) -%}{% if items > shown %}<p class="muted">Showing {{ shown }} of {{ items }};
every finding is in the JSON output.</p>{% endif %}{%- endmacro %}
<h1>{{ title }}</h1>
<p class="muted">{{ ds.images }} images · {{ ds.classes|length }} classes · {{ ds.task.replace('_', '-') }} ·
{{ splits }} · generated {{ generated }} · fingerprint <code>{{ ds.fingerprint[:16] }}</code></p>

<h2>Summary</h2>
<table><tr><th>check</th><th>found</th><th>how</th></tr>
{% for name, n, how in summary %}<tr><td>{{ name }}</td><td class="n {{ 'bad' if n else 'ok' }}">{{ n }}</td>
<td class="muted">{{ how }}</td></tr>{% endfor %}
<tr><td>class imbalance</td><td class="n">{{ '%.2f'|format(imbalance) if imbalance else 'n/a' }}</td>
<td class="muted">largest / smallest class</td></tr>
</table>
{% if notes %}<ul>{% for n in notes %}<li class="muted">{{ n }}</li>{% endfor %}</ul>{% endif %}

<div class="plots">{% for p in plots %}<img src="{{ p.src }}" alt="{{ p.title }}">{% endfor %}</div>

{% if coverage.counts %}<h2>Classes per split</h2>
<table><tr><th>class</th>{% for s in coverage.counts %}<th>{{ s }}</th>{% endfor %}</tr>
{% for c in classes %}<tr><td>{{ c }}</td>{% for s, counts in coverage.counts.items() %}
<td class="n {{ 'zero' if not counts[c] }}">{{ counts[c] }}</td>{% endfor %}</tr>{% endfor %}</table>{% endif %}

{% if corrupt %}<h2 id="corrupt">Unreadable files and non-images ({{ corrupt|length }})</h2>
<table><tr><th>file</th><th>reason</th></tr>{% for x in corrupt %}<tr><td title="{{ x.path }}">{{ x.name }}</td>
<td>{{ x.reason }}</td></tr>{% endfor %}</table>{% endif %}

{% if wrong_ext %}<h2>Wrong extensions ({{ wrong_ext|length }})</h2>
<table><tr><th>file</th><th>extension</th><th>actual format</th></tr>{% for x in wrong_ext %}<tr>
<td title="{{ x.path }}">{{ x.name }}</td><td>{{ x.ext }}</td><td>{{ x.fmt }}</td></tr>{% endfor %}</table>{% endif %}

{% if conflicts %}<h2 id="conflicts">Duplicates with conflicting labels ({{ counts.conflicts }})</h2>
<div class="gallery">{% for g in conflicts %}<div class="group">{% for c in g %}{{ fig(c) }}{% endfor %}</div>
{% endfor %}
</div>{{ more(counts.conflicts, conflicts|length) }}{% endif %}

{% if leaks %}<h2 id="leaks">Duplicates across splits ({{ counts.leaks }})</h2>
<div class="gallery">{% for g in leaks %}<div class="group">{% for c in g %}{{ fig(c) }}{% endfor %}</div>{% endfor %}
</div>{{ more(counts.leaks, leaks|length) }}{% endif %}

{% if label_issues %}<h2 id="label-issues">Likely label errors ({{ counts.label_issues }})</h2>
<p class="muted">{{ label_check.ranking }}; out-of-fold probabilities from {{ label_check.probe }},
{{ label_check.cv }} ({{ label_check.folds }} folds, accuracy {{ '%.1f'|format(100 * label_check.accuracy) }}%).</p>
<div class="gallery">{% for c in label_issues %}{{ fig(c) }}{% endfor %}</div>
{{ more(counts.label_issues, label_issues|length) }}{% endif %}

{% if outliers %}<h2 id="outliers">Outliers ({{ counts.outliers }})</h2>
<p class="muted">Mean cosine distance to the {{ thresholds.outlier_k }} nearest images above
{{ '%.3f'|format(thresholds.outlier_threshold) }} ({{ thresholds.outlier_fence }}).</p>
<div class="gallery">{% for c in outliers %}{{ fig(c) }}{% endfor %}</div>
{{ more(counts.outliers, outliers|length) }}{% endif %}

{% if exact %}<h2 id="duplicates">Exact duplicates ({{ counts.exact_duplicate_groups }} groups)</h2>
<div class="gallery">{% for g in exact %}<div class="group">{% for c in g %}{{ fig(c) }}{% endfor %}</div>{% endfor %}
</div>{{ more(counts.exact_duplicate_groups, exact|length) }}{% endif %}

{% macro dupgroup(g) -%}
<div class="group dup" data-pairs="{{ g.pairs_json }}">
<div class="gallery">{% for c in g.cards %}{{ fig(c) }}{% endfor %}</div>
<table class="ev">{% for e in g.evidence %}<tr><td>{{ e.a }} &harr; {{ e.b }}</td><td>{{ e.text }}</td></tr>
{% endfor %}</table>
<label><input type="checkbox" class="notdup"> not a duplicate</label></div>
{%- endmacro %}
{% if near or possible %}<h2 id="near-duplicates">Near-duplicates ({{ counts.near_duplicate_groups }} groups)</h2>
<p class="muted">The same photo re-encoded, resized, cropped a little or mirrored: each pair was checked with
keypoints (a RANSAC fit of a similarity transform, mirror-aware) and, once aligned, pixel by pixel (the worst
of a 6 x 6 grid of cells, and the share of the image that changed). Each group is one photo and the images
verified against it, never a chain. Listed for review: <code>imclass data clean</code> leaves them in unless
<code>--drop near-duplicates</code> (or <code>near-conflicts</code>, <code>near-leaks</code>) is given.</p>
<div class="gallery">{% for g in near %}{{ dupgroup(g) }}{% endfor %}</div>
{{ more(counts.near_duplicate_groups, near|length) }}
{% if possible %}<h3 id="possible-duplicates">Possible duplicates ({{ counts.possible_duplicate_groups }} groups)</h3>
<p class="muted">Weaker evidence (small or low-detail images, or two images that overlap only in part, such as
adjacent tiles or successive frames): flagged for a look, not counted as found.</p>
<div class="gallery">{% for g in possible %}{{ dupgroup(g) }}{% endfor %}</div>
{{ more(counts.possible_duplicate_groups, possible|length) }}{% endif %}
<p><button id="save-marks" disabled>Save "not a duplicate" marks</button> <span class="muted">downloads
<code>{{ marks_file }}</code>: put it at <code>{{ marks_path }}</code>, where later audits, clean, split and
the studio read it (marked pairs are never grouped again).</span></p>
<script>
(function () {
  var button = document.getElementById("save-marks");
  function marked() {
    var rows = [];
    document.querySelectorAll(".group.dup").forEach(function (g) {
      if (g.querySelector(".notdup").checked) { JSON.parse(g.dataset.pairs).forEach(function (p) { rows.push(p); }); }
    });
    return rows;
  }
  document.querySelectorAll(".notdup").forEach(function (box) {
    box.addEventListener("change", function () { button.disabled = marked().length === 0; });
  });
  button.addEventListener("click", function () {
    var q = function (v) { return '"' + String(v).replace(/"/g, '""') + '"'; };
    var lines = ["sha256_a,sha256_b,path_a,path_b"].concat(marked().map(function (p) { return p.map(q).join(","); }));
    var blob = new Blob([lines.join("\n") + "\n"], {type: "text/csv"});
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob); a.download = "{{ marks_file }}"; a.click();
  });
})();
</script>
{% endif %}

{% if colour.minority %}<h2>Grey and colour images mixed</h2>
<p>{{ colour.grey }} grey and {{ colour.colour }} colour images ({{ thresholds.grey }} counts as grey, whatever the
file's mode). The {{ colour.minority }} ones:</p>
<div class="gallery">{% for c in colour_cards %}{{ fig(c) }}{% endfor %}</div>
{{ more(colour.files|length, colour_cards|length) }}{% endif %}

{% if tiny %}<h2>Tiny images ({{ counts.tiny }})</h2><div class="gallery">{% for c in tiny %}{{ fig(c) }}{% endfor %}
</div>{{ more(counts.tiny, tiny|length) }}{% endif %}
{% if odd %}<h2>Odd aspect ratios ({{ counts.odd_aspect }})</h2><div class="gallery">{% for c in odd %}{{ fig(c) }}
{% endfor %}</div>{{ more(counts.odd_aspect, odd|length) }}{% endif %}

<h2>Settings</h2>
<table>{% for k, v in thresholds.items() %}<tr><td>{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}</table>
</body></html>
"""
