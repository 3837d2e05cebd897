"""Few-shot / cloze accuracy through lm-evaluation-harness, offline (issue 19: ``depthmux lm eval --tasks``).

:func:`write_task_folder` writes local lm-eval tasks (YAML with ``dataset_path: json`` and JSONL data
files, nothing downloaded) built from data available here:

* ``depthmux_sst2``: GLUE SST-2 as multiple choice (``Review: {sentence}\\nSentiment:`` ->
  `` negative`` / `` positive``), evaluated on the 872 dev sentences, few-shot examples drawn from our
  training split of train (default 4 shots; lm-eval's seeded sampler);
* ``depthmux_cloze_shakespeare``, ``depthmux_cloze_kjv``: last-word cloze (LAMBADA-style: accuracy =
  the target word is the greedy continuation, and perplexity of the target) on passages from the
  *held-out* documents of the LM runs' split (:mod:`depthmux.data.cloze`), zero-shot.

:func:`run_fewshot_eval` loads the model through :class:`depthmux.lm.harness.DepthmuxHarnessLM`
(registered in lm-eval as ``"depthmux"``) and runs ``lm_eval.simple_evaluate`` on those tasks.
Needs the ``eval`` extra (``lm_eval``); without it, one line says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from depthmux.data.classification import load_task
from depthmux.data.cloze import cloze_passages, held_out_documents
from depthmux.errors import DepthmuxError
from depthmux.utils.checks import check_int, check_seed

SST2_TASK = "depthmux_sst2"
CLOZE_TASKS = {"depthmux_cloze_shakespeare": "shakespeare", "depthmux_cloze_kjv": "kjv"}
FEWSHOT_TASKS = (SST2_TASK, *CLOZE_TASKS)
SST2_FEWSHOT_POOL = 2000
"""Few-shot examples are drawn from the first this-many sentences of our train split (a smaller file)."""


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _yaml(fields: dict[str, Any]) -> str:
    """YAML for a flat task config: every value JSON-encoded (JSON is YAML), nested dicts as JSON too."""
    return "".join(f"{k}: {json.dumps(v, ensure_ascii=False)}\n" for k, v in fields.items())


def write_task_folder(
    folder: str | os.PathLike,
    tasks: tuple[str, ...] = FEWSHOT_TASKS,
    data_dir: str | os.PathLike | None = None,
    max_passages: int = 500,
    holdout: float = 0.1,
    seed: int = 0,
) -> Path:
    """Write the YAML + JSONL of ``tasks`` into ``folder`` (see the module docstring); returns it."""
    unknown = [t for t in tasks if t not in FEWSHOT_TASKS]
    if unknown:
        raise DepthmuxError(f"unknown task {unknown[0]!r}: choose from {', '.join(FEWSHOT_TASKS)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if SST2_TASK in tasks:
        dev = load_task("sst2", "dev", data_dir)
        train = load_task("sst2", "train", data_dir)
        _write_jsonl(
            folder / "sst2_dev.jsonl", [{"sentence": t, "label": y} for t, y in zip(dev.texts, dev.labels, strict=True)]
        )
        pool = [{"sentence": t, "label": y} for t, y in zip(train.texts, train.labels, strict=True)][:SST2_FEWSHOT_POOL]
        _write_jsonl(folder / "sst2_train.jsonl", pool)
        cfg = {
            "task": SST2_TASK,
            "dataset_path": "json",
            "dataset_kwargs": {
                "data_files": {"train": str(folder / "sst2_train.jsonl"), "validation": str(folder / "sst2_dev.jsonl")}
            },
            "output_type": "multiple_choice",
            "training_split": "train",
            "validation_split": "validation",
            "fewshot_split": "train",
            "num_fewshot": 4,
            "doc_to_text": "Review: {{sentence}}\nSentiment:",
            "doc_to_choice": ["negative", "positive"],
            "doc_to_target": "label",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0},
        }
        (folder / f"{SST2_TASK}.yaml").write_text(_yaml(cfg), encoding="utf-8")
    for task, corpus in CLOZE_TASKS.items():
        if task not in tasks:
            continue
        rows = cloze_passages(held_out_documents(corpus, holdout, seed), max_passages=max_passages)
        if not rows:
            raise DepthmuxError(f"no cloze passages in the held-out documents of {corpus}")
        _write_jsonl(folder / f"{task}.jsonl", rows)
        cfg = {
            "task": task,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(folder / f"{task}.jsonl")}},
            "output_type": "loglikelihood",
            "test_split": "test",
            "doc_to_text": "{{context}}",
            "doc_to_target": "{{target}}",
            "target_delimiter": "",
            "metric_list": [
                {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            ],
            "metadata": {"version": 1.0, "corpus": corpus, "holdout": holdout, "seed": seed},
        }
        (folder / f"{task}.yaml").write_text(_yaml(cfg), encoding="utf-8")
    return folder


@dataclass
class FewshotEvalConfig:
    """``depthmux lm eval --tasks``: which model, tasks and how many examples (``limit`` per task)."""

    model: str = "smollm2"
    tasks: tuple[str, ...] = FEWSHOT_TASKS
    num_fewshot: int | None = None
    limit: int | None = None
    batch_size: int = 8
    exit: str = "deep"
    data_dir: str | None = None
    max_passages: int = 500
    seed: int = 0

    def validate(self) -> FewshotEvalConfig:
        if not self.tasks:
            raise DepthmuxError("--tasks is empty: choose from " + ", ".join(FEWSHOT_TASKS))
        unknown = [t for t in self.tasks if t not in FEWSHOT_TASKS]
        if unknown:
            raise DepthmuxError(f"unknown task {unknown[0]!r}: choose from {', '.join(FEWSHOT_TASKS)}")
        check_int("--num-fewshot", self.num_fewshot, 0, allow_none=True)
        check_int("--limit", self.limit, 1, allow_none=True)
        check_int("--batch-size", self.batch_size, 1)
        check_int("--max-passages", self.max_passages, 1)
        check_seed("--seed", self.seed)
        if self.exit not in ("deep", "shallow"):
            raise DepthmuxError(f"--exit must be deep or shallow, got {self.exit!r}")
        return self


def harness_available() -> None:
    """One line when the ``eval`` extra is missing."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise DepthmuxError("few-shot tasks need lm-evaluation-harness: pip install 'depthmux[eval]'") from None


