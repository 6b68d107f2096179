"""Fine-tuning strategies (full, freeze, LoRA) and their optimizer parameter groups.

``apply_strategy(model, FinetuneConfig(...))`` decides what trains; ``param_groups`` /
``build_optimizer`` give the optimizer the trainable parameters, with layer-wise learning-rate
decay when asked. ``llmkit.finetune.lora`` holds the LoRA layers, merging and loading
adapter checkpoints (see its docstring for how a base checkpoint and adapters are loaded together).
"""

from llmkit.finetune.lora import (
    LoRAEmbedding,
    LoRALinear,
    adapter_keys,
    apply_lora,
    load_adapters,
    lora_modules,
    lora_spec,
    merge_lora,
)
from llmkit.finetune.strategy import (
    FinetuneConfig,
    StrategyReport,
    apply_strategy,
    build_optimizer,
    find_trunk,
    head_parameters,
    layer_depths,
    param_groups,
)

__all__ = [
    "FinetuneConfig",
    "LoRAEmbedding",
    "LoRALinear",
    "StrategyReport",
    "adapter_keys",
    "apply_lora",
    "apply_strategy",
    "build_optimizer",
    "find_trunk",
    "head_parameters",
    "layer_depths",
    "load_adapters",
    "lora_modules",
    "lora_spec",
    "merge_lora",
    "param_groups",
]
