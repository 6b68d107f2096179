"""How a user error reaches the shell: a red box with the message, exit status 2, no traceback
(unless ``--debug`` or ``LLMKIT_DEBUG=1``). Used by the CLI and by the job runner alike.

Messages that quote a library's exception are cleaned of advice that does not apply to llmkit:
PyTorch's "re-run torch.load with weights_only=False" would mean running code from the file,
which llmkit never does (see DESIGN.md: nothing is unpickled from a file a user did not create).
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, NoReturn

from llmkit.errors import LlmkitError

# PyTorch's weights-only refusal: its facts stay (what was refused), its advice goes.
_TORCH_ADVICE = [
    re.compile(p, re.DOTALL)
    for p in (
        r"This file can still be loaded, to do so you have two options,.*?from a trusted source\.",
        r"\(2\) Alternatively, to load with `weights_only=True`.*?in the following error message\.",
        r"Please use `torch\.serialization\.add_safe_globals.*?if you trust this class/function\.",
        r"Check the documentation of torch\.load to learn more.*?https://\S+",
    )
]
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def debug_enabled() -> bool:
    return os.environ.get("LLMKIT_DEBUG", "") not in ("", "0", "false")


def clean_message(text: str) -> str:
    """``text`` without terminal escapes and without PyTorch's advice to load with ``weights_only=False``."""
    text = _ANSI.sub("", text)
    if "Weights only load failed" not in text:
        return text
    for advice in _TORCH_ADVICE:
        text = advice.sub("", text)
    text = text.replace(
        "Weights only load failed.",
        "it holds Python objects beyond tensors and plain data, "
        "which llmkit never unpickles (was it written by llmkit?).",
    )
    return re.sub(r"[ \t]*\n[\s]*", " ", text).strip()


def console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _rank() -> int:
    """This process's rank under torchrun (0 when not launched by it)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def report(err: BaseException) -> None:
    """Print ``err`` in a red box on stderr; under torchrun, ranks other than 0 print one line
    (``[rank N] llmkit: Kind: first line``), so a job's error is one box, not one per rank."""
    from rich.console import Console
    from rich.panel import Panel

    if (rank := _rank()) > 0:
        first = clean_message(str(err)).strip().splitlines()[0] if str(err).strip() else ""
        print(f"[rank {rank}] llmkit: {type(err).__name__}: {first}", file=sys.stderr, flush=True)
        return
    Console(stderr=True).print(
        Panel(clean_message(str(err)), title=f"llmkit: {type(err).__name__}", border_style="red", expand=False),
        markup=False,
    )


def fail(err: LlmkitError) -> NoReturn:
    """Report a user error without a traceback (unless debugging) and exit with status 2."""
    if debug_enabled():
        raise err
    report(err)
    raise SystemExit(2) from None
