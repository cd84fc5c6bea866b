"""Pictures of distributions: the top candidates before and after each stage of a chain (matplotlib)."""

from __future__ import annotations

from pathlib import Path

from decoders.errors import DecodersError


def plot_stages(record, path: str | Path, *, title: str = "") -> Path:
    """Draw one generation step: a bar chart of the top candidates after each stage, side by side.

    The first panel is the model's own distribution; each next panel is the distribution after one more
    processor, so one sees temperature sharpen it and truncations cut it. The chosen token is highlighted.

    Args:
        record: a :class:`decoders.trace.StepRecord` (from ``generate(..., trace=True)``).
        path: the PNG file to write.
        title: a title for the figure.
    """
    if record is None:
        raise DecodersError("nothing to plot: generate at least one step (--steps 1 or more)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = record.stages
    figure, axes = plt.subplots(1, len(stages), figsize=(3.6 * len(stages), 4.2), squeeze=False, sharey=True)
    for axis, stage in zip(axes[0], stages):
        labels = [repr(c.token)[1:-1] or "∅" for c in stage.top]
        colours = ["tab:orange" if c.token_id == record.chosen.token_id else "tab:blue" for c in stage.top]
        axis.bar(range(len(labels)), [c.probability for c in stage.top], color=colours)
        axis.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
        axis.set_title(f"{stage.stage}\n{stage.survivors} tokens, H={stage.entropy:.2f}", fontsize=9)
        axis.set_ylim(0, 1)
    axes[0][0].set_ylabel("probability")
    figure.suptitle(title or "top candidates after each stage", fontsize=10)
    figure.tight_layout()
    path = Path(path)
    try:
        figure.savefig(path, dpi=110)
    except OSError as exc:
        raise DecodersError(f"cannot write the plot to '{path}': {exc.strerror}") from exc
    finally:
        plt.close(figure)
    return path
