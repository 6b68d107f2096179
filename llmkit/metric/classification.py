"""Classification metrics from a running confusion matrix.

    m = ClassificationMetrics(["negative", "positive"])
    for batch in loader:
        m.update(logits.argmax(-1), batch["labels"])
    scores = m.compute()          # accuracy, macro/micro/weighted P/R/F1, per-class table
    Console().print(m.table())

The only state is a K x K int64 confusion matrix (rows = true label, columns = predicted label),
so memory does not grow with the number of examples and two partial results (two data shards,
two DDP ranks) combine exactly by adding their matrices (``merge``).

Definitions follow scikit-learn's ``precision_recall_fscore_support(labels=range(K),
zero_division=0)``: a ratio whose denominator is zero is 0; F1 is 2TP / (2TP + FP + FN); macro
averages the per-class values over all K labels (also those never seen), weighted averages them by
support, micro pools TP/FP/FN over classes (for single-label data micro P = R = F1 = accuracy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from rich.markup import escape
from rich.table import Table

from llmkit.data.masking import IGNORE_INDEX  # padding / unlabelled positions


def _div(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def _as_long(x: Sequence[int] | torch.Tensor, name: str) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    if t.numel() == 0:  # torch.as_tensor([]) is float32
        return t.reshape(-1).to(torch.int64)
    if t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must hold integer class indices, got dtype {t.dtype} (take argmax of logits first)")
    return t.reshape(-1).to(torch.int64)


class ClassificationMetrics:
    """Accuracy and precision/recall/F1 (per class, macro, micro, weighted) of a K-class task."""

    def __init__(self, labels: Sequence[str], *, ignore_index: int | None = IGNORE_INDEX) -> None:
        labels = [str(label) for label in labels]
        if not labels:
            raise ValueError("ClassificationMetrics needs at least one label")
        if len(set(labels)) != len(labels):
            raise ValueError(f"duplicate label names: {labels}")
        self.labels = labels
        self.ignore_index = ignore_index
        k = len(labels)
        self._cm = torch.zeros(k, k, dtype=torch.int64)  # (K_true, K_pred)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def reset(self) -> None:
        self._cm.zero_()

    def update(self, preds: Sequence[int] | torch.Tensor, targets: Sequence[int] | torch.Tensor) -> None:
        """Add a batch of predicted and true class indices (any shape; flattened; same length).

        Positions whose target equals ``ignore_index`` are skipped. Works on any device: the
        counting runs where the tensors are and only the K*K counts come back to the CPU.
        """
        p, t = _as_long(preds, "preds"), _as_long(targets, "targets")
        if p.numel() != t.numel():
            raise ValueError(f"preds has {p.numel()} elements but targets has {t.numel()}")
        p = p.to(t.device)
        if self.ignore_index is not None:
            keep = t != self.ignore_index
            p, t = p[keep], t[keep]
        if t.numel() == 0:
            return
        k = self.num_classes
        for name, v in (("preds", p), ("targets", t)):
            lo, hi = int(v.min()), int(v.max())
            if lo < 0 or hi >= k:
                bad = lo if lo < 0 else hi
                raise ValueError(f"{name} contains class index {bad}, outside [0, {k}) for labels {self.labels}")
        # one bincount over the flattened (true, pred) cell index: (N,) -> (K*K,) -> (K, K)
        counts = torch.bincount(t * k + p, minlength=k * k).reshape(k, k)
        self._cm += counts.cpu()

    def merge(self, other: ClassificationMetrics) -> None:
        """Add another accumulator's counts (same labels) into this one."""
        if other.labels != self.labels:
            raise ValueError(f"cannot merge metrics over different labels: {self.labels} vs {other.labels}")
        self._cm += other._cm

    def confusion_matrix(self) -> torch.Tensor:
        """A copy of the (K_true, K_pred) int64 count matrix."""
        return self._cm.clone()

    def state_dict(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "confusion_matrix": self._cm.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["labels"]) != self.labels:
            raise ValueError(f"state is for labels {state['labels']}, not {self.labels}")
        self._cm = torch.as_tensor(state["confusion_matrix"], dtype=torch.int64).clone()

    def compute(self) -> dict[str, Any]:
        """Scores as plain Python numbers (JSON-ready).

        Keys: ``n``, ``accuracy``, ``{macro,micro,weighted}_{precision,recall,f1}`` and
        ``per_class`` = ``{label: {precision, recall, f1, support}}``.
        """
        cm = self._cm.tolist()
        k = self.num_classes
        tp = [cm[i][i] for i in range(k)]
        support = [sum(cm[i]) for i in range(k)]  # row sums: true count per class
        predicted = [sum(cm[i][j] for i in range(k)) for j in range(k)]  # column sums
        n = sum(support)
        per_class: dict[str, dict[str, float | int]] = {}
        for i, label in enumerate(self.labels):
            fp, fn = predicted[i] - tp[i], support[i] - tp[i]
            per_class[label] = {
                "precision": _div(tp[i], predicted[i]),
                "recall": _div(tp[i], support[i]),
                "f1": _div(2 * tp[i], 2 * tp[i] + fp + fn),
                "support": support[i],
            }
        out: dict[str, Any] = {"n": n, "accuracy": _div(sum(tp), n)}
        for key in ("precision", "recall", "f1"):
            vals = [per_class[label][key] for label in self.labels]
            out[f"macro_{key}"] = sum(vals) / k
        # micro: pooled over classes; sum(TP) / sum(predicted) and sum(TP) / sum(support)
        tp_all, pred_all = sum(tp), sum(predicted)
        out["micro_precision"] = _div(tp_all, pred_all)
        out["micro_recall"] = _div(tp_all, n)
        out["micro_f1"] = _div(2 * tp_all, pred_all + n)
        for key in ("precision", "recall", "f1"):
            out[f"weighted_{key}"] = _div(sum(per_class[lb][key] * support[i] for i, lb in enumerate(self.labels)), n)
        out["per_class"] = per_class
        return out

    def table(self, *, title: str | None = "classification", digits: int = 4) -> Table:
        """Per-class precision/recall/F1/support, then accuracy and the three averages."""
        s = self.compute()
        t = Table(title=title)
        t.add_column("label")
        for col in ("precision", "recall", "f1", "support"):
            t.add_column(col, justify="right")
        f = f"{{:.{digits}f}}"
        for label, row in s["per_class"].items():
            scores = (f.format(row[k]) for k in ("precision", "recall", "f1"))
            t.add_row(escape(label), *scores, f"{row['support']:,}")
        t.add_section()
        t.add_row("accuracy", "", "", f.format(s["accuracy"]), f"{s['n']:,}")
        for avg in ("macro", "micro", "weighted"):
            t.add_row(
                f"{avg} avg",
                f.format(s[f"{avg}_precision"]),
                f.format(s[f"{avg}_recall"]),
                f.format(s[f"{avg}_f1"]),
                f"{s['n']:,}",
            )
        return t

    def confusion_table(self, *, title: str | None = "confusion matrix") -> Table:
        """The confusion matrix as a rich table (rows: true label, columns: predicted); diagonal bold."""
        t = Table(title=title, caption="rows: true, columns: predicted")
        t.add_column("true \\ pred")
        for label in self.labels:
            t.add_column(escape(label), justify="right")
        for i, label in enumerate(self.labels):
            row = self._cm[i].tolist()
            t.add_row(escape(label), *(f"[bold]{v:,}[/bold]" if i == j else f"{v:,}" for j, v in enumerate(row)))
        return t

    def __repr__(self) -> str:
        return f"ClassificationMetrics(labels={self.labels}, n={int(self._cm.sum())})"
