"""Paper styling shared by every chart: template, fonts, widths, a colour-blind-safe palette, stable model colours.

Figures always name their template, because ``import streamlit`` switches Plotly's default template to one whose
placeholder colours export as black (shared/notes/stack.md section 2).
"""

from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio

# Okabe & Ito (2008) colour-blind-safe palette, without black (kept for text).
PALETTE: tuple[str, ...] = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442",
                            "#999999")
FONT_FAMILY = "Liberation Sans, Arial, Helvetica, sans-serif"  # Liberation Sans is installed with the CI fonts

# Widths in pixels at 96 dpi-equivalent layout units: a single column of a two-column paper is ~3.5 in.
WIDTHS = {"single": 504, "double": 1040, "screen": 900}
FONT_SIZES = {"single": 11, "double": 12, "screen": 13}

# Fixed order of the paper's models, so each keeps its colour on every page and in every export.
MODEL_ORDER: tuple[str, ...] = ("mae", "medical-mae", "moco-v3", "medical-moco-v3", "bit", "remedis",
                                "scratch-vit", "scratch-resnet")
TEMPLATE_NAME = "fmfair_paper"


def _template() -> go.layout.Template:
    return go.layout.Template(layout=go.Layout(
        font=dict(family=FONT_FAMILY, size=FONT_SIZES["screen"], color="#222222"),
        colorway=list(PALETTE), paper_bgcolor="white", plot_bgcolor="white",
        xaxis=dict(showline=True, linecolor="#444444", ticks="outside", gridcolor="#EEEEEE", zeroline=False),
        yaxis=dict(showline=True, linecolor="#444444", ticks="outside", gridcolor="#EEEEEE", zeroline=False),
        legend=dict(bgcolor="rgba(255,255,255,0.8)"), margin=dict(l=60, r=20, t=50, b=50),
    ))


pio.templates[TEMPLATE_NAME] = _template()


def model_colour(key: str, known: tuple[str, ...] = MODEL_ORDER) -> str:
    """Stable colour per model (paper models first, then any other name by a stable hash)."""
    if key in known:
        return PALETTE[known.index(key) % len(PALETTE)]
    return PALETTE[sum(key.encode()) % len(PALETTE)]


def colour_map(keys: list[str]) -> dict[str, str]:
    """Colours for a list of model or run keys."""
    return {key: model_colour(key) for key in keys}


def apply_paper_layout(fig: go.Figure, *, width: str = "screen", height: int | None = None) -> go.Figure:
    """Set the paper template, font size and width preset ('single', 'double' or 'screen')."""
    fig.update_layout(template=TEMPLATE_NAME, width=WIDTHS[width], height=height,
                      font=dict(size=FONT_SIZES[width], family=FONT_FAMILY))
    return fig
