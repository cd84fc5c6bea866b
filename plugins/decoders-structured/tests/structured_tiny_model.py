"""A tiny random-weight GPT-2-shaped causal LM with a tiny byte-level BPE tokenizer (offline, in seconds).

A copy of the builder in decoders' own tests: a plugin's tests must not import the host's tests package.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

EOS = "<|endoftext|>"
CORPUS = [
    "The quick brown fox jumps over the lazy dog. Artificial intelligence is transforming the world.",
    "Once upon a time there was a small model that wanted to write stories about language.",
    "Decoding strategies choose the next token: greedy, sampling, top-k, top-p and min-p.",
]


def make_tokenizer(vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style) trained on a few sentences."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS, unk_token=EOS)


def make_model(vocab_size: int, seed: int = 0) -> torch.nn.Module:
    """A random GPT-2-shaped LM (2 layers, width 64, context 128) with a wide spread of logits."""
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_positions=128, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(4.0)
    return model.eval()
