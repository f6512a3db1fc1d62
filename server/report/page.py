"""The report as one self-contained HTML page (figures embedded as data URIs), rendered
with Jinja2 (every value escaped) from `report_data.build_report`'s data."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from jinja2 import Environment, StrictUndefined

__all__ = ["render_html"]

_TEMPLATE: Final = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Consortia report: {{ run.name }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222;
       padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ci { color: #555; font-size: 0.85em; } .status-completed { color: #176317; }
.status-failed, .status-stopped { color: #a11; } code { font-size: 0.85em; word-break: break-all; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
.note { color: #555; font-size: 0.9em; }
</style></head>
<body>
<h1>Consortia report: {{ run.name }}</h1>
<p>Task <b>{{ run.task }}</b>; status
<b id="run-status" class="status-{{ run.status }}">{{ run.status }}</b>;
rounds {{ run.rounds_done }} of {{ run.rounds_planned }}; started {{ run.started_at }},
finished {{ run.finished_at or "not yet" }} (UTC). Flower run {{ run.flower_run_id }}.</p>
{% set init = settings.model.get("init") if settings.model else None %}<p id="warm-start">
{% if init %}Starts from the approved warm start <code>{{ init.path }}</code>, weights SHA-256
<code>{{ init.sha256 }}</code>.{% else %}Starts from the run-seeded model (no warm start).
{% endif %}</p>
{% if run.error %}<p class="status-failed">Error: {{ run.error }}</p>{% endif %}
{% if run.stopped %}<p class="status-stopped">Stopped in round {{ run.stopped.round }}:
{{ run.stopped.reason }}</p>{% endif %}
{% if run.ended_early %}<p>Training ended early: {{ run.ended_early }}</p>{% endif %}
{% for r in run.resumed %}<p class="note">Resumed after round {{ r.after_round }}
at {{ r.time }}.</p>{% endfor %}
<p class="note">Generated {{ generated_at }} from the run folder's results.json and
provenance.json. Check the record itself with <code>consortia audit verify RUN_DIR --ca
ca.pem</code>.</p>

<h2>Sites</h2>
<table id="sites"><tr><th>site</th><th>role</th><th>training cases</th>
<th>evaluation cases</th></tr>
{% for s in sites %}<tr><td>{{ s.name }}</td><td>{{ s.role }}</td>
<td class="num">{{ s.num_train }}</td><td class="num">{{ s.num_eval }}</td></tr>{% endfor %}
</table>

<h2>Learning curves</h2>
{{ figure("learning-curves", "Learning curves") }}
<table id="learning-curves"><tr><th>{{ curves.metric }}{{ unit(curves.metric) }}</th>
{% for r in curves.rounds %}<th>round {{ r }}</th>{% endfor %}</tr>
{% for label, values in curves.series.items() %}<tr><td>{{ label }}</td>
{% for v in values %}<td class="num">{{ fmt(v) }}</td>{% endfor %}</tr>{% endfor %}
</table>

<h2>Cross-site results</h2>
{% if cross %}
<p>The global model after round {{ cross.model_round }} on every site's evaluation cases
(a training site's test split, every case of a held-out site) and pooled.
{% if cross.level %}Brackets: {{ (cross.level * 100) | round | int }}% confidence
intervals, {{ cross.method }}, {{ cross.replicates }} replicates.
{% else %}No confidence intervals were recorded for this run.{% endif %}</p>
<table id="cross-site"><tr><th>evaluated on</th><th>role</th><th>cases</th>
{% for m in cross.metrics %}<th>{{ m }}{{ unit(m) }}</th>{% endfor %}</tr>
{% for row in cross.rows %}<tr><td>{{ row.name }}</td><td>{{ row.scope }}</td>
<td class="num">{{ fmt(row.cases, 0) }}</td>
{% for m in cross.metrics %}<td class="num">{{ fmt(row["values"][m]) }}
{% if row.intervals[m] %}<span class="ci">[{{ fmt(row.intervals[m][0]) }},
{{ fmt(row.intervals[m][1]) }}]</span>{% endif %}</td>{% endfor %}</tr>{% endfor %}
</table>
{% else %}<p>No evaluation was recorded.</p>{% endif %}
{% if baselines %}
<h2>Baselines</h2>
<p>The same study (settings, rounds, epochs) trained federated, pooled (every training
site's training cases in one place, in simulation) and at each training site alone, all
scored on the same held-out sites' cases (95% bootstrap confidence intervals in brackets).</p>
<table id="baselines"><tr><th>trained</th><th>on the training cases of</th><th>cases</th>
{% for m in baselines.metrics %}<th>{{ m }}{{ unit(m) }}</th>{% endfor %}<th>wall s</th></tr>
{% for row in baselines.rows %}<tr><td>{{ row.name }}</td><td>{{ row.scope }}</td>
<td class="num">{{ fmt(row.cases, 0) }}</td>
{% for m in baselines.metrics %}<td class="num">{{ fmt(row["values"][m]) }}
{% if row.intervals[m] %}<span class="ci">[{{ fmt(row.intervals[m][0]) }},
{{ fmt(row.intervals[m][1]) }}]</span>{% endif %}</td>{% endfor %}
<td class="num">{{ fmt(row.get("wall_s"), 0) }}</td></tr>{% endfor %}
</table>
{% endif %}

<h2>Privacy</h2>
<p>Sample-level DP-SGD at the sites:
{% if privacy.sample_level and privacy.sample_level.enabled %}<b>on</b>
(target epsilon {{ privacy.sample_level.target_epsilon }},
noise multiplier {{ privacy.sample_level.noise_multiplier or "from the target" }},
clipping norm {{ privacy.sample_level.max_grad_norm }},
accountant {{ privacy.sample_level.accountant }}){% else %}<b>off</b>{% endif %}.
Central DP at the server:
{% if privacy.central and privacy.central.enabled %}<b>on</b> (noise multiplier
{{ privacy.central.noise_multiplier }}, clipping norm {{ privacy.central.clipping_norm }},
epsilon {{ fmt(privacy.central.epsilon) }} at delta {{ privacy.central.delta }})
{% else %}<b>off</b>{% endif %}.</p>
{% if privacy.sites and privacy.sample_level and privacy.sample_level.enabled %}
{{ figure("epsilon", "Epsilon per site and round") }}
<table id="privacy"><tr><th>site</th><th>limit (epsilon)</th><th>delta</th>
<th>before this run</th><th>after this run</th><th>excluded</th>
<th>per round (total epsilon)</th></tr>
{% for name, s in privacy.sites.items() %}<tr><td>{{ name }}</td>
<td class="num">{{ fmt(s.limit, 2) }}</td><td class="num">{{ s.delta }}</td>
<td class="num">{{ fmt(s.before_run, 3) }}</td><td class="num">{{ fmt(s.total, 3) }}</td>
<td>{{ s.excluded or "" }}</td>
<td>{% for r in s.per_round %}r{{ r.round }}: {{ fmt(r.epsilon, 3) }}{% if not loop.last %},
{% endif %}{% endfor %}</td></tr>{% endfor %}
</table>
{% endif %}

<h2>Participants and dropouts</h2>
{{ figure("participation", "Participants per round") }}
<table id="participation"><tr><th>round</th><th>aggregated</th><th>left out (why)</th>
<th>not connected</th><th>secure aggregation</th><th>duration (s)</th></tr>
{% for row in participation %}<tr><td class="num">{{ row.round }}</td>
<td>{{ row.participants | join(", ") }}</td>
<td>{% for site, why in row.left_out.items() %}{{ site }}: {{ why }}{% if not loop.last %};
{% endif %}{% endfor %}</td><td>{{ row.not_connected | join(", ") }}</td>
<td>{{ row.secure_aggregation or "plain" }}</td>
<td class="num">{{ fmt(row.duration_s, 1) }}</td></tr>{% endfor %}
</table>

<h2>Settings</h2>
<table id="settings">
{% for section, values in settings.items() if values %}<tr><th>{{ section }}</th><td>
{% for k, v in values.items() %}{{ k }} = {{ v }}{% if not loop.last %}; {% endif %}
{% endfor %}</td></tr>{% endfor %}
<tr><th>security</th><td>TLS {{ security.tls }}; site authentication
{{ security.site_authentication }}; signed updates {{ security.signed_updates }};
secure aggregation {{ security.secure_aggregation.enabled }}
({{ security.secure_aggregation.reason }})</td></tr>
</table>

<h2>Provenance</h2>
<table id="provenance">
<tr><th>run config SHA-256</th><td><code>{{ provenance.config_hash }}</code></td></tr>
<tr><th>app code SHA-256</th><td><code>{{ provenance.app_hash }}</code></td></tr>
<tr><th>provenance.json</th><td>{% if provenance.present %}present, signed by
{{ provenance.signatures | join(", ") or "nobody" }}{% else %}absent (the run did not
finish){% endif %}</td></tr>
{% if provenance.present %}<tr><th>audit log head</th><td><code>{{ provenance.audit_head
}}</code> ({{ provenance.audit_records }} records)</td></tr>{% endif %}
{% for m in provenance.model_hashes %}<tr><th>model after round {{ m.round }}</th>
<td><code>{{ m.sha256 }}</code></td></tr>{% endfor %}
{% for p in provenance.participants %}<tr><th>{{ p.site }} ({{ p.role }}) data</th>
<td><code>{{ p.dataset_fingerprint }}</code>{% if p.node_audit_head %}; its audit log's
head in its last reply <code>{{ p.node_audit_head }}</code>{% endif %}</td></tr>{% endfor %}
</table>

{% if saliency %}<h2>Saliency maps shared by held-out sites</h2>
<p class="note">Grad-CAM of the final model, computed at the site; shared because the
site's configuration allows it.</p>
{% for s in saliency %}<figure><img src="{{ s.uri }}" alt="saliency map from {{ s.site }}">
<figcaption>{{ s.site }}: {{ s.name }}</figcaption></figure>{% endfor %}{% endif %}
</body></html>
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, int | float):
        return f"{value:.{digits}f}"
    return str(value)


def _unit(units: Mapping[str, str], metric: str) -> str:
    """ " (mm)" after a metric's name in a table heading; "" where its unit is unknown."""
    unit = units.get(metric)
    return f" ({unit})" if unit else ""


