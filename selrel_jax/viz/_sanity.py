"""The figure of a cascading randomisation: one curve per method over the layers."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from selrel_jax.errors import OptionError
from selrel_jax.metrics import INSENSITIVE_THRESHOLD, Randomization


def randomization_curves(
    result: Randomization, *, threshold: float = INSENSITIVE_THRESHOLD
) -> Figure:
    """Two panels, raw and selective maps: per method the mean over clips of the
    Spearman correlation (solid) and SSIM (dashed) with the trained model's map,
    against the layers randomised so far (head first), and the flag ``threshold``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from selrel_jax import metrics, viz
        >>> scores = jnp.ones((1, 2, 3))          # (methods, steps, clips)
        >>> result = metrics.Randomization(("fc", "conv1"), ("gradient",), *[scores] * 4)
        >>> viz.save_figure(viz.randomization_curves(result), "sanity.png")
        PosixPath('sanity.png')
    """
    if not isinstance(result, Randomization):
        raise OptionError(
            f"randomization_curves: result must be a metrics.Randomization; "
            f"got {type(result).__name__}"
        )
    fig = Figure(figsize=(9.6, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    steps = np.arange(len(result.layers))
    panels = {
        "raw": (result.spearman, result.ssim),
        "selective": (result.spearman_selective, result.ssim_selective),
    }
    for ax, (title, (rank, ssim)) in zip(axes, panels.items(), strict=True):
        for m, method in enumerate(result.methods):
            line = ax.plot(steps, np.nanmean(np.asarray(rank[m]), -1), marker=".", label=method)
            ssim_mean = np.nanmean(np.asarray(ssim[m]), -1)
            ax.plot(steps, ssim_mean, linestyle="--", color=line[0].get_color())
        ax.axhline(threshold, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xticks(steps, [f"+{name}" for name in result.layers], rotation=45, ha="right")
        ax.set(title=f"{title} maps", xlabel="layers randomised (head first)", ylim=(-1.05, 1.05))
    axes[0].set_ylabel("Spearman (solid), SSIM (dashed)")
    axes[0].legend(fontsize="small")
    return fig
