"""Checkpoint manifests: every file's sha256, and a verification that names what changed."""

import json

import pytest

from prolora import integrity


def _ckpt(tmp_path):
    d = tmp_path / "final"
    (d / "peft").mkdir(parents=True)
    (d / "adapter_config.json").write_text('{"alpha": 16}')
    (d / "adapter.safetensors").write_bytes(b"\x00" * 64)
    (d / "peft" / "adapter_model.safetensors").write_bytes(b"\x01" * 64)
    integrity.write_manifest(d)
    return d


def test_an_untouched_checkpoint_verifies(tmp_path):
    d = _ckpt(tmp_path)
    result = integrity.verify(d)
    assert result.status == "verified" and set(result.files) == {
        "adapter_config.json", "adapter.safetensors", "peft/adapter_model.safetensors"}


@pytest.mark.parametrize("edit,named", [
    (lambda d: (d / "adapter_config.json").write_text('{"alpha": 160}'), "adapter_config.json (changed)"),
    (lambda d: (d / "adapter.safetensors").write_bytes(b"\x00" * 63 + b"\x02"), "adapter.safetensors (changed)"),
    (lambda d: (d / "peft" / "adapter_model.safetensors").unlink(), "peft/adapter_model.safetensors (missing)"),
    (lambda d: (d / "peft" / "extra.bin").write_bytes(b"x"), "peft/extra.bin (added)"),
    (lambda d: (d / integrity.MANIFEST).write_text("[]"), "checksums.json (unreadable)"),
])
def test_any_edit_is_refused_naming_the_file(tmp_path, edit, named):
    d = _ckpt(tmp_path)
    edit(d)
    with pytest.raises(integrity.ModifiedCheckpoint, match=r"checkpoint .*final: " + named.replace("(", r"\(")
                       .replace(")", r"\)") + r".* allow_modified=true"):
        integrity.verify(d)
    allowed = integrity.verify(d, allow_modified=True)
    assert allowed.status == "modified" and allowed.modified[0] == named


def test_the_copy_in_run_json_catches_an_edited_manifest(tmp_path):
    d = _ckpt(tmp_path)
    recorded = integrity.digest(d)
    (d / "adapter_config.json").write_text('{"alpha": 160}')
    integrity.write_manifest(d)  # the file AND its manifest rewritten
    with pytest.raises(integrity.ModifiedCheckpoint, match="differs from the copy in run.json"):
        integrity.verify(d, expected=recorded)


def test_a_checkpoint_without_a_manifest_is_unverified_not_verified(tmp_path):
    d = _ckpt(tmp_path)
    (d / integrity.MANIFEST).unlink()
    assert integrity.verify(d).status == "unverified"
    assert json.dumps(integrity.verify(d).to_dict()) == '{"status": "unverified", "modified": []}'
