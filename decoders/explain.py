"""The first stages of the pipeline for one prompt, as plain data: text → tokens → ids → logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from decoders.errors import GenerationError


@dataclass(frozen=True)
class Walkthrough:
    """What the model sees and says for one prompt.

    Args:
        text: the text given to the tokenizer (after the chat template, if one was applied).
        tokens: the tokens as the tokenizer spells them (e.g. ``Ġis``; byte-level pieces for non-Latin text).
        input_ids: ``[1, T]`` token ids, as given to the model.
        logits: ``[1, T, V]`` float32 scores, one row per position; the last row predicts the next token.
    """

    text: str
    tokens: list[str]
    input_ids: torch.Tensor
    logits: torch.Tensor


def walk_prompt(prompt: str, loaded, *, chat: bool = False) -> Walkthrough:
    """Tokenize ``prompt`` and run one full forward pass of ``loaded.model`` over it.

    Args:
        prompt: the text to continue.
        loaded: a :class:`decoders.models.LoadedModel` (anything with ``.model`` and ``.tokenizer``).
        chat: wrap the prompt in the tokenizer's chat template first.

    Example:
        >>> walk = walk_prompt("Hello", decoders.load_model())  # doctest: +SKIP
        >>> walk.logits.shape  # doctest: +SKIP
        torch.Size([1, 2, 49152])
    """
    if not prompt:
        raise GenerationError("the prompt is empty: give some text to continue")
    tokenizer = loaded.tokenizer
    text = prompt
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise GenerationError("this tokenizer has no chat template: drop --chat, or use an instruct/chat model")
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    encoded = tokenizer(text, return_tensors="pt", add_special_tokens=not chat)
    input_ids = encoded["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(input_ids[0].tolist())
    with torch.inference_mode():
        logits = loaded.model(input_ids=input_ids, attention_mask=encoded["attention_mask"]).logits.float()
    return Walkthrough(text=text, tokens=tokens, input_ids=input_ids, logits=logits)
