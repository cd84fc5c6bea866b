"""The first stages of the pipeline for one prompt, as plain data: text → tokens → ids → logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from decoders.driver import encode_prompts
from decoders.errors import GenerationError


@dataclass(frozen=True)
class Walkthrough:
    """What the model sees and says for one prompt.

    Args:
        text: the prompt as the model reads it (with the chat template, if one was applied).
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
    input_ids = torch.tensor(encode_prompts(tokenizer, [prompt], chat))
    text = tokenizer.decode(input_ids[0]) if chat else prompt
    tokens = tokenizer.convert_ids_to_tokens(input_ids[0].tolist())
    with torch.inference_mode():
        logits = loaded.model(input_ids=input_ids).logits.float()
    return Walkthrough(text=text, tokens=tokens, input_ids=input_ids, logits=logits)
