"""prolora.trainer pieces that the recipe tests do not pin down: optimizer groups, checkpoint listing."""

import pytest
import torch

import prolora
from prolora.models import build_tiny_llama
from prolora.trainer import TrainArgs, list_checkpoints, split_param_groups


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


@pytest.mark.parametrize("kwargs,needle", [({"batch_size": 16, "micro_batch_size": 5}, "micro_batch_size"),
                                           ({"max_steps": 0}, "max_steps"), ({"lr": 0.0}, "lr")])
def test_bad_train_args_name_the_field(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        TrainArgs(**kwargs)


def test_autocast_step_runs_and_keeps_adapter_weights_fp32(tmp_path):
    """The bf16 autocast path (used on CUDA with a bf16 compute dtype) on the CPU: finite losses, fp32 adapters."""
    from prolora.models import load_tiny_tokenizer
    from prolora.trainer import Trainer

    model = prolora.attach(build_tiny_llama(), prolora.PRoLoRAConfig(r=4, u=1, m=2))
    ids = load_tiny_tokenizer()("<|user|>\nWhat is 1 + 1?\n<|assistant|>\n2</s>", return_tensors="pt").input_ids
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    args = TrainArgs(max_steps=3, batch_size=1, micro_batch_size=1, lr=1e-2, optimizer="adamw", save_every=0,
                     progress=False)
    result = Trainer(model, lambda step: [batch], args, tmp_path, save_fn=lambda m, d: None,
                     load_fn=lambda m, d: None, autocast_dtype=torch.bfloat16).train()
    assert torch.isfinite(torch.tensor([result.initial_loss, result.final_loss])).all()
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
