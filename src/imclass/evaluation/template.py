"""The report's HTML template (inline CSS, no scripts, every image a data URI: it opens offline)."""

REPORT_HTML = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
 :root { --fg:#1d2330; --muted:#5b6475; --line:#e3e6ec; --bg:#f6f7f9;
         --good:#2e7d32; --bad:#c62828; --warn:#8a6d00; }
 * { box-sizing: border-box; }
 body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
        color:var(--fg); background:var(--bg); }
 main { max-width:1180px; margin:0 auto; padding:24px; }
 h1 { font-size:22px; margin:0 0 4px; }
 h2 { font-size:17px; margin:28px 0 10px; border-bottom:1px solid var(--line); padding-bottom:4px; }
 h3 { font-size:14px; margin:14px 0 6px; }
 .muted { color:var(--muted); } .small { font-size:12px; }
 section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:14px 18px; margin:14px 0; }
 .cards { display:grid; grid-template-columns:repeat(auto-fill,minmax(150px,1fr)); gap:10px; }
 .card { background:#fff; border:1px solid var(--line); border-radius:8px; padding:10px 12px; }
 .card .v { font-size:24px; font-weight:600; } .card .k { color:var(--muted); font-size:12px; }
 .note { background:#fff8e1; border:1px solid #f3e0a0; color:var(--warn); border-radius:6px;
         padding:6px 10px; margin:6px 0; }
 table { border-collapse:collapse; width:100%; font-size:13px; }
 th,td { text-align:left; padding:4px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
 th { background:#fafbfc; font-weight:600; } td.n { text-align:right; font-variant-numeric:tabular-nums; }
 .kv th { width:220px; color:var(--muted); font-weight:500; background:none; }
 img.chart { max-width:100%; height:auto; display:block; margin:6px auto; }
 .gallery { display:grid; grid-template-columns:repeat(auto-fill,minmax(220px,1fr)); gap:12px; }
 .tile { border:1px solid var(--line); border-radius:8px; padding:8px; background:#fff; font-size:12px; }
 .tile .imgs { display:flex; gap:4px; } .tile .imgs img { width:50%; height:auto; border-radius:4px; }
 .tile .imgs img:only-child { width:100%; }
 .tile .path { color:var(--muted); overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
 .ok { color:var(--good); font-weight:600; } .wrong { color:var(--bad); font-weight:600; }
 .thumbs img { width:64px; height:64px; object-fit:cover; border-radius:4px; margin-right:3px; }
 details > summary { cursor:pointer; color:var(--muted); margin:6px 0; }
 .cols { display:grid; grid-template-columns:1fr 1fr; gap:14px; }
 @media (max-width:800px) { .cols { grid-template-columns:1fr; } }
</style>
</head>
<body>
{% macro value(v, depth=0) -%}
 {%- if v is mapping -%}
  {%- if depth > 2 -%}<span class="muted">{{ v|length }} entries</span>
  {%- else -%}
  <table class="kv">{% for k, x in v.items() %}{% if loop.index <= 40 %}
   <tr><th>{{ k }}</th><td>{{ value(x, depth + 1) }}</td></tr>{% endif %}{% endfor %}
  {%- if v|length > 40 %}<tr><td colspan="2" class="muted">... {{ v|length - 40 }} more</td></tr>{% endif %}</table>
  {%- endif -%}
 {%- elif v is string -%}{{ v }}
 {%- elif v is sequence -%}
  {%- if v and v[0] is mapping and depth <= 2 -%}
   {%- set keys = v[0].keys()|list -%}
   <table><tr>{% for k in keys %}<th>{{ k }}</th>{% endfor %}</tr>
   {% for row in v[:20] %}<tr>{% for k in keys %}<td>{{ value(row.get(k), 3) }}</td>{% endfor %}</tr>
   {% endfor %}</table>
   {%- if v|length > 20 %}<div class="muted small">... {{ v|length - 20 }} more</div>{% endif %}
  {%- else -%}{{ v[:30]|join(", ") }}{% if v|length > 30 %}, ... ({{ v|length }} in all){% endif %}
  {%- endif -%}
 {%- elif v is none -%}<span class="muted">-</span>
 {%- elif v is float -%}{{ "%.4g"|format(v) }}
 {%- else -%}{{ v }}
 {%- endif -%}
{%- endmacro %}
{% macro tile(t) -%}
<div class="tile">
 <div class="imgs">{% if t.thumb %}<img src="{{ t.thumb }}" alt="image">{% endif %}
  {%- if t.cam %}<img src="{{ t.cam }}" alt="CAM" title="CAM of {{ t.cam_label }}">{% endif %}</div>
 <div class="path" title="{{ t.path }}">{{ t.name }}</div>
 <div>true: <b>{{ t.true or "(none)" }}</b></div>
 <div>predicted: <span class="{{ 'ok' if t.correct else 'wrong' }}">{{ t.predicted or "(none)" }}</span>
 {% if t.confidence is not none %}<span class="muted">({{ "%.1f"|format(100 * t.confidence) }}%)</span>{% endif %}</div>
 {% if t.cam_label %}<div class="muted small">CAM: {{ t.cam_label }}
  {%- if t.loss is not none %} · loss {{ "%.2f"|format(t.loss) }}{% endif %}</div>{% endif %}
</div>
{%- endmacro %}
<main>
<h1>{{ title }}</h1>
<div class="muted">{{ subtitle }}</div>
{% for w in notes %}<div class="note">{{ w }}</div>{% endfor %}

<section id="summary">
<div class="cards">
{% for c in cards %}
 <div class="card"><div class="v">{{ c.value }}</div><div class="k">{{ c.name }}</div></div>{% endfor %}
</div>
</section>

<section id="model">
<h2>Model and data</h2>
<div class="cols">
 <div><h3>Model</h3>{{ value(model_info) }}</div>
 <div><h3>Evaluation data</h3>{{ value(data_info) }}</div>
</div>
</section>

<section id="per-class">
<h2>{{ "Per-label" if multi else "Per-class" }} precision, recall, F1</h2>
<img class="chart" src="{{ class_chart }}" alt="per-class bars">
<details><summary>Table</summary>
<table><tr><th>{{ "label" if multi else "class" }}</th><th>precision</th><th>recall</th><th>F1</th>
{%- if multi %}<th>AP</th><th>ROC-AUC</th>{% endif %}<th>support</th></tr>
{% for name, r in per_class.items() %}<tr><td>{{ name }}</td><td class="n">{{ pct(r.precision) }}</td>
 <td class="n">{{ pct(r.recall) }}</td><td class="n">{{ pct(r.f1) }}</td>
 {%- if multi %}<td class="n">{{ num(r.average_precision) }}</td><td class="n">{{ num(r.roc_auc) }}</td>{% endif %}
 <td class="n">{{ r.support }}</td></tr>{% endfor %}
</table></details>
</section>

{% if confusion_chart %}
<section id="confusion">
<h2>Confusion matrix</h2>
<img class="chart" src="{{ confusion_chart }}" alt="confusion matrix">
</section>
{% endif %}

{% if pairs %}
<section id="most-confused">
<h2>Most confused pairs</h2>
<table><tr><th>true</th><th>predicted as</th><th>images</th><th>share of the true class</th><th>examples</th></tr>
{% for p in pairs %}<tr><td>{{ p.true }}</td><td>{{ p.predicted }}</td><td class="n">{{ p.count }}</td>
 <td class="n">{{ pct(p.rate) }}</td><td class="thumbs">{% for s in p.examples %}
 <img src="{{ s.thumb }}" alt="{{ s.name }}" title="{{ s.path }} ({{ '%.0f'|format(100 * s.confidence) }}%)">
 {%- endfor %}</td></tr>{% endfor %}
</table>
</section>
{% endif %}

{% if reliability_chart %}
<section id="calibration">
<h2>Calibration</h2>
<img class="chart" src="{{ reliability_chart }}" alt="reliability diagram">
<p class="muted small">Bars below the diagonal: the model is over-confident at that confidence; above: under-confident.
Mean confidence {{ pct(confidence.mean) }} (correct {{ pct(confidence.correct) }},
wrong {{ pct(confidence.wrong) }}).</p>
</section>
{% endif %}

{% if rejection %}
<section id="unknown">
<h2>Rejected as unknown</h2>
<p>Threshold {{ num(rejection.threshold) }}: {{ rejection.rejected }} images
({{ pct(rejection.rejected_rate) }}) rejected;
accuracy on the accepted {{ pct(rejection.accuracy_on_accepted) }} (coverage {{ pct(rejection.coverage) }}),
{{ pct(rejection.accuracy_without_rejection) }} without rejection.</p>
{% if rejection.rejected_per_class %}{{ value(rejection.rejected_per_class) }}{% endif %}
</section>
{% endif %}

<section id="top-losses">
<h2>Top losses: the most confidently wrong images</h2>
{% if cam_note %}<div class="note">{{ cam_note }}</div>{% endif %}
{% if top %}<div class="gallery">{% for t in top %}{{ tile(t) }}{% endfor %}</div>
{% else %}<p class="muted">No wrong predictions.</p>{% endif %}
</section>

<section id="samples">
<h2>Samples</h2>
<h3>Correct</h3>
{% if correct %}<div class="gallery">{% for t in correct %}{{ tile(t) }}{% endfor %}</div>
{% else %}<p class="muted">None.</p>{% endif %}
<h3>Wrong</h3>
{% if wrong %}<div class="gallery">{% for t in wrong %}{{ tile(t) }}{% endfor %}</div>
{% else %}<p class="muted">None.</p>{% endif %}
</section>

{% if errors %}
<section id="errors">
<h2>Unreadable images ({{ n_errors }})</h2>
<details><summary>List</summary>{{ value(errors) }}</details>
</section>
{% endif %}

{% if audit %}
<section id="audit">
<h2>Dataset audit</h2>
{{ value(audit) }}
</section>
{% endif %}

{% if provenance or training %}
<section id="provenance">
<h2>Provenance and training configuration</h2>
{% if provenance %}<details><summary>Provenance</summary>{{ value(provenance) }}</details>{% endif %}
{% if training %}<details><summary>Training configuration</summary>{{ value(training) }}</details>{% endif %}
</section>
{% endif %}

<p class="muted small">Written by imclass {{ version }} on {{ created }}.
Full numbers: metrics.json; per-image rows: predictions.csv.</p>
</main>
</body>
</html>
"""
