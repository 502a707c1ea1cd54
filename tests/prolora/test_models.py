import pytest
import torch

from prolora.models import (
    build_tiny_llama,
    decoder_layers,
    parse_checkpointing,
    prepare_for_training,
    set_checkpointing,
)


@pytest.mark.parametrize("value,expected", [(True, 32), (False, 0), ("true", 32), ("all", 32), ("false", 0),
                                            (0, 0), (5, 5), ("7", 7), (99, 32), ("auto", "auto")])
def test_parse_checkpointing(value, expected):
    assert parse_checkpointing(value, 32) == expected


@pytest.mark.parametrize("value", [-1, "some", "1.5"])
def test_parse_checkpointing_rejects_bad_values_naming_the_field(value):
    with pytest.raises(ValueError, match="trainer.gradient_checkpointing"):
        parse_checkpointing(value, 32)


def test_set_checkpointing_recomputes_the_first_k_layers_and_keeps_the_math():
    model = prepare_for_training(build_tiny_llama(num_hidden_layers=3), quantized=False, checkpoint_layers=3)
    assert [layer.gradient_checkpointing for layer in decoder_layers(model)] == [True] * 3
    assert model.config.use_cache is False
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    model.model.layers[2].mlp.down_proj.weight.requires_grad_(True)
    ids = torch.randint(3, 100, (2, 12))
    grads = []
    for k in (3, 1, 0):
        assert set_checkpointing(model, k) == k
        assert [layer.gradient_checkpointing for layer in decoder_layers(model)] == [i < k for i in range(3)]
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append(model.model.layers[2].mlp.down_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(grads[0], grads[2])