def run_fewshot_eval(cfg: FewshotEvalConfig, model=None, tokenizer=None) -> dict[str, Any]:
    """Evaluate ``cfg.model`` (or a given ``model`` + ``tokenizer``) on the local tasks. Returns
    ``{"model", "tasks": {task: {metric: value, metric_stderr: ...}}, "n_samples", "seconds", ...}``."""
    cfg.validate()
    harness_available()
    import lm_eval
    from lm_eval.tasks import TaskManager

    from depthmux.lm.harness import DepthmuxHarnessLM

    lm = DepthmuxHarnessLM(
        pretrained=cfg.model, batch_size=cfg.batch_size, exit=cfg.exit, model=model, tokenizer=tokenizer
    )
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="depthmux-tasks-") as tmp:
        folder = write_task_folder(tmp, tuple(cfg.tasks), cfg.data_dir, cfg.max_passages, seed=cfg.seed)
        manager = TaskManager(include_path=str(folder), include_defaults=False)
        with contextlib.redirect_stdout(sys.stderr):  # lm-eval prints progress notes; stdout is the caller's
            res = lm_eval.simple_evaluate(
                model=lm,
                tasks=list(cfg.tasks),
                num_fewshot=cfg.num_fewshot,
                limit=cfg.limit,
                task_manager=manager,
                bootstrap_iters=1000,
                log_samples=False,
                random_seed=cfg.seed,
                numpy_random_seed=cfg.seed,
                torch_random_seed=cfg.seed,
                fewshot_random_seed=cfg.seed,
            )
    tasks = {}
    for name, metrics in res["results"].items():
        tasks[name] = {k.split(",")[0]: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "alias"}
    return {
        "model": cfg.model if model is None else type(model).__name__,
        "exit": cfg.exit,
        "tasks": tasks,
        "n_samples": {k: v.get("effective", v) for k, v in (res.get("n-samples") or {}).items()},
        "num_fewshot": res.get("n-shot", {}),
        "limit": cfg.limit,
        "seconds": time.time() - t0,
    }
