"""The Grafana dashboards, as code: ``python -m chaincast.deploy.grafana.build`` writes ``dashboards/*.json``.

The JSON files are committed (Grafana provisions them as they are); this module
is the one place to change them. ``--check`` exits non-zero when a file differs
from what this code builds, so a hand edit of the JSON cannot drift unnoticed.

Portable: every panel reads the Prometheus datasource chosen in the ``datasource`` variable
(``__inputs`` asks for it when the JSON is imported into any Grafana; provisioned, it is the
default Prometheus), and every chaincast series is scoped to the scrape jobs chosen in the
``job`` variable (``job=~"$job"``, filled from ``chaincast_inference_seconds_count``, which
every chaincast process exports), so the dashboards work beside other software and other
deployments in one Prometheus. Panels that concern one market use the ``$symbol`` variable,
filled from ``chaincast_last_close``; the volatility panel the ``$vol_forecaster`` variable,
filled from ``chaincast_forecast_volatility``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
INPUTS = [{"name": "DS_PROMETHEUS", "label": "Prometheus", "description": "the Prometheus that scrapes chaincast",
           "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus"}]
JOB_METRIC = "chaincast_inference_seconds_count"  # exported (at zero) by every process that imports stream.metrics
SERIES = re.compile(r"\b(chaincast_[a-z0-9_]+)(\{([^}]*)\})?")
RATE = "$__rate_interval"
# Series of one kind of process (the `process` label of the scrape config): every process that
# imports stream.metrics also exports its unlabelled histograms, at zero.
WORKER, RETRAINER, CHAIN = ('{process="%s"}' % p for p in ("worker", "retrainer", "chain"))
# Counters of rare events (reconnects, gaps, refusals) have no series before the first event;
# "or vector(0)" draws that as the zero it is. Only where no series really means no event.


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"  # timeseries | stat | heatmap | table
    unit: str = "short"
    width: int = 12
    height: int = 8
    description: str = ""
    overrides: tuple[dict[str, Any], ...] = ()
    options: dict[str, Any] = field(default_factory=dict)


def scoped(expr: str) -> str:
    """Every chaincast series of ``expr`` limited to the jobs of the ``job`` variable.

    >>> scoped('sum(rate(chaincast_x_total{process="worker"}[5m])) + chaincast_y')
    'sum(rate(chaincast_x_total{job=~"$job",process="worker"}[5m])) + chaincast_y{job=~"$job"}'
    """
    def add(m: re.Match[str]) -> str:
        inner = m.group(3)
        return f'{m.group(1)}{{job=~"$job"{"," + inner if inner else ""}}}'

    return SERIES.sub(add, expr)


def q(expr: str, legend: str = "") -> Query:
    return Query(scoped(expr), legend)


def quantile(phi: float, bucket: str, window: str = RATE) -> Query:
    """``phi`` quantile of a histogram over all its series, e.g. ``quantile(0.99, 'x_bucket{...}')``."""
    return q(f"histogram_quantile({phi}, sum by (le) (rate({bucket}[{window}])))", f"p{round(phi * 100)}")


def panel_json(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    targets = []
    for i, query in enumerate(p.queries):
        t: dict[str, Any] = {"datasource": DATASOURCE, "expr": query.expr, "refId": chr(ord("A") + i),
                             "legendFormat": query.legend or "__auto", "range": p.kind != "table",
                             "instant": p.kind == "table"}
        if p.kind == "heatmap":
            t["format"] = "heatmap"
        if p.kind == "table":
            t["format"] = "table"
        targets.append(t)
    out: dict[str, Any] = {
        "id": pid, "type": p.kind, "title": p.title, "description": p.description, "datasource": DATASOURCE,
        "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y}, "targets": targets,
        "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": list(p.overrides)},
        "options": p.options,
    }
    if p.kind == "heatmap":
        out["options"] = {"calculate": False, "yAxis": {"unit": p.unit}, "cellGap": 1, **p.options}
    return out


def dashboard(uid: str, title: str, panels: list[Panel], *, variables: list[dict[str, Any]] | None = None,
              annotations: list[dict[str, Any]] | None = None, description: str = "") -> dict[str, Any]:
    """Lay panels out left to right in a 24-column grid, wrapping to new rows."""
    laid, x, y, row_h = [], 0, 0, 0
    for pid, p in enumerate(panels, start=1):
        if x + p.width > 24:
            x, y, row_h = 0, y + row_h, 0
        laid.append(panel_json(p, pid, x, y))
        x, row_h = x + p.width, max(row_h, p.height)
    builtin = {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
               "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
               "type": "dashboard"}
    return {
        "uid": uid, "title": title, "description": description, "tags": ["chaincast"], "timezone": "browser",
        "schemaVersion": 39, "version": 1, "editable": True, "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "annotations": {"list": [builtin, *(annotations or [])]},
        "templating": {"list": [datasource_variable(), job_variable(), *(variables or [])]},
        "__inputs": INPUTS,
        "panels": laid,
    }


def datasource_variable() -> dict[str, Any]:
    return {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {"selected": False, "text": "${DS_PROMETHEUS}", "value": "${DS_PROMETHEUS}"},
            "hide": 0, "refresh": 1, "regex": "", "includeAll": False, "multi": False}


def job_variable() -> dict[str, Any]:
    return {"name": "job", "label": "job", "type": "query", "datasource": DATASOURCE,
            "query": {"query": f"label_values({JOB_METRIC}, job)", "refId": "job"},
            "definition": f"label_values({JOB_METRIC}, job)", "refresh": 2, "includeAll": True, "multi": True,
            "allValue": ".+", "sort": 1, "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}


def symbol_variable() -> dict[str, Any]:
    return {"name": "symbol", "label": "symbol", "type": "query", "datasource": DATASOURCE,
            "query": {"query": "label_values(chaincast_last_close, symbol)", "refId": "symbol"},
            "definition": "label_values(chaincast_last_close, symbol)", "refresh": 2, "includeAll": False,
            "multi": False, "sort": 1, "current": {}}


def fee_horizon_variable() -> dict[str, Any]:
    return {"name": "fee_horizon", "label": "fee horizon (blocks)", "type": "query", "datasource": DATASOURCE,
            "query": {"query": "label_values(chaincast_fee_forecast_gwei, horizon)", "refId": "fee_horizon"},
            "definition": "label_values(chaincast_fee_forecast_gwei, horizon)", "refresh": 2, "includeAll": False,
            "multi": False, "sort": 3, "current": {}}


def forecaster_variable() -> dict[str, Any]:
    """The volatility forecaster shown (``volatility:h5``), from those the workers export."""
    return {"name": "vol_forecaster", "label": "volatility forecaster", "type": "query", "datasource": DATASOURCE,
            "query": {"query": "label_values(chaincast_forecast_volatility, forecaster)", "refId": "vol_forecaster"},
            "definition": "label_values(chaincast_forecast_volatility, forecaster)", "refresh": 2,
            "includeAll": False, "multi": False, "sort": 1, "current": {}}


def band_overrides() -> tuple[dict[str, Any], ...]:
    """Shade q10..q90: q90 fills down to q10, both drawn as thin dashed lines."""
    thin = [{"id": "custom.lineWidth", "value": 1}, {"id": "custom.lineStyle", "value": {"fill": "dash",
                                                                                          "dash": [4, 4]}}]
    return (
        {"matcher": {"id": "byName", "options": "q90"},
         "properties": [*thin, {"id": "custom.fillBelowTo", "value": "q10"}, {"id": "custom.fillOpacity",
                                                                              "value": 20}]},
        {"matcher": {"id": "byName", "options": "q10"}, "properties": thin},
    )


def overview() -> dict[str, Any]:
    panels = [
        Panel("Processes up", (q('up{job=~"$job"}', "{{process}} {{instance}}"),), kind="stat", width=8,
              height=5, description="1 = the process answers its /metrics endpoint"),
        Panel("Predictions per minute", (q(f"sum(rate(chaincast_predictions_total[{RATE}])) * 60", "predictions"),),
              kind="stat", width=8, height=5),
        Panel("Dead letters per minute", (q(f"sum(rate(chaincast_deadletter_total[{RATE}])) * 60", "dead letters"),),
              kind="stat", width=8, height=5),
        Panel("Trades published per second (producer)",
              (q(f"sum by (symbol) (rate(chaincast_exchange_trades_total[{RATE}]))", "{{symbol}}"),), unit="ops"),
        Panel("Trades folded into bars per second (worker)",
              (q(f"sum by (symbol) (rate(chaincast_trades_total[{RATE}]))", "{{symbol}}"),), unit="ops"),
        Panel("Bars and predictions per minute",
              (q(f"sum by (symbol) (rate(chaincast_bars_total[{RATE}])) * 60", "bars {{symbol}}"),
               q(f"sum by (symbol) (rate(chaincast_predictions_total[{RATE}])) * 60", "predictions {{symbol}}")),
              unit="short"),
        Panel("Consumer lag (messages behind the high-water mark)", (
            q("sum by (topic, partition) (chaincast_consumer_commit_lag_messages)",
              "committed {{topic}}[{{partition}}]"),
            q("sum by (topic, partition) (chaincast_consumer_lag_messages)", "fetched {{topic}}[{{partition}}]"),
        ), description="Sampled every 5 s by each worker for its assigned partitions. 'committed' counts what "
                       "is not yet processed and committed; 'fetched' only what is not yet fetched"),
        Panel("Bar to Redis latency", (
            quantile(0.5, f"chaincast_bar_to_redis_seconds_bucket{WORKER}"),
            quantile(0.99, f"chaincast_bar_to_redis_seconds_bucket{WORKER}"),
        ), unit="s"),
        Panel("Inference latency", (
            quantile(0.5, f"chaincast_inference_seconds_bucket{WORKER}"),
            quantile(0.99, f"chaincast_inference_seconds_bucket{WORKER}"),
        ), unit="s"),
        Panel("Where a forecast's time goes (worker, mean per forecasting batch)", (
            q(f"sum by (stage) (rate(chaincast_forecast_stage_seconds_sum{WORKER}[{RATE}])) / "
              f"sum by (stage) (rate(chaincast_forecast_stage_seconds_count{WORKER}[{RATE}]))", "{{stage}}"),
        ), unit="s", description="queued: producer timestamp to the batch taken (broker, fetch, hand-off); fold: "
                                 "decode, bar fold, window and features; inference; redis: calibration and the "
                                 "Redis write"),
        Panel("Garbage-collector pauses and heap trims (worker, p99)", (
            q(f"histogram_quantile(0.99, sum by (le, generation) "
              f"(rate(chaincast_gc_pause_seconds_bucket{WORKER}[{RATE}])))", "generation {{generation}}"),
            q(f"histogram_quantile(0.99, sum by (le) (rate(chaincast_heap_trim_seconds_bucket{WORKER}[{RATE}])))",
              "heap trim"),
        ), unit="s", description="The event loop stands still during a collection; 2 is a full one. The worker "
                                 "freezes its start-up objects once it serves, so full collections stay short. "
                                 "Every 10 s it returns freed heap to the OS (heap trim)"),
        Panel("Bar to Redis latency distribution",
              (q(f"sum by (le) (rate(chaincast_bar_to_redis_seconds_bucket{WORKER}[{RATE}]))", "{{le}}"),),
              kind="heatmap", unit="s"),
        Panel("Exchange event time to Kafka ack (p50 / p99)", (
            quantile(0.5, "chaincast_exchange_lag_seconds_bucket"),
            quantile(0.99, "chaincast_exchange_lag_seconds_bucket"),
        ), unit="s", description="Large under replay: the bundled history's event times are in the past"),
        Panel("Dead letters by source and reason",
              (q(f"sum by (source, reason) (rate(chaincast_deadletter_total[{RATE}])) * 60",
                 "{{source}}: {{reason}}"),), unit="short"),
        Panel("Exchange reconnects, gaps and lost trades (per hour)", (
            q("sum by (reason) (increase(chaincast_exchange_reconnects_total[1h])) or vector(0)",
              "reconnect {{reason}}"),
            q("sum by (symbol) (increase(chaincast_exchange_gaps_total[1h])) or vector(0)", "gaps {{symbol}}"),
            q("sum by (symbol) (increase(chaincast_exchange_missing_trades_total[1h])) or vector(0)",
              "lost {{symbol}}"),
        ), unit="short", width=8),
        Panel("Chain head lag", (q(f"max(chaincast_chain_head_lag_seconds{CHAIN})", "head lag"),), unit="s", width=8),
        Panel("Chain blocks and reorgs (per hour)", (
            q("sum by (kind) (increase(chaincast_chain_blocks_published_total[1h]))", "blocks {{kind}}"),
            q("sum(increase(chaincast_chain_reorgs_total[1h])) or vector(0)", "reorgs"),
        ), unit="short", width=8),
    ]
    return dashboard("chaincast-overview", "chaincast / overview", panels,
                     description="Pipeline health: throughput, lag, latency, dead letters")


def forecasts() -> dict[str, Any]:
    sym = 'symbol="$symbol"'
    panels = [
        Panel("$symbol: close and forecast band (q10..q90)", (
            q(f"max(chaincast_last_close{{{sym}}})", "close"),
            q(f'max(chaincast_forecast_price{{{sym}, band="mid"}})', "forecast"),
            q(f'max(chaincast_forecast_price{{{sym}, band="q10"}})', "q10"),
            q(f'max(chaincast_forecast_price{{{sym}, band="q90"}})', "q90"),
        ), unit="currencyUSD", width=24, height=10, overrides=band_overrides(),
            description="The forecast is for the close `horizon` bars after the bar it was made from"),
        Panel("$symbol: volatility forecast $vol_forecaster and its band (q10..q90)", (
            q(f'max(chaincast_forecast_volatility{{{sym}, forecaster="$vol_forecaster", band="mid"}})', "forecast"),
            q(f'max(chaincast_forecast_volatility{{{sym}, forecaster="$vol_forecaster", band="q10"}})', "q10"),
            q(f'max(chaincast_forecast_volatility{{{sym}, forecaster="$vol_forecaster", band="q90"}})', "q90"),
        ), unit="percentunit", width=24, height=8, overrides=band_overrides(),
            description="Realised volatility of the next h one-bar log returns, as forecast at each bar close, "
                        "with the live-calibrated band; the forecast plotted now is for the h bars to come"),
        Panel("$symbol: live skill vs persistence", (
            q(f"chaincast_live_skill{{{sym}}}", "{{forecaster}} {{version}}"),
        ), unit="percentunit", description="1 - MAE / MAE(persistence) over realised predictions, per forecaster "
                                           "on its own target; persistence is no change for a return, the "
                                           "realised volatility of the last h bars for volatility; below 0 = "
                                           "worse than persistence"),
        Panel("$symbol: live MAE (forecaster's target units)",
              (q(f"chaincast_live_mae{{{sym}}}", "{{forecaster}} {{version}}"),)),
        Panel("$symbol: live q10..q90 coverage per forecaster",
              (q(f"chaincast_live_coverage_80{{{sym}}}", "{{forecaster}} {{version}}"),),
              unit="percentunit", description="Share of realised targets inside the served (live-calibrated) "
                                              "band; 0.8 is calibrated"),
        Panel("$symbol: band scale of the live calibration", (
            q(f"max by (forecaster) (chaincast_band_scale{{{sym}}})", "{{forecaster}}"),),
              description="How far the adaptive conformal calibration stretches each model's own q10..q90 "
                          "around q50 (1 = as the model made it; above 1 = the model's band was too narrow)"),
        Panel("Predictions scored per minute", (
            q(f"sum by (symbol) (rate(chaincast_live_scored_total[{RATE}])) * 60", "{{symbol}}"),)),
        Panel("Serving model", (q("max by (name, version, family) (chaincast_model_info)",
                                  "{{name}} {{version}} ({{family}})"),), kind="table", width=12, height=6),
        Panel("Serving model age", (q("max by (name) (chaincast_model_age_seconds)", "{{name}}"),),
              kind="stat", unit="s", width=12, height=6),
        Panel("Ethereum base fee and its forecast $fee_horizon blocks ahead (q10..q90)", (
            q("max(chaincast_fee_base_fee_gwei)", "base fee"),
            q('max(chaincast_fee_forecast_gwei{horizon="$fee_horizon", band="mid"})', "forecast"),
            q('max(chaincast_fee_forecast_gwei{horizon="$fee_horizon", band="q10"})', "q10"),
            q('max(chaincast_fee_forecast_gwei{horizon="$fee_horizon", band="q90"})', "q90"),
        ), unit="gwei", width=24, height=10, overrides=band_overrides(),
            description="Base fee of the latest canonical block, and the forecast made from it for the block "
                        "$fee_horizon blocks later; the forecast plotted now is for a later block"),
        Panel("Fee forecasts: live skill vs the reference", (
            q("max by (target, horizon) (chaincast_fee_live_skill)", "{{target}} h={{horizon}}"),
        ), unit="percentunit", description="1 - MAE / MAE(reference) over realised forecasts: EIP-1559 for the "
                                           "base fee, persistence for fullness; below 0 = worse than the reference"),
        Panel("Fee forecasts: live MAE, served model vs reference", (
            q("max by (target, horizon, model) (chaincast_fee_live_mae)", "{{target}} h={{horizon}} {{model}}"),
        )),
        Panel("Fee forecasts and reorg retractions per minute", (
            q(f"sum by (target) (rate(chaincast_fee_predictions_total[{RATE}])) * 60", "{{target}}"),
            q(f"sum(rate(chaincast_fee_retractions_total[{RATE}])) * 60 or vector(0)", "retracted"),
        )),
        Panel("Fee forecasts: live q10..q90 coverage", (
            q("max by (target, horizon) (chaincast_fee_live_coverage)", "{{target}} h={{horizon}}"),
        ), unit="percentunit", description="Share of realised values inside the band; 0.8 is calibrated"),
    ]
    swaps = {"name": "model versions", "enable": True, "iconColor": "orange", "datasource": DATASOURCE,
             "expr": scoped("max by (name, version) (chaincast_model_info)"), "step": "30s",
             "titleFormat": "model {{version}}", "tagKeys": "name", "textFormat": "serving {{name}} {{version}}",
             "useValueForTime": False}
    return dashboard("chaincast-forecasts", "chaincast / forecasts", panels,
                     variables=[symbol_variable(), forecaster_variable(), fee_horizon_variable()],
                     annotations=[swaps], description="Price with its forecast band, model versions, live skill")


def models() -> dict[str, Any]:
    panels = [
        Panel("Retraining rounds (per hour)",
              (q("sum by (trigger) (increase(chaincast_retrain_runs_total[1h]))", "{{trigger}}"),), width=8),
        Panel("Promotions and refusals (per hour)", (
            q("sum by (kind) (increase(chaincast_promotions_total[1h])) or vector(0)", "promoted {{kind}}"),
            q("sum by (reason) (increase(chaincast_retrain_refusals_total[1h]))", "refused {{reason}}"),
        ), width=8),
        Panel("Retraining round duration", (
            quantile(0.5, f"chaincast_retrain_seconds_bucket{RETRAINER}"),
            q(f"sum(rate(chaincast_retrain_seconds_sum{RETRAINER}[1h]))"
              f" / sum(rate(chaincast_retrain_seconds_count{RETRAINER}[1h]))", "mean"),
        ), unit="s", width=8),
        Panel("Validation MAE: champion vs challenger", (q("max by (role) (chaincast_validation_mae)", "{{role}}"),)),
        Panel("Validation skill vs persistence", (q("max by (role) (chaincast_validation_skill)", "{{role}}"),),
              unit="percentunit"),
        Panel("Retrainer history (bars held)", (q("sum by (symbol) (chaincast_retrain_history_bars)", "{{symbol}}"),),
              width=8),
        Panel("Training in progress", (q(f"max(chaincast_retrain_in_progress{RETRAINER})", "training"),), kind="stat",
              width=8),
        Panel("Model hot swap: announce to serving (p90)", (
            quantile(0.9, f"chaincast_model_swap_seconds_bucket{WORKER}", "1h"),),
              unit="s", width=8),
        Panel("Model updates refused by workers (per hour)",
              (q("sum by (name) (increase(chaincast_models_refused_total[1h])) or vector(0)", "{{name}}"),), width=12),
        Panel("Serving versions over time", (q("max by (version) (chaincast_model_info)", "{{version}}"),),
              width=12),
    ]
    return dashboard("chaincast-models", "chaincast / models", panels,
                     description="Retraining rounds, promotions, validation metrics, hot swaps")


DASHBOARDS = {"overview": overview, "forecasts": forecasts, "models": models}


def render(build) -> str:  # noqa: ANN001 - one of DASHBOARDS' builders
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a committed file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path = OUT_DIR / f"{name}.json"
        text = render(build)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            OUT_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"out of date (run python -m chaincast.deploy.grafana.build): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
