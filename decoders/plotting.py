"""Pictures of distributions: the top candidates before and after each stage of a chain (matplotlib)."""

from __future__ import annotations

from pathlib import Path

from decoders.errors import DecodersError


#: how a tick label shows characters that would otherwise be invisible
_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥"}


def _label(token: str) -> str:
    """A token as a tick label: spaces and line breaks made visible (a leading space is a word start), other
    control characters as escapes."""
    shown = "".join(_VISIBLE.get(ch, ch if ch.isprintable() else f"\\x{ord(ch):02x}") for ch in token)
    return shown or "∅"


def plot_stages(records, path: str | Path, *, title: str = "") -> Path:
    """Draw generation steps: per step (one row), a bar chart of the top candidates after each stage.

    The first panel of a row is the model's own distribution; each next panel is the distribution after one
    more processor, so one sees temperature sharpen it and truncations cut it. The chosen token is
    highlighted; in labels, ␣ is a space and ↵ a newline.

    Args:
        records: the :class:`decoders.trace.StepRecord` of each step (from ``generate(..., trace=True)``).
        path: the PNG file to write (``.png`` is added when it has no suffix).
        title: a title for the figure.

    Returns:
        the path written.
    """
    records = list(records)
    if not records:
        raise DecodersError("nothing to plot: generate at least one step (--steps 1 or more)")
    path = Path(path)
    if path.is_dir():
        raise DecodersError(f"cannot write the plot to '{path}': it is a folder; give a file name such as {path / 'stages.png'}")
    if not path.suffix:
        path = path.with_suffix(".png")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise DecodersError(
            f"plotting needs matplotlib, which could not be imported ({exc}): pip install 'decoders-lab[plots]'"
        ) from exc

    columns = len(records[0].stages)
    figure, axes = plt.subplots(
        len(records), columns, figsize=(3.6 * columns, 3.4 * len(records)), squeeze=False, sharey=True
    )
    for row, record in enumerate(records):
        for axis, stage in zip(axes[row], record.stages):
            labels = [_label(c.token) for c in stage.top]
            colours = ["tab:orange" if c.token_id == record.chosen.token_id else "tab:blue" for c in stage.top]
            axis.bar(range(len(labels)), [c.probability for c in stage.top], color=colours)
            axis.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
            axis.set_title(
                f"step {record.step + 1} · {stage.stage}\n{stage.survivors} tokens, H={stage.entropy:.2f}", fontsize=9
            )
            axis.set_ylim(0, 1)
        axes[row][0].set_ylabel("probability")
    figure.suptitle(title or "top candidates after each stage", fontsize=10)
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=110)
    except OSError as exc:
        raise DecodersError(f"cannot write the plot to '{path}': {exc.strerror}") from exc
    finally:
        plt.close(figure)
    return path
