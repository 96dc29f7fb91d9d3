"""fmfair dashboard (Streamlit + Plotly). Imports neither torch nor timm; its only inputs are the results store."""
