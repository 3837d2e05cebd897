"""Data sets: GLUE classification tasks, the embedded tweets task, text corpora for LMs."""

from depthmux.data.classification import ClassificationDataset, TASKS, load_task

__all__ = ["ClassificationDataset", "TASKS", "load_task"]
