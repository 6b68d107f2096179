"""The training loop on a tiny CausalLM: bit-exact resume, gradient accumulation, non-finite
losses, SIGINT/SIGTERM, evaluation and logging, mixed-precision checks."""

from __future__ import annotations

import dataclasses
import math
import os
import signal

import numpy as np
import pytest
import torch

from llmkit import checkpoint
from llmkit.data.loader import RandomWindows
from llmkit.errors import LlmkitError
from llmkit.logger import JSONLLogger, read_jsonl
from llmkit.model import CausalLM, ModelConfig
from llmkit.objective import LossOutput
from llmkit.objective.clm import CausalLMObjective
from llmkit.optim import build_optimizer
from llmkit.optim.scheduler import warmup_cosine
from llmkit.trainer.trainer import Interrupted, Trainer, TrainerSettings, TrainerState

VOCAB, BLOCK = 32, 16
TINY = ModelConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32)
ADAMW = {"_target_": "torch.optim.AdamW", "lr": 1e-2, "weight_decay": 0.1}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def guard_signals():
    """Harmless SIGINT/SIGTERM handlers for the test: if the trainer failed to install its own,
    a signal the test sends lands here instead of aborting the pytest session."""
    received: list[int] = []

    def handler(signum, frame):
        received.append(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    yield handler, received
    for s, h in old.items():
        signal.signal(s, h)


def random_tokens(n: int = 4000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=n, dtype=np.uint16)


def make_trainer(
    *,
    train_batch,
    max_steps: int,
    total_steps: int | None = None,
    seed: int = 1234,
    config: ModelConfig = TINY,
    optim: dict | None = None,
    objective=None,
    warmup_steps: int = 3,
    dtype: torch.dtype = torch.float32,
    **kwargs,
) -> Trainer:
    """A fresh model/optimizer/schedule/trainer, the model initialised from ``seed``."""
    torch.manual_seed(seed)
    model = CausalLM.from_config(config).to(dtype)
    optimizer = build_optimizer(dict(optim or ADAMW), model)
    scheduler = warmup_cosine(optimizer, total_steps=total_steps or max_steps, warmup_steps=warmup_steps)
    kwargs.setdefault("log_every", 1000)
    names = {f.name for f in dataclasses.fields(TrainerSettings)}
    settings = TrainerSettings(max_steps=max_steps, progress=False, **{k: v for k, v in kwargs.items() if k in names})
    return Trainer(
        model=model,
        objective=objective or CausalLMObjective(),
        optimizer=optimizer,
        scheduler=scheduler,
        train_batch=train_batch,
        settings=settings,
        **{k: v for k, v in kwargs.items() if k not in names},
    )


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_all_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert not unequal, f"tensors differ: {unequal}"


# ---------------------------------------------------------------------------- exact resume


def save_checkpoint(root, trainer: Trainer) -> "os.PathLike":
    return checkpoint.save(
        root,
        trainer.state.step,
        model=trainer.model,
        model_class="CausalLM",
        model_config=trainer.model.config.to_dict(),
        state=trainer.state_dict(),
        config_yaml="seed: 1234\n",
        tokenizer_dir=None,
    )


def test_resume_is_bit_exact_and_needs_the_rng_state(tmp_path):
    config = ModelConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32, dropout=0.2)
    windows = RandomWindows(random_tokens(), block_size=BLOCK, batch_size=4, seed=7)

    straight = make_trainer(train_batch=windows.batch, max_steps=12, config=config)
    initial = weights(straight.model)
    straight.fit()
    expected = weights(straight.model)
    assert any(not torch.equal(initial[k], expected[k]) for k in initial), "training changed nothing"

    first = make_trainer(train_batch=windows.batch, max_steps=5, total_steps=12, config=config)
    first.fit()
    assert first.state.step == 5
    path = save_checkpoint(tmp_path / "ckpt", first)
    del first
    torch.manual_seed(999)  # whatever the RNG holds now must not matter after a restore

    resumed = make_trainer(train_batch=windows.batch, max_steps=12, config=config)
    checkpoint.load_weights(resumed.model, path)
    resumed.load_state_dict(checkpoint.load_state(path))
    assert resumed.state.step == 5
    resumed.fit()
    assert_all_equal(weights(resumed.model), expected)
    assert resumed.state.step == straight.state.step == 12
    assert resumed.state.tokens == straight.state.tokens == 12 * 4 * BLOCK
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]
    assert resumed.scheduler.last_epoch == straight.scheduler.last_epoch == 12

    # The same resume without the saved RNG state draws other dropout masks: the weights differ,
    # so the test above really depends on the RNG being restored.
    no_rng = make_trainer(train_batch=windows.batch, max_steps=12, config=config)
    checkpoint.load_weights(no_rng.model, path)
    state = checkpoint.load_state(path)
    state["rng"]["torch"] = torch.get_rng_state()
    no_rng.load_state_dict(state)
    no_rng.fit()
    after = weights(no_rng.model)
    assert any(not torch.equal(after[k], expected[k]) for k in expected)


