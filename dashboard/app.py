"""fmfair dashboard frame: page config, the shared sidebar filters, the synthetic-data banner and the navigation.

Run from the repository root: ``python -m streamlit run dashboard/app.py`` (the demo store first:
``python -m dashboard.demo_store``). Pages live in dashboard/views/ and read the filters through
dashboard.context.current_filters().
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run dashboard/app.py` puts only dashboard/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard.sidebar import draw_sidebar  # noqa: E402

VIEWS = Path(__file__).resolve().parent / "views"
# section -> (file in views/, title, icon, url path); pages whose file is absent are left out of the menu
SECTIONS: dict[str, list[tuple[str, str, str, str]]] = {
    "Results": [
        ("overview.py", "Overview", ":material/bar_chart:", "overview"),
        ("subgroups.py", "Subgroups", ":material/groups:", "subgroups"),
        ("pathologies.py", "Pathologies", ":material/grid_on:", "pathologies"),
    ],
    "Studies": [
        ("ensembles.py", "Ensembles", ":material/hub:", "ensembles"),
        ("pretraining.py", "Pre-training", ":material/model_training:", "pretraining"),
        ("finetuning.py", "Fine-tuning", ":material/tune:", "finetuning"),
        ("thresholds.py", "Thresholds", ":material/rule:", "thresholds"),
    ],
    "Data": [
        ("cohort.py", "Cohort", ":material/diversity_3:", "cohort"),
        ("data_page.py", "Data", ":material/database:", "data"),
    ],
}
SYNTHETIC_BANNER = ("**SYNTHETIC DEMO DATA** — these runs are simulated with planted effects "
                    "(engine/metrics/synth_predictions.py); they are not results of any model.")


def pages() -> dict[str, list]:
    """st.Page objects of every existing view, by section (Overview is the default page)."""
    out = {}
    for section, entries in SECTIONS.items():
        found = [st.Page(f"views/{file}", title=title, icon=icon, url_path=url, default=file == "overview.py")
                 for file, title, icon, url in entries if (VIEWS / file).is_file()]
        if found:
            out[section] = found
    return out


st.set_page_config(page_title="fmfair · fairness of medical-imaging foundation models", page_icon=":material/balance:",
                   layout="wide")
navigation = st.navigation(pages())
status = draw_sidebar()
if status.synthetic:
    st.warning(SYNTHETIC_BANNER, icon=":material/science:")
navigation.run()
