"""The dynamic-corpus experiment's report: seed means, CSV, markdown, plots.

`run_dynamic_experiment` (gr/experiments/dynamic.py) gives each (scheme, strategy) cell
a summary per seed: "steps" (cost per step) and, per metric in METRICS, the
performance matrix a[n][i] [steps, steps] (None above the diagonal) with
the DSI++ curves "A", "F" and "LA" over steps n. This module averages the
summaries over seeds and writes them under a workdir:

  results.json  everything (per seed and the means)
  results.csv   one row per (system, step): curves, D0 and new-document
                Hits, cost, memorised D0 and storage (`summary_rows`)
  results.md    a markdown table of every system at the last step
  d0_hits10.png, new_docs_hits10.png, updates_vs_A.png  the plots
"""

import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from gr import atomic_io

METRICS = ("Hits@1", "Hits@10")


def nan_to_none(a: np.ndarray) -> list[list[Optional[float]]]:
  """[n, m] array -> nested lists, NaN as None (JSON null)."""
  return [[None if np.isnan(x) else float(x) for x in row] for row in a]


def mean_over_seeds(
  by_seed: Mapping[str, Mapping[str, dict]],
) -> dict[str, dict]:
  """{cell: summary} with each matrix entry, metric curve, cost and
  memorised fraction the mean over seeds, `std` beside each curve, and
  the lexical plan's choice of each seed (where the cell has a plan)."""
  names = list(dict.fromkeys(c for cells in by_seed.values() for c in cells))
  out = {}
  for name in names:
    runs = [cells[name] for cells in by_seed.values() if name in cells]
    first = runs[0]
    summary = {
      "seeds": len(runs),
      "steps": [
        {
          key: float(np.mean([r["steps"][n][key] for r in runs]))
          for key in first["steps"][n]
        }
        for n in range(len(first["steps"]))
      ],
    }
    for metric in METRICS:
      matrices = np.array(
        [
          [
            [np.nan if x is None else x for x in row]
            for row in r[metric]["matrix"]
          ]
          for r in runs
        ]
      )
      summary[metric] = {
        "matrix": nan_to_none(np.mean(matrices, axis=0)),
        "matrix_std": nan_to_none(np.std(matrices, axis=0)),
      }
      for curve in ("A", "F", "LA"):
        values = np.array([r[metric][curve] for r in runs])
        summary[metric][curve] = values.mean(0).tolist()
        summary[metric][f"{curve}_std"] = values.std(0).tolist()
    if any(x is not None for x in first.get("memorised_d0") or ()):
      pairs = np.array(
        [[np.nan if x is None else x for x in r["memorised_d0"]] for r in runs],
        float,
      )
      summary["memorised_d0"] = np.nanmean(pairs, 0).tolist()
    if first.get("storage"):
      summary["storage"] = {
        k: float(np.mean([r["storage"][k] for r in runs]))
        for k in first["storage"]
      }
    if first.get("lexical_weight"):  # the plan's choice, per seed
      summary["lexical_weight"] = [r["lexical_weight"] for r in runs]
    out[name] = summary
  return out


def summary_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
  """One CSV row per (system, step n): A/F/LA, D0 and new-doc Hits (means
  over seeds, `_std` beside), cost; memorised D0 and storage at the end."""
  systems = {"bm25/-": results["bm25"], **results["cells"]}
  rows = []
  for system, summary in systems.items():
    scheme, strategy = system.split("/")
    cumulative, last = 0, len(summary["steps"]) - 1
    for n, step in enumerate(summary["steps"]):
      cumulative += step["gradient_updates"]
      row = {
        "scheme": scheme,
        "strategy": strategy,
        "step": n,
        "updates": step["gradient_updates"],
        "cumulative_updates": cumulative,
        "seconds": round(step["seconds"], 1),
        "seeds": summary.get("seeds", 1),
      }
      for metric in METRICS:
        values = summary[metric]
        std = values.get("matrix_std")
        short = metric.replace("Hits@", "H")
        for curve in ("A", "F", "LA"):
          row[f"{curve}_{short}"] = values[curve][n]
          row[f"{curve}_{short}_std"] = values.get(
            f"{curve}_std", [0.0] * (last + 1)
          )[n]
        row[f"D0_{short}"] = values["matrix"][n][0]
        row[f"D0_{short}_std"] = std[n][0] if std else 0.0
        row[f"new_{short}"] = values["matrix"][n][n]
        row[f"new_{short}_std"] = std[n][n] if std else 0.0
      memorised_d0 = summary.get("memorised_d0") or [None, None]
      row["memorised_d0"] = (
        memorised_d0[0 if n == 0 else 1] if n in (0, last) else None
      )
      row["memory_bytes"] = (
        summary.get("storage", {}).get("memory_bytes") if n == last else None
      )
      rows.append(row)
  return rows


