"""Data sets: GLUE classification tasks and the embedded tweets (RevMUX, SPEC 1.4), text corpora
for language models (SPEC 4, SPEC 6)."""

from depthmux.data.classification import TASK_NAMES, TASKS, ClassificationDataset, load_task, task_name

__all__ = ["TASKS", "TASK_NAMES", "ClassificationDataset", "load_task", "task_name"]
