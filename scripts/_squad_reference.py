"""The Transformers side of ``scripts/bench_finetune.py --task squad``: SQuAD windows, labels and
answer decoding as Hugging Face's ``examples/pytorch/question-answering`` (``run_qa.py``,
``utils_qa.py``) write them, over ``AutoModelForQuestionAnswering``; its own loss (``start_positions``
/ ``end_positions``). Only the scorer is shared with llmkit (``llmkit.metric.qa``, SQuAD's rules).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from bench_finetune import Reference


class SquadReference(Reference):
    def _load_data(self, c: Any) -> dict[str, Any]:
        from llmkit.finetune.tasks import load_task_data

        train_rows = load_task_data("qa", c.data, "train")
        self.eval_rows = load_task_data("qa", c.data, "eval")
        self.allow_null = any(r.is_impossible for r in train_rows)  # run_qa's version_2_with_negative
        self.labels = []
        self.train = self._encode(train_rows, labels=True)
        self.val = self._encode(self.eval_rows, labels=False)
        return {}

    def _auto_class(self, transformers: Any) -> Any:
        return transformers.AutoModelForQuestionAnswering

    def _encode(self, rows: list, labels: bool = True) -> list[dict[str, Any]]:  # type: ignore[override]
        """run_qa's prepare_train_features / prepare_validation_features."""
        tok = self.tokenizer
        enc = tok([r.question.lstrip() for r in rows], [r.context for r in rows], truncation="only_second",
                  max_length=self.max_len, stride=self.c.data.doc_stride, return_overflowing_tokens=True,
                  return_offsets_mapping=True)  # fmt: skip
        out = []
        for i, offsets in enumerate(enc["offset_mapping"]):
            ids, seq = enc["input_ids"][i], enc.sequence_ids(i)
            r = enc["overflow_to_sample_mapping"][i]
            feature: dict[str, Any] = {"input_ids": ids, "token_type_ids": enc["token_type_ids"][i], "record": r,
                                       "offsets": [o if seq[k] == 1 else None for k, o in enumerate(offsets)]}  # fmt: skip
            if labels:
                feature["start_positions"], feature["end_positions"] = self._positions(rows[r], ids, offsets, seq)
            out.append(feature)
        return out

    def _positions(self, rec: Any, ids: list[int], offsets: list, seq: list) -> tuple[int, int]:
        cls = ids.index(self.tokenizer.cls_token_id)
        if not rec.answers:
            return cls, cls
        start_char = rec.answer_starts[0]
        end_char = start_char + len(rec.answers[0])
        s = 0
        while seq[s] != 1:
            s += 1
        e = len(ids) - 1
        while seq[e] != 1:
            e -= 1
        if not (offsets[s][0] <= start_char and offsets[e][1] >= end_char):
            return cls, cls
        while s < len(offsets) and offsets[s][0] <= start_char:
            s += 1
        while offsets[e][1] >= end_char:
            e -= 1
        return s - 1, e + 1

    def _collate(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        T = max(len(e["input_ids"]) for e in examples)
        B = len(examples)
        ids = torch.full((B, T), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        types = torch.zeros((B, T), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[i, :n], mask[i, :n] = torch.tensor(e["input_ids"]), 1
            types[i, :n] = torch.tensor(e["token_type_ids"])
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        if "start_positions" in examples[0]:
            batch["start_positions"] = torch.tensor([e["start_positions"] for e in examples])
            batch["end_positions"] = torch.tensor([e["end_positions"] for e in examples])
        return batch

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        from llmkit.metric.qa import QAMetrics

        self.model.eval()
        size = 2 * self.batch_size
        features: dict[int, list] = {}
        for i in range(0, len(self.val), size):
            chunk = self.val[i : i + size]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                out = self.model(**self._collate(chunk))
            for row, f in enumerate(chunk):
                n = len(f["input_ids"])
                start, end = out.start_logits[row, :n].float().numpy(), out.end_logits[row, :n].float().numpy()
                features.setdefault(f["record"], []).append((start, end, f["offsets"]))
        self.model.train()
        metrics = QAMetrics()
        for r, rec in enumerate(self.eval_rows):
            metrics.update(self._answer(features.get(r, []), rec.context), rec.answers)
        result = metrics.compute()
        return {k: v for k, v in result.items() if not k.endswith("total")}

    def _answer(self, feats: list, context: str) -> str:
        """utils_qa.postprocess_qa_predictions for one example."""
        obj = self.c.objective
        n_best, max_len, threshold = obj["n_best"], obj["max_answer_len"], obj["null_score_diff_threshold"]
        prelim, null = [], None
        for start, end, offsets in feats:
            score = float(start[0] + end[0])
            if null is None or null > score:
                null = score
            for s in np.argsort(start)[-1 : -n_best - 1 : -1].tolist():
                for e in np.argsort(end)[-1 : -n_best - 1 : -1].tolist():
                    if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None:
                        continue
                    if e < s or e - s + 1 > max_len:
                        continue
                    prelim.append((float(start[s] + end[e]), offsets[s][0], offsets[e][1]))
        best = sorted(prelim, reverse=True)[:n_best]
        if not best:
            return ""
        text = context[best[0][1] : best[0][2]]
        if self.allow_null and null is not None and null - best[0][0] > threshold:
            return ""
        return text