def test_state_dict_round_trips_trainer_state():
    windows = RandomWindows(random_tokens(), block_size=BLOCK, batch_size=2, seed=1)
    a = make_trainer(train_batch=windows.batch, max_steps=3)
    a.fit()
    a.state.skipped_steps, a.state.nonfinite_run, a.state.best_val_loss = 2, 1, 1.25
    b = make_trainer(train_batch=windows.batch, max_steps=3)
    b.load_state_dict(a.state_dict())
    assert b.state == a.state
    assert isinstance(b.state, TrainerState)
    assert b.scheduler.last_epoch == 3


# ---------------------------------------------------------------------------- gradient accumulation


@pytest.mark.parametrize(
    "optim, grad_clip, dtype",
    [
        # float64: Adam's update g / (|g| + eps) blows float32 summation-order noise in near-zero
        # gradients up to ~1e-5 in the weights within one step; in float64 the two runs agree to
        # ~1e-14, so only a real accumulation error can exceed atol=1e-6.
        (ADAMW, 1.0, torch.float64),
        # SGD is not invariant to the gradient's scale (Adam nearly is), so a missing or doubled
        # 1/grad_accum would show here; grad_clip=0 also takes the unclipped grad-norm path.
        ({"_target_": "torch.optim.SGD", "lr": 0.5, "weight_decay": 0.1}, 0.0, torch.float32),
    ],
    ids=["adamw-clip-fp64", "sgd-noclip-fp32"],
)
def test_grad_accumulation_matches_one_big_batch(optim, grad_clip, dtype):
    windows = RandomWindows(random_tokens(), block_size=BLOCK, batch_size=4, seed=11)

    def big(step, micro):
        assert micro == 0
        return windows.batch(step)

    def halves(step, micro):
        assert micro in (0, 1)
        return {k: v[2 * micro : 2 * micro + 2] for k, v in windows.batch(step).items()}

    common = dict(max_steps=5, optim=optim, grad_clip=grad_clip, dtype=dtype, log_every=1)
    one = make_trainer(train_batch=big, **common)
    two = make_trainer(train_batch=halves, grad_accum=2, **common)
    m1, m2 = one.fit(), two.fit()
    w1, w2 = weights(one.model), weights(two.model)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-6, rtol=0, msg=k)
    assert one.state.tokens == two.state.tokens == 5 * 4 * BLOCK
    assert m2["train_loss"] == pytest.approx(m1["train_loss"], abs=1e-5)
    assert m2["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-4)


# ---------------------------------------------------------------------------- non-finite losses


def _times_nan(out: LossOutput) -> LossOutput:
    return LossOutput({k: v * float("nan") for k, v in out.sums.items()}, out.metrics)


class NaNOnSteps(CausalLMObjective):
    """CausalLMObjective whose loss is NaN on the given optimizer steps (graph kept, so grads are NaN too)."""

    def __init__(self, steps) -> None:
        super().__init__()
        self.steps = set(steps)
        self.trainer: Trainer | None = None

    def __call__(self, model, batch):
        out = super().__call__(model, batch)
        return _times_nan(out) if self.trainer.state.step in self.steps else out


def test_nonfinite_steps_are_skipped():
    windows = RandomWindows(random_tokens(), block_size=BLOCK, batch_size=2, seed=3)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def train_batch(step, micro):
        snapshots[step] = weights(trainer.model)  # the weights entering this step
        return windows.batch(step, micro)

    objective = NaNOnSteps({2, 5, 6})
    trainer = make_trainer(train_batch=train_batch, max_steps=9, objective=objective, max_nonfinite=3, log_every=1)
    objective.trainer = trainer
    last = trainer.fit()
    snapshots[9] = weights(trainer.model)

    for step in range(9):
        same = all(torch.equal(snapshots[step][k], snapshots[step + 1][k]) for k in snapshots[step])
        assert same == (step in {2, 5, 6}), f"step {step}: updated={not same}"
    assert trainer.state.skipped_steps == 3
    assert trainer.state.nonfinite_run == 0  # reset by the finite steps 7 and 8
    assert trainer.state.step == 9
    assert trainer.scheduler.last_epoch == 9  # the schedule advances over skipped steps
    assert math.isfinite(last["train_loss"])


# Skipping the very first update makes torch warn that the schedule stepped before the optimizer.
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")
def test_nonfinite_in_one_micro_batch_skips_the_step():
    windows = RandomWindows(random_tokens(), block_size=BLOCK, batch_size=2, seed=3)
    calls = []

    class NaNSecondMicro(CausalLMObjective):
        def __call__(self, model, batch):
            out = super().__call__(model, batch)
            calls.append(1)
            return _times_nan(out) if len(calls) == 2 else out

    trainer = make_trainer(train_batch=windows.batch, max_steps=1, objective=NaNSecondMicro(), grad_accum=2)
    before = weights(trainer.model)
    trainer.fit()
    assert_all_equal(weights(trainer.model), before)
    assert trainer.state.skipped_steps == 1


def test_too_many_nonfinite_steps_in_a_row_raise():
    windows = RandomWindows(random_tokens(), block_size=BLOCK, batch_size=2, seed=3)
    objective = NaNOnSteps(range(4, 100))
    saves = []
    trainer = make_trainer(
        train_batch=windows.batch,
        max_steps=20,
        objective=objective,
        max_nonfinite=3,
        save_every=1,
        save_checkpoint=lambda t: saves.append(t.state.step),
    )
    objective.trainer = trainer
    with pytest.raises(LlmkitError, match="non-finite") as info:
        trainer.fit()
    assert "3 steps in a row" in str(info.value)
    assert trainer.state.skipped_steps == 3
    # Steps 0-5 completed (4 and 5 skipped but counted); step 6, the third NaN in a row, raised
    # before completing, so it neither counts nor saves.
    assert trainer.state.step == 6
    assert saves == [1, 2, 3, 4, 5, 6]


# ---------------------------------------------------------------------------- signals


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("save_every", [0, 2])
def test_signal_finishes_the_step_saves_once_and_raises(guard_signals, signum, save_every):
    guard, received = guard_signals
    windows = RandomWindows(random_tokens(), block_size=BLOCK, batch_size=2, seed=5)
    saves: list[int] = []

    def train_batch(step, micro):
        if step == 3 and micro == 0:
            os.kill(os.getpid(), signum)
        return windows.batch(step, micro)

    trainer = make_trainer(
        train_batch=train_batch,
        max_steps=10,
        grad_accum=2,  # the step in which the signal arrives still runs both micro-batches
        save_every=save_every,
        save_checkpoint=lambda t: saves.append(t.state.step),
    )
    with pytest.raises(Interrupted) as info:
        trainer.fit()
    assert info.value.step == 4 and info.value.signum == signum
    assert trainer.state.step == 4
    assert trainer.state.tokens == 4 * 2 * 2 * BLOCK
    assert saves.count(4) == 1
    assert saves == ([2, 4] if save_every == 2 else [4])
    assert received == []  # the trainer, not the test's guard, handled the signal
    assert signal.getsignal(signal.SIGINT) is guard
    assert signal.getsignal(signal.SIGTERM) is guard


def test_second_signal_stops_at_once(guard_signals):
    guard, received = guard_signals
    windows = RandomWindows(random_tokens(), block_size=BLOCK, batch_size=2, seed=5)
    saves: list[int] = []

    def train_batch(step, micro):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return windows.batch(step, micro)

    trainer = make_trainer(
        train_batch=train_batch, max_steps=10, save_checkpoint=lambda t: saves.append(t.state.step)
    )
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert saves == []
    assert trainer.state.step == 3
    assert received == []
    assert signal.getsignal(signal.SIGINT) is guard


# ---------------------------------------------------------------------------- eval and logging


def test_eval_and_logging_and_loss_decreases(tmp_path):
    # A learnable stream: one fixed random sequence of 13 tokens, repeated.
    period = np.random.default_rng(0).integers(0, VOCAB, size=13, dtype=np.uint16)
    tokens = np.tile(period, 200)
    train = RandomWindows(tokens[:2000], block_size=BLOCK, batch_size=8, seed=1)
    val = RandomWindows(tokens[2000:], block_size=BLOCK, batch_size=8, seed=1, name="val")
    objective = CausalLMObjective()

    logger = JSONLLogger(tmp_path / "run" / "metrics.jsonl")
    trainer = make_trainer(
        train_batch=train.batch,
        val_batches=lambda: val.eval_batches(2),
        max_steps=32,  # not a multiple of log_every or eval_every: the last step logs and evaluates
        log_every=5,
        eval_every=10,
        loggers=[logger],
    )
    with torch.no_grad():
        trainer.model.eval()
        initial = sum(float(objective(trainer.model, b).sums["lm"] / objective.num_targets(b)["lm"])
                      for b in val.eval_batches(2)) / 2
    final = trainer.fit()
    logger.close()

    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    train_lines = [r for r in records if "train_loss" in r]
    val_lines = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in train_lines] == [5, 10, 15, 20, 25, 30, 32]
    assert [r["step"] for r in val_lines] == [10, 20, 30, 32]
    for r in records:
        assert isinstance(r["time"], float)
    for r in train_lines:
        assert {"lr", "grad_norm", "tokens_per_s", "ms_per_step"} <= r.keys()
        assert math.isfinite(r["train_loss"])
    for r in val_lines:
        assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))

    assert initial == pytest.approx(math.log(VOCAB), abs=0.5)
    assert final["val_loss"] == val_lines[-1]["val_loss"]
    assert final["val_loss"] < initial - 1.0, (initial, final["val_loss"])
    assert train_lines[-1]["train_loss"] < train_lines[0]["train_loss"] - 0.5
    assert trainer.state.best_val_loss == min(r["val_loss"] for r in val_lines)
    assert trainer.model.training  # evaluation puts the model back into training mode


