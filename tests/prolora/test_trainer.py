"""prolora.trainer pieces that the recipe tests do not pin down: optimizer groups, checkpoint listing."""

import pytest
import torch

import prolora
from prolora.models import build_tiny_llama
from prolora.trainer import OptimArgs, TrainArgs, list_checkpoints, split_param_groups


def test_shared_lr_puts_prolora_chunks_in_their_own_group():
    model = prolora.attach(build_tiny_llama(), prolora.PRoLoRAConfig(r=8, u=1, m=7))
    groups = split_param_groups(model, lr=2e-4, shared_lr=1e-3, weight_decay=0.0)
    by_name = {g["name"]: g for g in groups}
    assert by_name["shared"]["lr"] == 1e-3 and by_name["unshared"]["lr"] == 2e-4
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith(("A_0", "B_0")) for p in by_name["shared"]["params"])
    assert all(names[id(p)].endswith(("A_u", "B_u")) for p in by_name["unshared"]["params"])
    n_groups = sum(p.numel() for g in groups for p in g["params"])
    assert n_groups == prolora.count_trainable(model)


def test_default_is_one_group_and_shared_lr_needs_shared_params():
    model = prolora.attach(build_tiny_llama(), prolora.LoRAConfig(r=2))
    assert len(split_param_groups(model, 2e-4, None, 0.0)) == 1
    with pytest.raises(ValueError, match="shared_lr"):
        split_param_groups(model, 2e-4, 1e-3, 0.0)


def test_only_complete_checkpoints_are_listed(tmp_path):
    for name, complete in (("step_0000010", True), ("step_0000020", True), ("step_0000030", False),
                           (".tmp-step_0000040-1", True)):
        d = tmp_path / name
        d.mkdir()
        if complete:
            torch.save({}, d / "trainer_state.pt")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000010", "step_0000020"]


@pytest.mark.parametrize("cls,kwargs,needle", [
    (TrainArgs, {"batch_size": 16, "micro_batch_size": 5}, "trainer.batch_size"),
    (TrainArgs, {"max_steps": 0}, "trainer.max_steps"), (TrainArgs, {"log_every": 0}, "trainer.log_every"),
    (TrainArgs, {"max_train_samples": -5}, "trainer.max_train_samples"),
    (TrainArgs, {"gradient_checkpointing": "some"}, "trainer.gradient_checkpointing"),
    (OptimArgs, {"lr": 0.0}, "optim.lr"), (OptimArgs, {"lr": 1e12}, "optim.lr"),
    (OptimArgs, {"lr": float("nan")}, "optim.lr"), (OptimArgs, {"name": "sgd"}, "optim.name"),
    (OptimArgs, {"warmup_ratio": 1.5}, "optim.warmup_ratio"), (OptimArgs, {"betas": [0.9]}, "optim.betas")])
def test_bad_settings_name_the_field(cls, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        cls(**kwargs)


def test_autocast_step_runs_and_keeps_adapter_weights_fp32(tmp_path):
    """The bf16 autocast path (used on CUDA with a bf16 compute dtype) on the CPU: finite losses, fp32 adapters."""
    from prolora.models import TINY_DIR, load_tokenizer
    from prolora.trainer import Trainer

    model = prolora.attach(build_tiny_llama(), prolora.PRoLoRAConfig(r=4, u=1, m=2))
    ids = load_tokenizer(TINY_DIR)("<|user|>\nWhat is 1 + 1?\n<|assistant|>\n2</s>", return_tensors="pt").input_ids
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    args = TrainArgs(max_steps=3, batch_size=1, micro_batch_size=1, save_every=0, progress=False, device="cpu",
                     gradient_checkpointing=False)
    result = Trainer(model, lambda step: [batch], args, OptimArgs(name="adamw", lr=1e-2), tmp_path,
                     save_fn=lambda m, d: None, load_fn=lambda m, d: None, autocast_dtype=torch.bfloat16).train()
    assert torch.isfinite(torch.tensor([result.initial_loss, result.final_loss])).all()
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def _labelled_batch(seed: int = 0, rows: int = 3, width: int = 24) -> dict:
    """Random ids, right padding, the first third of each row masked out of the loss (a prompt)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 200, (rows, width), generator=g)
    mask = torch.ones_like(ids)
    mask[1, width - 5:] = 0  # padded row
    labels = ids.clone()
    labels[:, : width // 3] = -100
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_causal_lm_loss_is_the_full_logits_loss_with_the_same_gradients():
    """The head runs only on labelled positions, yet loss and adapter gradients equal transformers' own
    ``model(labels=...)`` and the textbook full-logits loss (which compute every position's logits)."""
    from prolora.trainer import causal_lm_loss, full_logits_loss

    batch = _labelled_batch()
    grads = []
    losses = []
    for fast in (True, False, None):
        torch.manual_seed(0)
        model = prolora.attach(build_tiny_llama(), prolora.PRoLoRAConfig(r=4, u=1, m=3, dropout=0.0))
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.05)
        if fast:
            loss = causal_lm_loss(model, batch)
        elif fast is None:
            loss = full_logits_loss(model, batch)
        else:
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         labels=batch["labels"]).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert losses[0] == pytest.approx(losses[1], abs=1e-6) and losses[0] == pytest.approx(losses[2], abs=1e-6)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grads[0], grads[2], atol=1e-6, rtol=1e-5)


