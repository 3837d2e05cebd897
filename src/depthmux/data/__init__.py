"""Data sets: GLUE classification tasks and the embedded tweets (RevMUX, SPEC 1.4), a user's own
labelled files (CSV, TSV, JSON lines, Parquet), text corpora for language models (SPEC 4, SPEC 6)."""

from depthmux.data.classification import (
    TASK_NAMES,
    TASKS,
    ClassificationDataset,
    load_task,
    task_label_names,
    task_name,
)
from depthmux.data.user_files import UserDataSpec, load_user_file, load_user_splits

__all__ = [
    "TASKS",
    "TASK_NAMES",
    "ClassificationDataset",
    "UserDataSpec",
    "load_task",
    "load_user_file",
    "load_user_splits",
    "task_label_names",
    "task_name",
]
