"""Export an llmkit checkpoint as a Hugging Face model directory.

    python scripts/export_hf.py runs/gpt/checkpoints/step_0005000 exported/gpt
    python scripts/export_hf.py runs/gpt exported/gpt --dtype bfloat16     # a run dir: its newest checkpoint
    python scripts/export_hf.py hf:models/bert exported/bert-copy           # HF -> llmkit -> HF round trip

then, with transformers installed::

    AutoModelForCausalLM.from_pretrained("exported/gpt"); AutoTokenizer.from_pretrained("exported/gpt")

Writes ``config.json`` + ``model.safetensors`` and the tokenizer files (``--no-tokenizer`` leaves
them out, e.g. for a char tokenizer, which has no Hugging Face form). Afterwards the directory
is read back through llmkit's own importer and its logits are compared with the checkpoint's on
a random batch (``--no-verify`` skips this), so a bad export fails here rather than in transformers.
Fine-tuned LoRA models must be merged before export (the checkpoint llmkit finetune writes is).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="llmkit checkpoint or run directory, or hf:DIR")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                        help="weights dtype in the export (default: as stored)")  # fmt: skip
    parser.add_argument("--no-tokenizer", action="store_true", help="do not write tokenizer files")
    parser.add_argument("--no-verify", action="store_true", help="skip re-importing and comparing logits")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    args = parser.parse_args(argv)

    from llmkit import hf, loading
    from llmkit.errors import LlmkitError
    from llmkit.hf import export_hf, load_hf
    from llmkit.model import ModelConfig

    try:
        if hf.is_hf_ref(args.checkpoint):
            model, meta = hf.load_model(args.checkpoint)
        else:
            model, meta = loading.load_model(args.checkpoint)
        config = ModelConfig.from_dict(meta["model_config"])
        tokenizer = None
        if not args.no_tokenizer:
            from llmkit.tokenizer import load as load_tokenizer
            from llmkit.tokenizer.hf import is_hf_tokenizer_dir, load_hf_tokenizer

            tok_dir = meta.get("tokenizer_dir") or Path(meta["path"]) / "tokenizer"
            tokenizer = load_hf_tokenizer(tok_dir) if is_hf_tokenizer_dir(tok_dir) else load_tokenizer(tok_dir)
        dtype = getattr(torch, args.dtype) if args.dtype else None
        out = export_hf(model, config, args.out_dir, tokenizer=tokenizer, dtype=dtype, overwrite=args.overwrite)
        print(f"wrote {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
        if not args.no_verify:
            back, _, _ = load_hf(out, dtype=torch.float32)
            model = model.float()
            g = torch.Generator().manual_seed(0)
            idx = torch.randint(0, config.vocab_size, (2, min(16, config.block_size)), generator=g)
            with torch.no_grad():
                if config.causal:
                    a, b = model(idx), back(idx)
                else:  # encoders: the MLM logits at every position
                    a, b = model.mlm_head(model.encode(idx)), back.mlm_head(back.encode(idx))
            diff = (a - b).abs().max().item()
            tol = 1e-4 if dtype in (None, torch.float32) else 5e-2 * max(1.0, a.abs().max().item())
            print(f"verify: re-imported logits differ by at most {diff:.3g}")
            if diff > tol:
                msg = f"error: the export does not reproduce the checkpoint (max |diff| {diff:.3g} > {tol:.3g})"
                print(msg, file=sys.stderr)
                return 1
    except LlmkitError as e:
        hint = ""
        if not hf.is_hf_ref(args.checkpoint) and hf.looks_like_hf_dir(args.checkpoint):
            hint = f"\n{args.checkpoint} looks like a Hugging Face model directory: pass hf:{args.checkpoint}"
        print(f"error: {e}{hint}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