def _tiny_trainer(tmp_path, config, batch, steps=2):
    from prolora.trainer import Trainer

    model = prolora.attach(build_tiny_llama(num_hidden_layers=4), config)
    args = TrainArgs(max_steps=steps, batch_size=batch["input_ids"].shape[0],
                     micro_batch_size=batch["input_ids"].shape[0], save_every=0, progress=False, device="cpu",
                     gradient_checkpointing=False)
    return Trainer(model, lambda step: [batch], args, OptimArgs(name="adamw", lr=1e-2), tmp_path,
                   save_fn=lambda m, d: None, load_fn=lambda m, d: None)


def _checkpointed(model) -> list[bool]:
    from prolora.checkpointing import decoder_layers

    return [bool(layer.gradient_checkpointing) for layer in decoder_layers(model)]


def test_train_step_reports_its_time_and_equals_train(tmp_path):
    batch = _labelled_batch()
    torch.manual_seed(0)
    a = _tiny_trainer(tmp_path / "a", prolora.LoRAConfig(r=4, dropout=0.1), batch, steps=3)
    rows = [a.train_step() for _ in range(3)]
    assert all(r["step_s"] > 0 for r in rows) and [r["step"] for r in rows] == [1, 2, 3]
    torch.manual_seed(0)
    b = _tiny_trainer(tmp_path / "b", prolora.LoRAConfig(r=4, dropout=0.1), batch, steps=3)
    b.train()
    assert a.recent_losses == b.recent_losses


@pytest.mark.parametrize("budget,expected", [(1 << 50, 0), (0, 4)])
def test_fit_checkpointing_extremes(tmp_path, budget, expected):
    trainer = _tiny_trainer(tmp_path, prolora.LoRAConfig(r=4), _labelled_batch())
    assert trainer.fit_checkpointing(budget_bytes=budget) == expected
    assert _checkpointed(trainer.model) == [i < expected for i in range(4)]
    assert all(p.grad is None for p in trainer.model.parameters())  # the probes leave no gradients


@pytest.mark.parametrize("budget", [0, 1 << 50])
def test_fit_checkpointing_changes_no_number(tmp_path, budget):
    """The probes run forward/backward with dropout on, but restore the RNG: the run that follows has exactly
    the losses of a run with the same number of checkpointed layers set by hand."""
    from prolora.checkpointing import apply

    batch = _labelled_batch(rows=4, width=48)
    torch.manual_seed(0)
    auto = _tiny_trainer(tmp_path / "a", prolora.LoRAConfig(r=4, dropout=0.1), batch)
    k = auto.fit_checkpointing(budget_bytes=budget)
    losses_auto = [auto.train_step()["loss"] for _ in range(2)]
    torch.manual_seed(0)
    manual = _tiny_trainer(tmp_path / "b", prolora.LoRAConfig(r=4, dropout=0.1), batch)
    apply(manual.model, k)
    losses_manual = [manual.train_step()["loss"] for _ in range(2)]
    assert losses_auto == losses_manual