def test_evaluate_does_not_change_weights_or_rng():
    config = ModelConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32, dropout=0.3)
    windows = RandomWindows(random_tokens(), block_size=BLOCK, batch_size=2, seed=5)
    trainer = make_trainer(train_batch=windows.batch, val_batches=lambda: windows.eval_batches(2), max_steps=1, config=config)
    before, rng = weights(trainer.model), torch.get_rng_state()
    first = trainer.evaluate()
    assert trainer.evaluate() == first  # dropout is off during evaluation
    assert_all_equal(weights(trainer.model), before)
    assert torch.equal(torch.get_rng_state(), rng)


# ---------------------------------------------------------------------------- precision


def test_fp16_on_cpu_is_refused():
    windows = RandomWindows(random_tokens(), block_size=BLOCK, batch_size=2, seed=5)
    with pytest.raises(LlmkitError, match="CUDA"):
        make_trainer(train_batch=windows.batch, max_steps=1, precision="fp16")


def test_bf16_on_cpu_runs_a_step():
    windows = RandomWindows(random_tokens(), block_size=BLOCK, batch_size=2, seed=5)
    seen = []

    class Objective(CausalLMObjective):
        def __call__(self, model, batch):
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            return super().__call__(model, batch)

    objective = Objective()

    trainer = make_trainer(train_batch=windows.batch, max_steps=1, precision="bf16", log_every=1, objective=objective)
    before = weights(trainer.model)
    last = trainer.fit()
    assert math.isfinite(last["train_loss"])
    assert trainer.state.step == 1 and trainer.state.skipped_steps == 0
    after = weights(trainer.model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(v.dtype == torch.float32 for v in after.values())  # autocast, not a bf16 model
    assert seen == [(True, torch.bfloat16)]
