"""Cost against size: the policy-scale figures as a PNG, and the growth order of each.

The growth order of a figure is the slope of log(figure) against log(VMs), fitted by least squares
over the sizes measured: 1 is linear in the data centre, 0 is constant. Rendered by bench/report.py;
run alone on a results file with
    python -m bench.plots bench/out/results.json docs/policy-scale.png
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

CHANGES = ("label change", "new rule", "VM migration", "link failure")


def growth_order(sizes: list[float], values: list[float]) -> float | None:
    """Least-squares slope of log(value) on log(size); None with fewer than two positive points."""
    points = [(math.log(s), math.log(v)) for s, v in zip(sizes, values, strict=True) if s and v and v > 0]
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def series(rows: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """name -> (VMs, values) for every figure of the policy-scale benchmark."""
    good = sorted((r for r in rows if "error" not in r), key=lambda r: r["vms"])
    found: dict[str, tuple[list[float], list[float]]] = {}

    def add(name: str, pick) -> None:
        xs, ys = [], []
        for row in good:
            value = pick(row)
            if value is not None:
                xs.append(row["vms"])
                ys.append(value)
        if xs:
            found[name] = (xs, ys)

    add("cold compile (s)", lambda r: r.get("compile_seconds"))
    add("peak RSS (MiB)", lambda r: r.get("peak_rss_mib"))
    add("desired flows, all switches", lambda r: r.get("flows"))
    add("flows on one hypervisor", lambda r: sum(r["hypervisor_flows_by_table"]) if r.get("hypervisor_flows_by_table") else None)
    for kind in CHANGES:
        add(f"{kind} (s)", lambda r, k=kind: (r.get("changes", {}).get(k) or {}).get("seconds"))
    for table in range(5):
        add(
            f"hypervisor table {table} flows",
            lambda r, t=table: r["hypervisor_flows_by_table"][t] if r.get("hypervisor_flows_by_table") else None,
        )
    return found


def orders(rows: list[dict]) -> dict[str, float | None]:
    return {name: growth_order(xs, ys) for name, (xs, ys) in series(rows).items()}


def plot(rows: list[dict], path: Path) -> Path | None:
    """Write the PNG; None when there is nothing to plot."""
    found = series(rows)
    if not found:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = [
        ("Cold compile and memory", ["cold compile (s)", "peak RSS (MiB)"]),
        ("One change to its flow-mods (s)", [f"{k} (s)" for k in CHANGES]),
        ("Desired flows", ["desired flows, all switches", "flows on one hypervisor"]),
    ]
    for ax, (title, names) in zip(axes, panels, strict=True):
        for name in names:
            if name not in found:
                continue
            xs, ys = found[name]
            order = growth_order(xs, ys)
            label = f"{name}  ~VMs^{order:.2f}" if order is not None else name
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("VMs (20 per hypervisor, 200 rules)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


if __name__ == "__main__":
    results = json.loads(Path(sys.argv[1]).read_text())
    print(plot(results.get("policy_scale", []), Path(sys.argv[2])))