def test_fit_checkpointing_picks_the_layers_that_fit(tmp_path):
    """CPU probes are exact (allocation events), so a budget between "all recomputed" and "none" gives the k
    the arithmetic predicts, and the next probe agrees with the first."""
    batch = _labelled_batch(rows=4, width=96)
    trainer = _tiny_trainer(tmp_path, prolora.LoRAConfig(r=4, dropout=0.1), batch)
    trainer.fit_checkpointing(budget_bytes=1 << 50)
    info = trainer.checkpointing_probe
    assert info["per_layer_bytes"] > 10_000  # a layer's activations at 4 x 96 tokens, hidden 64
    need_all = info["peak_all_bytes"] + 2 * 4 * prolora.count_trainable(trainer.model)
    k = trainer.fit_checkpointing(budget_bytes=need_all + 2 * info["per_layer_bytes"] + info["per_layer_bytes"] // 2)
    assert k == 2 and _checkpointed(trainer.model) == [True, True, False, False]


@pytest.mark.parametrize("bad,message,last_saved", [
    ({3: float("nan")}, r"training diverged: the loss is \[nan\] at step 3", 2),
    ({k: 50.0 for k in range(3, 40)}, r"the loss of the last 10 steps \(41.2\) is over 4x .* at step 10", 9),
])
def test_diverging_training_stops_before_saving(tmp_path, bad, message, last_saved):
    """A non-finite or exploding loss stops the run with one message; no checkpoint after it is written."""
    from prolora.trainer import TrainingDiverged, causal_lm_loss

    batch = _labelled_batch()
    trainer = _tiny_trainer(tmp_path, prolora.LoRAConfig(r=4), batch, steps=40)
    trainer.args.save_every = 1

    def loss_fn(model, b):
        loss = causal_lm_loss(model, b)
        step = trainer.step + 1
        return loss * 0 + bad[step] if step in bad else loss

    trainer.loss_fn = loss_fn
    with pytest.raises(TrainingDiverged, match=message):
        trainer.train()
    saved = [int(p.name.split("_")[1]) for p in list_checkpoints(tmp_path / "checkpoints")]
    assert max(saved) == last_saved  # stopped there: no checkpoint of the diverged step or after it


def test_resume_refuses_a_checkpoint_of_another_identity(tmp_path):
    from prolora.trainer import identity_diff

    batch = _labelled_batch()
    a = _tiny_trainer(tmp_path, prolora.LoRAConfig(r=4), batch, steps=4)
    a.identity, a.args.save_every = {"seed": 3, "optim": {"lr": 0.01}}, 2
    a.train()
    b = _tiny_trainer(tmp_path, prolora.LoRAConfig(r=4), batch, steps=4)
    b.identity, b.args.resume = {"seed": 7, "optim": {"lr": 0.01}}, True
    with pytest.raises(ValueError, match=r"belongs to another run \(seed: 3 -> 7\)"):
        b.maybe_resume()
    assert identity_diff({"a": {"b": 1}, "c": 2}, {"a": {"b": 2}, "c": 2}) == ["a.b: 1 -> 2"]


def _lora_with_gradients():
    """The tiny Llama with LoRA r4 (seed 0), every adapter weight moved off its init: B = 0 would leave A without
    gradient."""
    torch.manual_seed(0)
    model = prolora.attach(build_tiny_llama(), prolora.LoRAConfig(r=4, dropout=0.0))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05)
    return model


def test_gradient_accumulation_gives_the_gradient_of_the_whole_batch(tmp_path):
    """k micro-batches of b rows = one batch of k·b rows (each micro-batch's loss is scaled by 1/k): the same
    loss and the same gradient norm, so the same clipped step.  Rows hold equally many labelled tokens, where the
    mean of the micro-batch means is the mean over the batch."""
    from prolora.trainer import Trainer

    whole = _labelled_batch(rows=4)
    whole["attention_mask"][:] = 1
    whole["labels"] = whole["input_ids"].clone()
    whole["labels"][:, :8] = -100
    halves = [{k: v[:2] for k, v in whole.items()}, {k: v[2:] for k, v in whole.items()}]
    rows = []
    for micro in ([whole], halves):
        model = _lora_with_gradients()
        args = TrainArgs(max_steps=1, batch_size=4, micro_batch_size=4 // len(micro), save_every=0, progress=False,
                         device="cpu", gradient_checkpointing=False)
        trainer = Trainer(model, lambda step, m=micro: m, args, OptimArgs(name="adamw", lr=1e-2), tmp_path,
                          save_fn=lambda m, d: None, load_fn=lambda m, d: None)
        rows.append(trainer.train_step())
    assert rows[1]["loss"] == pytest.approx(rows[0]["loss"], rel=1e-6)
    assert rows[1]["grad_norm"] == pytest.approx(rows[0]["grad_norm"], rel=1e-5)


