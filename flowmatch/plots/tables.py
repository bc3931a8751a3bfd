"""Pictures of mixed-type tables: each column's distribution in generated rows beside the real rows'.

Numeric columns: overlaid histograms on shared bins (real filled, generated outlined). Categorical
columns: the share of each category side by side (the 12 most common real categories, the rest
pooled as "other"; missing cells as "(missing)").
"""

from __future__ import annotations

import math
import os

import numpy as np

from flowmatch.plots.figures import save_figure

#: Categories drawn per column; the rest are pooled.
TOP_CATEGORIES = 12


def plot_table_marginals(synthetic, real, out: str | os.PathLike, *, title: str = "", max_columns: int = 16) -> None:
    """One panel per column (the first ``max_columns``): generated rows against real rows."""
    import matplotlib.pyplot as plt
    import pandas as pd

    columns = list(real.columns)[:max_columns]
    cols = min(4, len(columns))
    rows = math.ceil(len(columns) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, columns):
        r, s = real[name], synthetic[name]
        if pd.api.types.is_numeric_dtype(r.dtype) and not pd.api.types.is_bool_dtype(r.dtype):
            rv = r.dropna().to_numpy(dtype=float)
            sv = s.dropna().to_numpy(dtype=float)
            both = np.concatenate([rv, sv]) if len(sv) else rv
            whole = pd.api.types.is_integer_dtype(r.dtype) and both.max() - both.min() <= 60
            bins = np.arange(both.min() - 0.5, both.max() + 1.5) if whole else np.histogram_bin_edges(both, bins=30)
            ax.hist(rv, bins=bins, density=True, alpha=0.45, color="tab:blue", label="real (test split)")
            ax.hist(sv, bins=bins, density=True, histtype="step", linewidth=1.5, color="tab:orange", label="generated")
        else:
            rc = r.astype(object).where(r.notna(), "(missing)").astype(str)
            sc = s.astype(object).where(s.notna(), "(missing)").astype(str)
            top = list(rc.value_counts().index[:TOP_CATEGORIES])
            rp = [float((rc == c).mean()) for c in top]
            sp = [float((sc == c).mean()) for c in top]
            labels = top
            if rc.nunique() > TOP_CATEGORIES or not sc.isin(top).all():
                labels = [*top, "other"]
                rp.append(float((~rc.isin(top)).mean()))
                sp.append(float((~sc.isin(top)).mean()))
            pos = np.arange(len(labels))
            ax.bar(pos - 0.2, rp, width=0.4, color="tab:blue", alpha=0.6, label="real (test split)")
            ax.bar(pos + 0.2, sp, width=0.4, color="tab:orange", alpha=0.9, label="generated")
            ax.set_xticks(pos)
            ax.set_xticklabels([str(label)[:10] for label in labels], rotation=60, ha="right", fontsize=7)
        ax.set_title(str(name)[:30], fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(columns) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, out)
