"""``llmkit tokenize data.tasks=N``: a corpus tokenized as N independent tasks, then merged.

    llmkit tokenize out_dir=D data.tasks=N workers=W       plan, run the tasks not done yet
                                                            (W local processes), merge
    llmkit tokenize out_dir=D data.tasks=N step=plan        train the tokenizer, write the plan
    llmkit tokenize -m out_dir=D/jobs dataset_dir=D data.tasks=N step=task 'data.task_index=range(0,N)'
                                                            one task per job (hydra/launcher=slurm:
                                                            a SLURM job array through submitit)
    llmkit tokenize out_dir=D data.tasks=N step=merge       meta.json from the tasks' (no token copy)

The plan and the task outputs: ``llmkit.data.shard_plan`` and ``llmkit.data.shard_tasks``. A task that
is done (its meta.json, shard sizes and checksums check out) is skipped, so re-running the same
command after a crash runs only the tasks that did not finish.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llmkit.data.shard_plan import (
    PLAN_FILE,
    Piece,
    check_task_config,
    fingerprint,
    plan_dir,
    plan_tasks,
    read_plan,
    task_dir,
    text_split,
    write_plan,
)
from llmkit.data.shard_tasks import merge, run_task, task_state
from llmkit.errors import ConfigError, DataError
from llmkit.recipes.tokenize_setup import Config, build_tokenizer, check_space, summarize

log = logging.getLogger(__name__)


def tokenize_tasks(c: Config) -> dict:
    """``c.step`` of the task tokenization of ``c.data`` into ``c.dataset_dir or c.out_dir``."""
    import llmkit.tokenizer
    from llmkit.data.corpus import Corpus

    problems = check_task_config(c.data)
    if not c.data.tasks:
        problems.append(f"step={c.step}: needs data.tasks=N (the number of tasks)")
    if (c.step == "task") != (c.data.task_index is not None):
        problems.append("data.task_index: set it with step=task (the task to run), and only then")
    if problems:
        raise ConfigError(problems)
    t0 = time.perf_counter()
    corpus = Corpus(c.data, data_root=c.data_root)  # missing paths, binary files, empty files: fail now
    out = Path(c.dataset_dir or c.out_dir)
    reused = llmkit.tokenizer.load(c.tokenizer.path).checksum() if c.tokenizer.path else ""
    fp = fingerprint(c.data, c.tokenizer, c.seed, corpus.sources, reused)
    plan = plan_dir(out, fp)
    if c.step in ("all", "plan"):
        _ensure_plan(c, corpus, plan, fp)
    elif not (plan / PLAN_FILE).is_file():
        raise DataError(
            f"{plan}: no task plan for this corpus and config in {out} (a changed file or option makes a new "
            f"plan). Run `llmkit tokenize {'dataset_dir' if c.dataset_dir else 'out_dir'}={out} "
            f"data.tasks={c.data.tasks} step=plan` (with the same options) first."
        )
    _, tasks = read_plan(plan)
    if c.step == "plan":
        return _say({"step": "plan", "plan": str(plan), "tasks": len(tasks)}, f"plan: {len(tasks)} tasks in {plan}")
    args: dict[str, Any] = {"plan": plan, "fingerprint": fp, "cfg": c.data, "data_root": c.data_root, "seed": c.seed}
    if c.step == "task":
        k = int(c.data.task_index)  # type: ignore[arg-type]
        why = task_state(task_dir(plan, k), fp, checksums=True)
        if why is None:
            return _say({"step": "task", "task": k, "ran": False}, f"task {k}: done before, skipped")
        meta = run_task(k, tasks[k], workers=c.workers or 1, **args)
        tokens = sum(meta["splits"][s]["tokens"] for s in meta["splits"])
        return _say({"step": "task", "task": k, "ran": True, "tokens": tokens}, f"task {k}: {tokens:,} tokens")
    ran: list[int] = []
    text = 0  # bytes of text encoded now
    t_enc = time.perf_counter()
    if c.step == "all":
        ran, text = _run_local(tasks, c, args)
    t_enc = time.perf_counter() - t_enc
    meta = merge(out, plan, len(tasks), _extra(c))
    mb_per_s = round(text / 1e6 / max(t_enc, 1e-9), 3) if ran else 0.0
    seconds = {"encode": t_enc, "total": time.perf_counter() - t0}
    summary = summarize(c, out, meta, corpus, seconds, mb_per_s)
    summary["tasks"] = {"count": len(tasks), "ran": ran, "skipped": [k for k in range(len(tasks)) if k not in ran]}
    return summary


def _say(summary: dict, text: str) -> dict:
    from rich.console import Console

    Console().print(text)
    return summary


def _ensure_plan(c: Config, corpus: Any, plan: Path, fp: str) -> None:
    """Write ``plan`` (the tokenizer and plan.json) unless it exists; staged, then renamed into place."""
    if (plan / PLAN_FILE).is_file():
        log.info("reusing the task plan in %s", plan)
        return
    docs = ((text_split(c.seed, s.role, d, c.data.val_fraction), d) for s, d in corpus.documents())
    tok, tokens_per_byte = build_tokenizer(c, corpus, docs)
    plan.parent.mkdir(parents=True, exist_ok=True)
    check_space(corpus, tok, tokens_per_byte, plan.parent)
    staged = Path(tempfile.mkdtemp(prefix=f".{plan.name}.", suffix=".tmp", dir=plan.parent))
    try:
        tok.save(staged / "tokenizer")
        tasks = plan_tasks(corpus.sources, c.data, c.data.tasks)
        write_plan(staged, fp, corpus.sources, tasks, {"kind": tok.kind, "checksum": tok.checksum()})
        shutil.rmtree(plan, ignore_errors=True)  # a plan folder without plan.json: an interrupted plan step
        os.replace(staged, plan)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _run_local(tasks: list[list[Piece]], c: Config, args: dict) -> tuple[list[int], int]:
    """Run the tasks that are not done, ``c.workers`` local processes at a time; return their indices
    and the bytes of text they encoded.
    Every task runs even if one fails; then the first failure is raised (re-running runs only those)."""
    from llmkit.data.encoding import _start_method, default_workers
    from llmkit.progress import progress

    todo = []
    for k in range(len(tasks)):
        why = task_state(task_dir(args["plan"], k), args["fingerprint"], checksums=True)
        if why is not None:
            log.info("task %d: %s; running it", k, why)
            todo.append(k)
    workers = min(c.workers or default_workers(), len(todo))
    errors = []
    text = 0
    with progress("tasks", total=len(todo), unit="items", label="tasks", enabled=c.progress) as bar:
        if workers <= 1:
            for k in todo:
                try:
                    text += run_task(k, tasks[k], **args)["encode"]["text_bytes"]
                except Exception as e:  # the other tasks go on; this one runs again next time
                    errors.append((k, e))
                bar.update(1)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed
            from concurrent.futures.process import BrokenProcessPool

            # a task process that dies (kill -9, out of memory) fails the tasks still running or
            # queued in the pool, never hangs the others' results
            with ProcessPoolExecutor(workers, mp_context=mp.get_context(_start_method())) as pool:
                futures = {pool.submit(run_task, k, tasks[k], **args): k for k in todo}
                for future in as_completed(futures):
                    k = futures[future]
                    try:
                        text += future.result()["encode"]["text_bytes"]
                    except BrokenProcessPool:
                        errors.append((k, DataError(f"task {k}: its process died (killed?); run the command again")))
                    except Exception as e:
                        errors.append((k, e))
                    bar.update(1)
    errors.sort(key=lambda e: e[0])
    if errors:
        failed = ", ".join(str(k) for k, _ in errors)
        log.error("task(s) %s failed; the others are done: the same command runs only the failed ones", failed)
        raise errors[0][1]
    return todo, text


def _extra(c: Config) -> dict:
    import llmkit

    return {
        "doc_separator": c.data.doc_separator,
        "split": {
            "method": "val_paths" if c.data.val_paths else "text_hash",
            "val_fraction": c.data.val_fraction,
            "seed": c.seed,
        },
        "seed": c.seed,
        "data": dataclasses.asdict(c.data),
        "tokenizer_config": dataclasses.asdict(c.tokenizer),
        "tokenizer_reused_from": c.tokenizer.path,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "llmkit_version": llmkit.__version__,
    }
