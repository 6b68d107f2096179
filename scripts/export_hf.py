"""Export an llmkit checkpoint as a Hugging Face model directory (the code of ``llmkit export``).

    python scripts/export_hf.py runs/gpt/checkpoints/step_0005000 exported/gpt
    python scripts/export_hf.py runs/gpt exported/gpt --dtype bfloat16     # a run dir: its newest checkpoint
    python scripts/export_hf.py hf:models/bert exported/bert-copy           # HF -> llmkit -> HF round trip

is ``llmkit export checkpoint=CKPT out_dir=OUT [dtype=...] [include_tokenizer=false] [verify=false]
[overwrite=true]`` without the run record; see ``llmkit.recipes.export``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="llmkit checkpoint or run directory, or hf:DIR")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                        help="weights dtype in the export (default: as stored)")  # fmt: skip
    parser.add_argument("--no-tokenizer", action="store_true", help="do not write tokenizer files")
    parser.add_argument("--no-verify", action="store_true", help="skip re-importing and comparing logits")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT_DIR")
    args = parser.parse_args(argv)

    from llmkit.errors import LlmkitError
    from llmkit.recipes.export import Config, export

    c = Config(out_dir=str(args.out_dir), checkpoint=args.checkpoint, dtype=args.dtype,
               include_tokenizer=not args.no_tokenizer, verify=not args.no_verify, overwrite=args.overwrite)  # fmt: skip
    try:
        export(c)
    except LlmkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
