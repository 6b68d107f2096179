"""llama.cpp's side of ``bench_generate.py``: one GGUF file loaded once, greedy runs on request.

Runs under any Python that has llama-cpp-python (it needs neither torch nor llmkit):

    python scripts/llamacpp_worker.py MODEL.gguf --threads 2 --n-ctx 256 [--no-extra-bufts]

It prints one JSON line when the model is loaded (``{"ready": true}``, or ``{"error": ...}``), then
reads one JSON request per line, ``{"prompt": [ids], "new_tokens": N}``, and answers each with
``{"seconds": s, "ids": [N greedy ids]}``: the time from the prompt to the last new token, prefill
included, as the llmkit side is timed (the cache is cleared first, so no run reuses another's
prompt). EOF ends it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("gguf")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--n-ctx", type=int, default=256)
    p.add_argument("--no-extra-bufts", action="store_true",
                   help="load without llama.cpp's extra CPU buffer types (weight repacking, AMX)")  # fmt: skip
    args = p.parse_args()
    try:
        import llama_cpp
        import llama_cpp.llama

        if args.no_extra_bufts:  # llama-cpp-python has no argument for it: set it in the default model params
            default = llama_cpp.llama_model_default_params

            def params():  # type: ignore[no-untyped-def]
                out = default()
                out.use_extra_bufts = False
                return out

            llama_cpp.llama.llama_cpp.llama_model_default_params = params

        llm = llama_cpp.Llama(args.gguf, n_ctx=args.n_ctx, n_threads=args.threads, n_threads_batch=args.threads,
                              n_gpu_layers=0, verbose=False)  # fmt: skip
    except Exception as e:  # noqa: BLE001 - reported to the parent, which prints the llmkit rows only
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        return 1
    print(json.dumps({"ready": True, "llama_cpp": getattr(llama_cpp, "__version__", "?")}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        llm.reset()
        ids: list[int] = []
        t0 = time.perf_counter()
        for token in llm.generate(req["prompt"], temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            ids.append(int(token))
            if len(ids) == req["new_tokens"]:
                break
        seconds = time.perf_counter() - t0
        print(json.dumps({"seconds": seconds, "ids": ids}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
