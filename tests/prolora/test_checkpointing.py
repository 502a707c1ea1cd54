"""prolora.checkpointing: the setting, applying it (the math unchanged), the memory arithmetic and probe."""

import pytest
import torch

from prolora.checkpointing import apply, decoder_layers, layers_to_checkpoint, parse, peak_memory
from prolora.models import build_tiny_llama, prepare_for_training


@pytest.mark.parametrize("value,expected", [(True, 32), (False, 0), ("true", 32), ("all", 32), ("false", 0),
                                            (0, 0), (5, 5), ("7", 7), (99, 32), ("auto", "auto")])
def test_parse(value, expected):
    assert parse(value, 32) == expected


@pytest.mark.parametrize("value", [-1, "some", "1.5"])
def test_parse_rejects_bad_values_naming_the_field(value):
    with pytest.raises(ValueError, match="trainer.gradient_checkpointing"):
        parse(value, 32)


def test_apply_recomputes_the_first_k_layers_and_keeps_the_math():
    model = prepare_for_training(build_tiny_llama(num_hidden_layers=3), quantized=False)
    assert apply(model, 3) == 3
    assert [layer.gradient_checkpointing for layer in decoder_layers(model)] == [True] * 3
    assert model.config.use_cache is False
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    model.model.layers[2].mlp.down_proj.weight.requires_grad_(True)
    ids = torch.randint(3, 100, (2, 12))
    grads = []
    for k in (3, 1, 0):
        assert apply(model, k) == k
        assert [layer.gradient_checkpointing for layer in decoder_layers(model)] == [i < k for i in range(3)]
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append(model.model.layers[2].mlp.down_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(grads[0], grads[2])


@pytest.mark.parametrize("budget,expected", [(100, 4), (109, 4), (110, 3), (125, 2), (140, 0), (10**9, 0), (0, 4)])
def test_layers_to_checkpoint(budget, expected):
    # peak 100 with every layer recomputed, each layer that keeps its activations adds 10
    assert layers_to_checkpoint(4, 100, 10, budget) == expected


def test_peak_memory_on_cpu_counts_live_tensors():
    def work():
        a = torch.ones(1000, 1000)  # 4 MB
        b = a * 2  # 8 MB live at the peak
        del a
        return b.sum()

    assert 8_000_000 <= peak_memory(work, "cpu") < 8_100_000


def test_peak_memory_on_cpu_ignores_blocks_from_before_it():
    """Freeing memory allocated before the probe does not lower its peak, even a block allocated under an
    earlier profile (whose size the profiler knows: an earlier probe's garbage, collected during this one, made
    CI's first probe of a trainer read low and its choice of layers differ from the next probe's)."""
    held = {}

    def earlier():
        held["under_a_profile"] = torch.ones(1_000_000)  # 4 MB, allocated while an earlier probe profiled

    peak_memory(earlier, "cpu")
    held["before"] = torch.ones(1_000_000)

    def work():
        held.clear()  # frees both 4 MB blocks from before the probe
        a = torch.ones(500_000)  # 2 MB
        return (a * 2).sum()  # 4 MB live at the peak

    assert 4_000_000 <= peak_memory(work, "cpu") < 4_100_000


def test_peak_memory_does_not_depend_on_when_the_garbage_collector_runs():
    """A reference cycle made in the probe holds its tensor until the cycle collector runs, which depends on
    everything the process did before; the probe holds the collector off, so the peak is the same either way."""
    import gc

    def work():
        cycle = {"tensor": torch.ones(1_000_000)}  # 4 MB, freed only by the cycle collector
        cycle["self"] = cycle
        del cycle
        threshold = gc.get_threshold()
        gc.set_threshold(1)  # the next container allocated would start an automatic collection...
        _ = [[] for _ in range(10)]
        gc.set_threshold(*threshold)
        return torch.ones(1_000_000).sum()  # ...which would have freed the 4 MB before these 4 MB

    assert 8_000_000 <= peak_memory(work, "cpu") < 8_100_000
    assert gc.isenabled()
