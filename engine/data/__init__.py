"""Cohort layer: dataset readers, splits, label policies, evaluation subsets, image cache, synthetic data.

Everything here runs with the app requirements alone (no torch).
"""