@pytest.mark.parametrize("config", [prolora.LoRAConfig(r=2), prolora.VeRAConfig(r=16)], ids=["lora", "vera"])
def test_the_first_step_records_peak_memory_and_the_rest_their_time(tmp_path, config):
    """What a method costs, measured in the run itself: the first step's peak (on a CPU: the activations autograd
    saves, the gradients and the AdamW moments it creates), the adapter's own bytes (VeRA's frozen pairs included),
    every step's time; the measured first step does not enter the median; the measured run trains exactly as an
    unmeasured loop."""
    import json

    from prolora.trainer import Trainer, adapter_bytes

    batch = _labelled_batch()
    args = TrainArgs(max_steps=4, batch_size=3, micro_batch_size=3, save_every=0, progress=False, device="cpu",
                     gradient_checkpointing=False, log_every=1)

    def trainer(out):
        torch.manual_seed(0)
        model = prolora.attach(build_tiny_llama(), config)
        return Trainer(model, lambda step: [batch], args, OptimArgs(name="adamw", lr=1e-2), out,
                       save_fn=lambda m, d: None, load_fn=lambda m, d: None)

    measured = trainer(tmp_path / "a")
    result = measured.train()
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    first = rows[0]
    n = prolora.count_trainable(measured.model)
    shared = getattr(measured.model, "prolora_shared", None)  # VeRA: the frozen random pairs
    frozen = sum(b.numel() * 4 for b in shared.buffers()) if shared is not None else 0
    assert first["profiled"] and first["adapter_bytes"] == adapter_bytes(measured.model) == 4 * n + frozen
    assert first["step_peak_bytes"] >= 2 * 4 * n  # at least the two fp32 AdamW moments the first step creates
    assert result.memory == {k: first[k] for k in ("step_peak_bytes", "adapter_bytes", "memory_method")}
    assert first["memory_method"].startswith("cpu: saved activations")
    assert all("step_s" in r for r in rows) and not any(r.get("profiled") for r in rows[1:])
    assert result.step_s_median == sorted(r["step_s"] for r in rows[1:])[1]  # the median of steps 2-4 only

    plain = trainer(tmp_path / "b")
    plain.configure_checkpointing()
    plain.model.train()
    losses = [plain.train_step()["loss"] for _ in range(4)]
    assert losses == [r["loss"] for r in rows]  # measuring changes no number


def test_saved_activation_bytes_counts_what_autograd_keeps_not_the_frozen_weights():
    from prolora.trainer import saved_activation_bytes

    lin = torch.nn.Linear(8, 16, bias=False)
    lin.weight.requires_grad_(False)
    head = torch.nn.Linear(16, 1)
    model = torch.nn.Sequential(lin, torch.nn.Tanh(), head)
    x = torch.randn(4, 8)
    n = saved_activation_bytes(model, lambda: model(x).sum().backward())
    # tanh's output (4 x 16) and the head's input (the same tensor, one storage): 64 floats; x is not saved
    # (the frozen first layer needs no weight gradient) and no weight is counted
    assert n == 4 * 16 * 4


def test_the_optimizer_steps_on_gradients_clipped_to_max_grad_norm(tmp_path):
    """The logged grad_norm is the norm before clipping; the optimizer sees the gradients scaled to max_grad_norm."""
    from prolora.trainer import Trainer

    batch = _labelled_batch(rows=2)
    model = _lora_with_gradients()
    args = TrainArgs(max_steps=1, batch_size=2, micro_batch_size=2, save_every=0, progress=False, device="cpu",
                     gradient_checkpointing=False)
    trainer = Trainer(model, lambda step: [batch], args, OptimArgs(name="adamw", lr=1e-2, max_grad_norm=1e-3),
                      tmp_path, save_fn=lambda m, d: None, load_fn=lambda m, d: None)
    seen = []
    step = trainer.optimizer.step

    def record(*a, **k):
        seen.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.trainable]))))
        return step(*a, **k)

    trainer.optimizer.step = record
    row = trainer.train_step()
    assert row["grad_norm"] > 1e-2  # the raw norm, well above the bound
    assert seen == [pytest.approx(1e-3, rel=1e-3)]
