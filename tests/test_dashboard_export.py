"""Export files are checked as files: magic bytes, pixel size from the DPI, parsable SVG, colours not black."""

from __future__ import annotations

import io
import shutil
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from PIL import Image

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None, reason="kaleido needs Debian chromium")


@pytest.fixture(scope="module")
def figure():
    import streamlit  # noqa: F401  (switches Plotly's default template: exports must not turn black)

    return go.Figure(go.Bar(x=["Male", "Female"], y=[0.8, 0.7], marker_color=None))


def test_png_has_the_requested_size_and_real_colours(figure):
    from dashboard.export import figure_bytes
    from dashboard.style import WIDTHS

    png = figure_bytes(figure, "png", width="single", dpi=192, height=300)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size == (WIDTHS["single"] * 2, 600)
    pixels = np.asarray(image).reshape(-1, 3)
    blue = (np.abs(pixels.astype(int) - [0, 114, 178]).sum(axis=1) < 30).mean()  # first palette colour
    assert blue > 0.02, "bars are not drawn in the paper palette"


def test_svg_and_pdf_are_valid_vector_files(figure):
    from dashboard.export import figure_bytes

    svg = figure_bytes(figure, "svg", width="double")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg") and "Female" in svg.decode()
    pdf = figure_bytes(figure, "pdf")
    assert pdf.startswith(b"%PDF-") and b"%%EOF" in pdf[-1024:]


def test_table_exports_and_zip_of_a_view(figure):
    from dashboard.export import table_csv, table_latex, zip_view

    table = pd.DataFrame({"subgroup": ["Male", "Female"], "auc": [0.8, 0.7]})
    assert table_csv(table).decode().splitlines() == ["subgroup,auc", "Male,0.8", "Female,0.7"]
    latex = table_latex(table, caption="AUC by sex").decode()
    assert "\\toprule" in latex and "Female & 0.70" in latex and "AUC by sex" in latex
    archive = zipfile.ZipFile(io.BytesIO(zip_view({"auc_by_sex": (figure, table)}, formats=("png", "svg"))))
    assert sorted(archive.namelist()) == ["auc_by_sex.csv", "auc_by_sex.png", "auc_by_sex.svg", "auc_by_sex.tex"]


def test_unknown_format_is_refused(figure):
    from dashboard.export import figure_bytes

    with pytest.raises(ValueError, match="unknown figure format"):
        figure_bytes(figure, "gif")
