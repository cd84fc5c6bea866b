"""Tiny random-weight causal LMs (GPT-2 and Llama shapes) with a tiny byte-level BPE tokenizer.

Built from configs in seconds and fully offline; saved to a folder they load exactly like a Hub model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

EOS = "<|endoftext|>"
CORPUS = [
    "The quick brown fox jumps over the lazy dog. Artificial intelligence is transforming the world.",
    "Once upon a time there was a small model that wanted to write stories about language.",
    "Decoding strategies choose the next token: greedy, sampling, top-k, top-p and min-p.",
]


def make_tokenizer(vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style: ``Ġ`` marks a space) trained on a few sentences."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS, unk_token=EOS)


def make_model(shape: str, vocab_size: int, seed: int = 0) -> torch.nn.Module:
    """A random-weight causal LM of ``shape`` "gpt2" or "llama" (2 layers, width 64, context 128)."""
    torch.manual_seed(seed)
    if shape == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_positions=128, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
        model = GPT2LMHeadModel(config)
    elif shape == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        )  # fmt: skip
        model = LlamaForCausalLM(config)
    else:
        raise ValueError(f"unknown shape {shape!r}: use 'gpt2' or 'llama'")
    # larger logits than the default init, so that distributions are far from uniform (GPT-2 ties its
    # output layer to the input embeddings, so a smaller factor gives a similar spread)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(4.0 if shape == "gpt2" else 20.0)
    return model.eval()


def save_tiny_model(folder: Path, shape: str = "gpt2", seed: int = 0) -> Path:
    """Write a tiny model and its tokenizer to ``folder`` (safetensors) and return the folder."""
    tokenizer = make_tokenizer()
    model = make_model(shape, len(tokenizer), seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class ModelWrapper:
    """A causal LM seen through a wrapper that changes what calling it does (subclasses override ``__call__``);
    it passes for the model everywhere else: its config, its forward's keyword names, parameters and head."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.config = model, model.config

    def __call__(self, **kwargs):
        return self.model(**kwargs)

    @property
    def forward(self):  # the session reads the keyword names of the wrapped model's forward
        return self.model.forward

    def parameters(self):
        return self.model.parameters()

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()
