"""Metrics, reports and plots for trained DuST models."""

from .metrics import ClassificationReport, classification_report

__all__ = ["ClassificationReport", "classification_report"]
