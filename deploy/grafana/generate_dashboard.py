#!/usr/bin/env python3
"""Generates deploy/grafana/dashboards/churnguard.json (run from anywhere; no dependencies).

Edit the panels here, then: python3 deploy/grafana/generate_dashboard.py [OUT.json]
Metric catalogue: docs/METRICS.md. Every expression filters on `instance=~"$instance"` (and
`topic=~"$topic"` only on the metrics that carry a topic label).
"""
import json
import os
import sys

DS = {"type": "prometheus", "uid": "prometheus"}
I = 'instance=~"$instance"'
IT = 'instance=~"$instance", topic=~"$topic"'
R = "$__rate_interval"

panels = []
_next_id = [1]
_cursor = {"x": 0, "y": 0, "h": 0}


def _id():
    i = _next_id[0]
    _next_id[0] += 1
    return i


def row(title):
    if _cursor["x"]:
        _cursor["y"] += _cursor["h"]
        _cursor["x"] = 0
        _cursor["h"] = 0
    panels.append({"type": "row", "title": title, "id": _id(), "collapsed": False, "panels": [],
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": _cursor["y"]}})
    _cursor["y"] += 1


def _place(w, h):
    if _cursor["x"] + w > 24:
        _cursor["y"] += _cursor["h"]
        _cursor["x"] = 0
        _cursor["h"] = 0
    pos = {"h": h, "w": w, "x": _cursor["x"], "y": _cursor["y"]}
    _cursor["x"] += w
    _cursor["h"] = max(_cursor["h"], h)
    return pos


def _targets(queries, instant=False, fmt="time_series"):
    out = []
    for n, (expr, legend) in enumerate(queries):
        out.append({"datasource": DS, "refId": chr(ord("A") + n), "expr": expr, "legendFormat": legend,
                    "editorMode": "code", "range": not instant, "instant": instant, "format": fmt})
    return out


def timeseries(title, queries, unit="short", w=8, h=8, stack=False, desc="", min0=True, thresholds=None):
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 20 if stack else 10, "showPoints": "never",
              "spanNulls": False, "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    defaults = {"unit": unit, "custom": custom, "color": {"mode": "palette-classic"}}
    if min0:
        defaults["min"] = 0
    if thresholds:
        defaults["thresholds"] = {"mode": "absolute", "steps": thresholds}
        custom["thresholdsStyle"] = {"mode": "line"}
    panels.append({"type": "timeseries", "title": title, "description": desc, "id": _id(), "datasource": DS,
                   "gridPos": _place(w, h), "targets": _targets(queries),
                   "fieldConfig": {"defaults": defaults, "overrides": []},
                   "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                               "tooltip": {"mode": "multi", "sort": "desc"}}})


def stat(title, queries, unit="short", w=4, h=4, desc="", text_mode="auto", mappings=None, steps=None,
         decimals=None):
    defaults = {"unit": unit, "color": {"mode": "thresholds"}, "mappings": mappings or [],
                "thresholds": {"mode": "absolute", "steps": steps or [{"color": "green", "value": None}]}}
    if decimals is not None:
        defaults["decimals"] = decimals
    panels.append({"type": "stat", "title": title, "description": desc, "id": _id(), "datasource": DS,
                   "gridPos": _place(w, h), "targets": _targets(queries, instant=True),
                   "fieldConfig": {"defaults": defaults, "overrides": []},
                   "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                               "textMode": text_mode, "colorMode": "value", "graphMode": "none",
                               "justifyMode": "auto", "orientation": "auto"}})


def bargauge(title, queries, unit="short", w=8, h=8, desc="", fmt="time_series", minimum=0, maximum=None,
             color=None, steps=None):
    defaults = {"unit": unit, "min": minimum, "color": {"mode": color or "continuous-GrYlRd"},
                "thresholds": {"mode": "absolute", "steps": steps or [{"color": "green", "value": None}]}}
    if maximum is not None:
        defaults["max"] = maximum
    panels.append({"type": "bargauge", "title": title, "description": desc, "id": _id(), "datasource": DS,
                   "gridPos": _place(w, h), "targets": _targets(queries, instant=True, fmt=fmt),
                   "fieldConfig": {"defaults": defaults, "overrides": []},
                   "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                               "orientation": "vertical" if fmt == "heatmap" else "horizontal",
                               "displayMode": "gradient", "showUnfilled": True, "valueMode": "color",
                               "namePlacement": "auto", "sizing": "auto", "minVizHeight": 16,
                               "minVizWidth": 8, "maxVizHeight": 300}})


def q(p, metric, by="", extra=I):
    """histogram_quantile over a histogram's buckets."""
    group = f"{by}, le" if by else "le"
    return f"histogram_quantile({p}, sum by ({group}) (rate({metric}_bucket{{{extra}}}[{R}])))"


# ---------------------------------------------------------------------------------------------
row("Overview")
stat("Ready instances", [(f"sum(churnguard_ready{{{I}}})", "ready")], w=3,
     desc="Instances owning at least one partition (churnguard_ready).",
     steps=[{"color": "red", "value": None}, {"color": "green", "value": 1}])
stat("Events / s", [(f"sum(rate(churnguard_events_consumed_total{{{IT}}}[{R}]))", "events/s")], unit="ops", w=3)
stat("Interventions / s", [(f"sum(rate(churnguard_interventions_total{{{I}}}[{R}]))", "interventions/s")],
     unit="ops", w=3)
stat("Dead-letter share", [(f"sum(rate(churnguard_dead_lettered_total{{{I}}}[{R}])) / "
                            f"clamp_min(sum(rate(churnguard_events_consumed_total{{{I}}}[{R}])), 1e-9)", "share")],
     unit="percentunit", w=3, decimals=2,
     steps=[{"color": "green", "value": None}, {"color": "orange", "value": 0.01}, {"color": "red", "value": 0.05}])
stat("Users tracked", [(f"sum(churnguard_users_tracked{{{I}}})", "users")], w=3)
stat("Uptime", [(f"max(churnguard_uptime_seconds{{{I}}})", "uptime")], unit="s", w=3)
stat("Version", [(f"max by (version) (churnguard_build_info{{{I}}})", "{{version}}")], w=3, text_mode="name")
stat("Rebalances since start", [(f"sum by (kind) (churnguard_rebalances_total{{{I}}})", "{{kind}}")], w=3,
     desc="churnguard_rebalances_total by kind (assign, revoke), since each instance started.")

# ---------------------------------------------------------------------------------------------
row("RED: throughput, errors, duration")
timeseries("Events consumed by topic",
           [(f"sum by (topic) (rate(churnguard_events_consumed_total{{{IT}}}[{R}]))", "{{topic}}")],
           unit="ops", desc="Messages read from the source topics, valid or not (flushed per commit tick).")
timeseries("Invalid events by reason",
           [(f"sum by (reason) (rate(churnguard_events_invalid_total{{{I}}}[{R}]))", "{{reason}}")],
           unit="ops", stack=True, desc="No series until the first invalid event.")
timeseries("Dead-lettered by reason",
           [(f"sum by (reason) (rate(churnguard_dead_lettered_total{{{I}}}[{R}]))", "{{reason}}")],
           unit="ops", stack=True, desc="Acknowledged dead letters; should follow invalid events within seconds.")
timeseries("Processing duration (sampled 1 in 16)",
           [(q(0.5, "churnguard_processing_duration_seconds"), "p50"),
            (q(0.99, "churnguard_processing_duration_seconds"), "p99")],
           unit="s", w=12, desc="Parse, features, score, policy and enqueueing outputs, per message.")
timeseries("Scoring duration (sampled 1 in 16)",
           [(q(0.5, "churnguard_scoring_duration_seconds"), "p50"),
            (q(0.99, "churnguard_scoring_duration_seconds"), "p99")],
           unit="s", w=12, desc="Engine::ingest per valid event: timers, apply, score, policy.")

# ---------------------------------------------------------------------------------------------
row("USE: saturation and state")
timeseries("Consumer lag by partition",
           [(f"sum by (topic, partition) (churnguard_consumer_lag_messages{{{IT}}})", "{{topic}}/{{partition}}")],
           stack=True, desc="From librdkafka statistics (statistics.interval.ms).")
timeseries("Event-time lag by partition",
           [(f"max by (topic, partition) (churnguard_event_time_lag_seconds{{{IT}}})", "{{topic}}/{{partition}}")],
           unit="s", desc="Wall clock minus the partition's watermark. Large by design for a historical backfill.")
timeseries("Users tracked", [(f"sum by (instance) (churnguard_users_tracked{{{I}}})", "{{instance}}")])
timeseries("State bytes", [(f"sum by (instance) (churnguard_state_bytes{{{I}}})", "{{instance}}")], unit="bytes",
           desc="Heap bytes of the feature stores.")
timeseries("Outputs in flight / producer queue",
           [(f"sum by (instance) (churnguard_outputs_in_flight{{{I}}})", "in flight {{instance}}"),
            (f"sum by (instance) (churnguard_producer_queue_messages{{{I}}})", "producer queue {{instance}}")],
           desc="Consumption pauses at sink.max_in_flight (default 50,000).")
timeseries("Backpressure pauses",
           [(f"sum by (instance) (rate(churnguard_backpressure_pauses_total{{{I}}}[{R}]))", "{{instance}}")],
           unit="ops")
timeseries("Rebalances",
           [(f"sum by (kind) (increase(churnguard_rebalances_total{{{I}}}[{R}]))", "{{kind}}")],
           desc="Increase per interval (the first assignment after a start is not an increase: see the Overview stat).")
timeseries("Offset commits by result",
           [(f"sum by (result) (rate(churnguard_offset_commits_total{{{I}}}[{R}]))", "{{result}}")], unit="ops")
timeseries("Restored events",
           [(f"sum by (instance) (rate(churnguard_restored_events_total{{{I}}}[{R}]))", "{{instance}}")], unit="ops",
           desc="Messages re-read to rebuild the state of newly assigned partitions.")

# ---------------------------------------------------------------------------------------------
row("Risk and interventions")
bargauge("Risk score distribution (scores in range)",
         [(f"sum by (le) (increase(churnguard_risk_score_bucket{{{I}}}[$__range]))", "{{le}}")],
         fmt="heatmap", w=12,
         desc="Scores computed in the dashboard's time range, by P(churn) bucket (upper bound shown).")
timeseries("Scores by trigger",
           [(f"sum by (trigger) (rate(churnguard_scored_total{{{I}}}[{R}]))", "{{trigger}}")], unit="ops", w=6)
timeseries("Mean risk score",
           [(f"sum(rate(churnguard_risk_score_sum{{{I}}}[{R}])) / "
             f"clamp_min(sum(rate(churnguard_risk_score_count{{{I}}}[{R}])), 1e-9)", "mean P(churn)")],
           unit="percentunit", w=6)
timeseries("Interventions by tier",
           [(f"sum by (tier) (rate(churnguard_interventions_total{{{I}}}[{R}]))", "{{tier}}")], unit="ops",
           stack=True)
timeseries("Interventions by action",
           [(f"sum by (action) (rate(churnguard_interventions_total{{{I}}}[{R}]))", "{{action}}")], unit="ops",
           stack=True)
timeseries("Control share by tier",
           [(f"sum by (tier) (rate(churnguard_control_total{{{I}}}[{R}])) / clamp_min("
             f"sum by (tier) (rate(churnguard_control_total{{{I}}}[{R}])) + "
             f"sum by (tier) (rate(churnguard_interventions_total{{{I}}}[{R}])), 1e-9)", "{{tier}}"),
            (f"sum(rate(churnguard_control_total{{{I}}}[{R}])) / clamp_min("
             f"sum(rate(churnguard_control_total{{{I}}}[{R}])) + "
             f"sum(rate(churnguard_interventions_total{{{I}}}[{R}])), 1e-9)", "all tiers")],
           unit="percentunit",
           desc="control / (control + interventions); should sit near policy.control_fraction (default 0.1).",
           thresholds=[{"color": "green", "value": None}, {"color": "blue", "value": 0.1}])
timeseries("Suppressed by reason",
           [(f"sum by (reason) (rate(churnguard_suppressed_total{{{I}}}[{R}]))", "{{reason}}")], unit="ops",
           w=12)
timeseries("Event-to-intervention latency",
           [(q(0.5, "churnguard_event_to_intervention_seconds"), "p50"),
            (q(0.99, "churnguard_event_to_intervention_seconds"), "p99"),
            (q(0.99, "churnguard_event_to_intervention_seconds", by="tier"), "p99 {{tier}}")],
           unit="s", w=12,
           desc="Kafka timestamp of the triggering message to the broker's acknowledgement (event-triggered only).")

# ---------------------------------------------------------------------------------------------
# Outcomes of interventions (treated) and control records, decided uplift.horizon of event time
# after each record (docs/INTERVENTIONS.md, "Outcomes, live"). Counted over the dashboard's time
# range; the interval is Wald's, on the two proportions (normal approximation: rough with few
# outcomes or retention near 0 or 1; `churnguard uplift` gives Newcombe intervals in batch).
OUT = "churnguard_uplift_outcomes_total"


def outcomes(group, outcome=None, window="$__range"):
    o = f', outcome="{outcome}"' if outcome else ""
    return f'sum by (tier, action) (increase({OUT}{{{I}, group="{group}"{o}}}[{window}]))'


def retention(group):
    # No series for a (tier, action) without outcomes in the range (not a misleading 0).
    return f"({outcomes(group, 'retained')} / ({outcomes(group)} > 0))"


PT, PC = retention("treated"), retention("control")
NT, NC = f"({outcomes('treated')} > 0)", f"({outcomes('control')} > 0)"
UPLIFT = f"({PT} - {PC})"
HALF = f"(1.96 * sqrt({PT} * (1 - {PT}) / {NT} + {PC} * (1 - {PC}) / {NC}))"

row("Is it working?")
bargauge("Retention after the horizon: treated vs control",
         [(PT, "{{tier}} / {{action}} treated"), (PC, "{{tier}} / {{action}} control")],
         unit="percentunit", w=12, h=10, maximum=1, color="palette-classic",
         desc="Share of records whose user had an event within uplift.horizon after the record, among the "
              "outcomes decided in the dashboard's time range, per tier and action. Control records carry the "
              "action they would have received.")
bargauge("Uplift (treated - control retention) with 95% interval",
         [(f"{UPLIFT} - {HALF}", "{{tier}} / {{action}} lower"), (UPLIFT, "{{tier}} / {{action}} uplift"),
          (f"{UPLIFT} + {HALF}", "{{tier}} / {{action}} upper")],
         unit="percentunit", w=12, h=10, minimum=-1, maximum=1, color="thresholds",
         steps=[{"color": "red", "value": None}, {"color": "green", "value": 0}],
         desc="Absolute uplift per tier and action over the outcomes decided in the time range, with an "
              "approximate 95% Wald interval on the difference of two proportions "
              "(uplift +- 1.96 sqrt(pt(1-pt)/nt + pc(1-pc)/nc)), computed in PromQL. Rough with few outcomes: "
              "use `churnguard uplift` (Newcombe) to decide. An upper bound below zero: the action hurts "
              "(alert ChurnguardInterventionHarmful).")
timeseries("Outcomes decided by group",
           [(f"sum by (group, outcome) (rate({OUT}{{{I}}}[{R}]))", "{{group}} {{outcome}}")], unit="ops", w=12,
           stack=True, desc="Outcomes lag decisions by uplift.horizon of event time.")
bargauge("Spend per record in the horizon",
         [(f"sum by (group) (increase(churnguard_uplift_spend_total{{{I}}}[$__range])) / "
           f"(sum by (group) (increase({OUT}{{{I}}}[$__range])) > 0)", "{{group}}")],
         w=12, color="palette-classic",
         desc="Mean spend (sum of event amounts, currency units) in the horizon after a record, by group, over "
              "the outcomes decided in the time range.")

# ---------------------------------------------------------------------------------------------
row("Lifecycle")
stat("DAU", [(f'sum(churnguard_active_users{{{I}, window="1d"}})', "DAU")], w=4)
stat("WAU", [(f'sum(churnguard_active_users{{{I}, window="7d"}})', "WAU")], w=4)
stat("MAU", [(f'sum(churnguard_active_users{{{I}, window="30d"}})', "MAU")], w=4)
stat("DAU / MAU", [(f'sum(churnguard_active_users{{{I}, window="1d"}}) / '
                    f'clamp_min(sum(churnguard_active_users{{{I}, window="30d"}}), 1)', "stickiness")],
     unit="percentunit", w=4, decimals=1)
stat("Interventions per 1,000 DAU (last 1d)",
     [(f'1000 * sum(increase(churnguard_interventions_total{{{I}}}[1d])) / '
       f'clamp_min(sum(churnguard_active_users{{{I}, window="1d"}}), 1)', "per 1k DAU")],
     w=8, decimals=1, desc="Wall-clock day of interventions over event-time DAU.")
timeseries("Users by lifecycle stage",
           [(f"sum by (stage) (churnguard_users_by_stage{{{I}}})", "{{stage}}")], stack=True, w=8,
           desc="churned includes users evicted after state_ttl (resets on restarts and rebalances).")
timeseries("Active users (DAU / WAU / MAU)",
           [(f"sum by (window) (churnguard_active_users{{{I}}})", "{{window}}")], w=8,
           desc="Users with an event in the last 1d / 7d / 30d of event time.")
timeseries("Cohort retention (day N)",
           [(f"sum by (day) (churnguard_cohort_retention_ratio{{{I}}} * on (instance, job, day) "
             f"churnguard_cohort_users{{{I}}}) / clamp_min(sum by (day) (churnguard_cohort_users{{{I}}}), 1)",
             "day {{day}}")],
           unit="percentunit", w=8,
           desc="Share of recent new users active on or after day N, weighted by cohort size across instances.")
timeseries("Interventions per 1,000 active users (rolling 1d)",
           [(f'1000 * sum(increase(churnguard_interventions_total{{{I}}}[1d])) / '
             f'clamp_min(sum(churnguard_active_users{{{I}, window="1d"}}), 1)', "per 1k DAU")], w=24, h=6)

# ---------------------------------------------------------------------------------------------
row("Model")
stat("Serving model", [(f"max by (model_version, trained_at, features) (churnguard_model_info{{{I}}})",
                        "{{model_version}} (trained {{trained_at}}, {{features}} features)")],
     w=12, text_mode="name")
stat("Model loaded", [(f"min(churnguard_model_loaded{{{I}}})", "loaded")], w=4,
     mappings=[{"type": "value", "options": {"0": {"text": "NO MODEL", "color": "red"},
                                              "1": {"text": "loaded", "color": "green"}}}],
     steps=[{"color": "red", "value": None}, {"color": "green", "value": 1}])
stat("Model reloads since start", [(f"sum by (result) (churnguard_model_reloads_total{{{I}}})", "{{result}}")],
     w=8, desc="SIGHUP or a changed model file; no series before the first reload.")
timeseries("Model reloads by result",
           [(f"sum by (result) (increase(churnguard_model_reloads_total{{{I}}}[{R}]))", "{{result}}")], w=24, h=6)


def variable(name, query, label):
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "definition": query, "refresh": 2, "includeAll": True, "allValue": ".*", "multi": True,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": [],
            "sort": 1, "hide": 0, "regex": "", "skipUrlSync": False}


dashboard = {
    "uid": "churnguard",
    "title": "churnguard",
    "description": "Real-time churn prediction: throughput, state, risk, interventions, lifecycle, model "
                   "(docs/METRICS.md).",
    "tags": ["churnguard", "kafka"],
    "editable": True,
    "graphTooltip": 1,
    "schemaVersion": 39,
    "version": 1,
    "refresh": "30s",
    "time": {"from": "now-3h", "to": "now"},
    "timepicker": {},
    "timezone": "",
    "fiscalYearStartMonth": 0,
    "liveNow": False,
    "links": [],
    "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                              "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                              "name": "Annotations & Alerts", "type": "dashboard"}]},
    "templating": {"list": [
        variable("instance", "label_values(churnguard_build_info, instance)", "instance"),
        variable("topic", "label_values(churnguard_events_consumed_total, topic)", "topic"),
    ]},
    "panels": panels,
}

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards",
                                                         "churnguard.json")
with open(out, "w") as f:
    json.dump(dashboard, f, indent=2)
    f.write("\n")
print(f"wrote {out}: {len(panels)} panels")
