"""Charts as PNG bytes, through matplotlib's object-oriented API: a Figure on the Agg canvas, so
no pyplot state is shared and no display is needed."""

import io
from typing import Tuple

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["new_figure", "png_bytes"]


def new_figure(figsize: Tuple[float, float]) -> Figure:
    """An empty figure of ``figsize`` inches, drawn by the Agg canvas."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as a PNG file's bytes, laid out tightly."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