def render_html(report: Mapping[str, Any], figures: Mapping[str, Path], run_dir: Path) -> str:
    """The page; `figures` maps figure names to their PNG files (embedded), saliency maps
    are read from `run_dir`."""
    environment = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True)
    uris = {name: _data_uri(path) for name, path in figures.items()}

    def figure(name: str, caption: str) -> str:
        from markupsafe import Markup, escape

        if name not in uris:
            return Markup('<p class="note">No data for this figure.</p>')
        return Markup(
            f'<figure><img id="figure-{escape(name)}" src="{uris[name]}" '
            f'alt="{escape(caption)}"></figure>'
        )

    saliency = [
        {**entry, "name": Path(entry["file"]).stem, "uri": _data_uri(run_dir / entry["file"])}
        for entry in report["saliency"]
    ]
    template = environment.from_string(_TEMPLATE)
    return template.render(
        run=report["run"],
        generated_at=report["generated_at"],
        sites=report["sites"],
        curves=report["learning_curves"],
        cross=report["cross_site"],
        baselines=report.get("baselines"),
        privacy=report["privacy"],
        participation=report["participation"],
        settings=report["settings"],
        security=report["security"],
        provenance=report["provenance"],
        saliency=saliency,
        figure=figure,
        fmt=_fmt,
        unit=lambda metric: _unit(report.get("units") or {}, metric),
    )