def write_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
  import csv  # pylint: disable=g-import-not-at-top

  with atomic_io.atomic_open(path) as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
      writer.writerow(
        {
          k: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else v)
          for k, v in row.items()
        }
      )


def _cell(row: Mapping[str, Any], column: str) -> str:
  value = row[column]
  if value is None:
    return "-"
  std = row.get(f"{column}_std")
  if isinstance(value, float) and std is not None and row["seeds"] > 1:
    return f"{value:.3f} ± {std:.3f}"
  if column == "memory_bytes":
    return f"{value / 1e6:.2f} MB"
  if column == "cumulative_updates":
    return f"{value:.0f}"
  return f"{value:.3f}" if isinstance(value, float) else str(value)


def format_table(rows: Sequence[Mapping[str, Any]], step: int) -> str:
  """A markdown table of every system at `step` (e.g. the last): means ±
  std over seeds."""
  columns = (
    "scheme",
    "strategy",
    "A_H1",
    "A_H10",
    "F_H10",
    "LA_H10",
    "D0_H10",
    "new_H10",
    "cumulative_updates",
    "memorised_d0",
    "memory_bytes",
  )
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  for row in rows:
    if row["step"] == step:
      lines.append("| " + " | ".join(_cell(row, c) for c in columns) + " |")
  return "\n".join(lines)


def write_report(results: Mapping[str, Any], workdir: str) -> None:
  """results.json, results.csv, results.md and the PNG plots."""
  rows = summary_rows(results)
  os.makedirs(workdir, exist_ok=True)
  atomic_io.write_json(os.path.join(workdir, "results.json"), results, indent=1)
  write_csv(os.path.join(workdir, "results.csv"), rows)
  last = len(results["periods"]) - 1
  with atomic_io.atomic_open(os.path.join(workdir, "results.md")) as f:
    f.write(format_table(rows, last) + "\n")
  plot_results(results, rows, workdir)


def _schemes(results) -> list[str]:
  return list(dict.fromkeys(k.split("/")[0] for k in results["cells"]))


def _curve_plot(results, workdir: str, name: str, title: str, value) -> None:
  """One subplot per scheme, one line per strategy (+ BM25)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  schemes = _schemes(results)
  fig, axes = plt.subplots(
    1, len(schemes), figsize=(4 * len(schemes), 3.4), sharey=True, squeeze=False
  )
  for ax, scheme in zip(axes[0], schemes):
    for system, summary in [("bm25", results["bm25"])] + [
      (k.split("/")[1], v)
      for k, v in results["cells"].items()
      if k.startswith(scheme + "/")
    ]:
      steps, values = value(summary["Hits@10"]["matrix"])
      ax.plot(
        steps,
        values,
        marker="o",
        label=system,
        linestyle="--" if system == "bm25" else "-",
      )
    ax.set_title(f"{scheme} docids")
    ax.set_xlabel("step n (after D_n)")
  axes[0][0].set_ylabel(title)
  axes[0][-1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, name), dpi=100)
  plt.close(fig)


def _updates_plot(results, rows, workdir: str) -> None:
  """Cumulative gradient updates vs A_n (Hits@10) after the last step."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  last = len(results["periods"]) - 1
  fig, ax = plt.subplots(figsize=(6, 4))
  markers = dict(zip(_schemes(results), "osD^vP"))
  strategies = list(
    dict.fromkeys(r["strategy"] for r in rows if r["scheme"] != "bm25")
  )
  colors = dict(
    zip(strategies, plt.rcParams["axes.prop_cycle"].by_key()["color"])
  )
  for row in rows:
    if row["step"] == last and row["scheme"] != "bm25":
      ax.scatter(
        max(row["cumulative_updates"], 1),
        row["A_H10"],
        marker=markers[row["scheme"]],
        color=colors[row["strategy"]],
        label=f"{row['scheme']}/{row['strategy']}",
      )
  ax.set_xscale("log")
  ax.set_xlabel("gradient updates, D0..D4 (log)")
  ax.set_ylabel("A_4 (Hits@10)")
  ax.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "updates_vs_A.png"), dpi=100)
  plt.close(fig)


def plot_results(results, rows, workdir: str) -> None:
  """d0_hits10.png, new_docs_hits10.png, updates_vs_A.png."""
  steps = len(results["periods"])
  _curve_plot(
    results,
    workdir,
    "d0_hits10.png",
    "Hits@10 on D0 queries",
    lambda m: (list(range(steps)), [m[n][0] for n in range(steps)]),
  )
  _curve_plot(
    results,
    workdir,
    "new_docs_hits10.png",
    "Hits@10 on D_n queries after step n",
    lambda m: (list(range(steps)), [m[n][n] for n in range(steps)]),
  )
  _updates_plot(results, rows, workdir)
