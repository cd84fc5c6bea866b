"""The json_schema, regex and grammar kinds through decoders' public API: masks, state, searches, interop, errors."""

import json
import re

import jsonschema
import pytest
import torch
from pydantic import ValidationError

import decoders
from decoders_structured.grammars import compiled_matcher, regex_grammar

EOS = 0


def strategy(*processors, selector="greedy", **search) -> decoders.Strategy:
    return decoders.Strategy.model_validate(
        {"processors": list(processors), "selector": {"kind": selector}, **({"search": search} if search else {})}
    )


def started(chain, tokenizer, eos=(EOS,)):
    chain.reset(decoders.DecodeContext(eos_token_ids=eos, tokenizer=tokenizer))
    return chain


def allowed_texts(chain, tokenizer, rows=1):
    """The set of token texts each row may take next (EOS shown as '<eos>')."""
    scores = chain.process(torch.zeros(rows, 0, dtype=torch.long), torch.zeros(rows, len(tokenizer)))
    return [
        {"<eos>" if i == EOS else tokenizer.decode([i]) for i in torch.isfinite(row).nonzero().flatten().tolist()}
        for row in scores
    ]


def ids(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


# ---- the mask: allowed tokens, EOS exactly when the grammar accepts ------------------------------------------------


def test_eos_is_allowed_exactly_when_the_grammar_accepts(tiny_model):
    _, tokenizer = tiny_model
    chain = started(strategy({"kind": "regex", "regex": "ab|abc"}).build(), tokenizer)
    [first] = allowed_texts(chain, tokenizer)
    assert "a" in first and "<eos>" not in first and all("abc".startswith(t) for t in first)
    for token in ids(tokenizer, "ab"):
        chain.accept(torch.tensor([token]))
    [after_ab] = allowed_texts(chain, tokenizer)
    assert "<eos>" in after_ab and "c" in after_ab and after_ab <= {"<eos>", "c"}
    chain.accept(torch.tensor(ids(tokenizer, "c")))
    assert allowed_texts(chain, tokenizer) == [{"<eos>"}]  # complete: nothing but EOS (forced)


def test_special_tokens_and_columns_past_the_tokenizer_are_masked(tiny_model):
    _, tokenizer = tiny_model
    chain = started(strategy({"kind": "json_schema", "json_schema": {"type": "string"}}).build(), tokenizer)
    chain.accept(torch.tensor(ids(tokenizer, '"')))
    wide = chain.process(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, len(tokenizer) + 16))
    assert not torch.isfinite(wide[0, len(tokenizer) :]).any()  # logits wider than the vocabulary: padding columns
    assert not torch.isfinite(wide[0, EOS])  # the EOS special token cannot appear inside a string
    assert torch.isfinite(wide[0, ids(tokenizer, "a")[0]])


def test_a_complete_output_ends_with_eos_and_a_cut_one_with_length(tiny_model):
    schema = {"type": "object", "properties": {"word": {"enum": ["quick", "brown"]}}, "required": ["word"], "additionalProperties": False}
    constraint = {"kind": "json_schema", "json_schema": schema}
    complete = decoders.generate("The", strategy(constraint), model=tiny_model, max_new_tokens=40)
    assert complete.finish_reason == "eos" and complete.generated_ids[-1] == EOS
    assert json.loads(complete.text) in ({"word": "quick"}, {"word": "brown"})
    cut = decoders.generate("The", strategy(constraint), model=tiny_model, max_new_tokens=3)
    assert cut.finish_reason == "length"  # the documented signal: the output is incomplete
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut.text)


# ---- truncations before the constraint: never an empty row, the distribution of masking first --------------------


def test_a_constraint_after_top_k_masks_first(tiny_model):
    _, tokenizer = tiny_model
    regex = {"kind": "regex", "regex": "[0-9]+"}
    logits = torch.randn(2, len(tokenizer), generator=torch.Generator().manual_seed(0))
    letters = ids(tokenizer, "abcdefgh")
    logits[:, letters] = 50.0  # the top 8 tokens are letters, all forbidden
    after = started(strategy({"kind": "top_k", "top_k": 3}, regex).build(), tokenizer)
    first = started(strategy(regex, {"kind": "top_k", "top_k": 3}).build(), tokenizer)
    masked = started(strategy(regex).build(), tokenizer).process(torch.zeros(2, 0, dtype=torch.long), logits)
    expected = decoders.Strategy.model_validate({"processors": [{"kind": "top_k", "top_k": 3}]}).build().process(
        torch.zeros(2, 0, dtype=torch.long), masked
    )
    for chain in (after, first):
        scores = chain.process(torch.zeros(2, 0, dtype=torch.long), logits)
        assert torch.equal(scores, expected)  # top-3 of the allowed tokens, not an empty row
        assert int(torch.isfinite(scores[0]).sum()) == 3
        assert all(tokenizer.decode([i]).isdigit() for i in torch.isfinite(scores[0]).nonzero().flatten().tolist())


def test_dense_and_candidate_paths_give_the_same_tokens(tiny_model):
    _, tokenizer = tiny_model
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}}, "required": ["n", "ok"]}
    chosen = strategy(
        {"kind": "temperature", "temperature": 0.9}, {"kind": "top_p", "top_p": 0.9},
        {"kind": "json_schema", "json_schema": schema}, selector="sample",
    )  # fmt: skip
    fast, dense = (started(chosen.build(use_candidates=flag), tokenizer) for flag in (True, False))
    logits_stream, seeds = torch.Generator().manual_seed(1), [torch.Generator().manual_seed(s) for s in (7, 8, 7, 8)]
    used_candidates = False
    ids_so_far = torch.zeros(2, 0, dtype=torch.long)
    for _ in range(24):
        logits = torch.randn(2, len(tokenizer), generator=logits_stream) * 3
        scores = fast.run(ids_so_far, logits)
        used_candidates |= isinstance(scores, decoders.Candidates)
        tokens = fast.choose(scores, seeds[:2])
        assert torch.equal(tokens, dense.select(ids_so_far, logits, seeds[2:]))
        assert torch.equal(decoders.scores.to_dense(scores), dense.process(ids_so_far, logits))
        fast.accept(tokens)
        dense.accept(tokens)
        ids_so_far = torch.cat([ids_so_far, tokens.unsqueeze(-1)], dim=-1)
    assert used_candidates  # a few allowed tokens (after '{', a key, a number) became a candidate set


# ---- state: live rows, beams, rollback ----------------------------------------------------------------------------


def test_rows_that_are_not_live_are_not_advanced(tiny_model):
    _, tokenizer = tiny_model
    chain = started(strategy({"kind": "regex", "regex": "(ab)+"}).build(), tokenizer)
    [a], [b] = ids(tokenizer, "a"), ids(tokenizer, "b")
    chain.accept(torch.tensor([a, a]))
    chain.context.live = torch.tensor([True, False])
    chain.accept(torch.tensor([b, EOS]))  # row 1 has finished: it gets the pad id, which must not reach its matcher
    chain.context.live = None
    row0, row1 = allowed_texts(chain, tokenizer, rows=2)
    assert "<eos>" in row0 and "a" in row0
    assert row1 == {"b"}  # still after "a"


def test_reorder_forks_and_drops_rows(tiny_model):
    _, tokenizer = tiny_model
    chain = started(strategy({"kind": "regex", "regex": "ab|cd"}).build(), tokenizer)
    chain.accept(torch.tensor([ids(tokenizer, "a")[0], ids(tokenizer, "c")[0]]))
    chain.reorder(torch.tensor([1, 1, 0]))
    chain.accept(torch.tensor([ids(tokenizer, "d")[0], ids(tokenizer, "d")[0], ids(tokenizer, "b")[0]]))
    assert allowed_texts(chain, tokenizer, rows=3) == [{"<eos>"}] * 3  # each fork advanced on its own


def test_rollback_forgets_accepted_tokens(tiny_model):
    _, tokenizer = tiny_model
    chain = started(strategy({"kind": "regex", "regex": "abc|abd"}).build(), tokenizer)
    start = allowed_texts(chain, tokenizer)
    [a], [b], [c], [x] = (ids(tokenizer, t) for t in "abcx")
    for token in (a, b):
        chain.accept(torch.tensor([token]))
    after_ab = allowed_texts(chain, tokenizer)
    chain.accept(torch.tensor([c]))
    chain.rollback([1])
    assert allowed_texts(chain, tokenizer) == after_ab
    chain.accept(torch.tensor([x]))  # forbidden: a drafted token the grammar rejects puts the matcher in error
    chain.rollback([3])
    assert allowed_texts(chain, tokenizer) == start


def test_beam_search_follows_the_rows(tiny_model):
    regex = "(ab|cd){2,4}"
    results = decoders.generate(
        ["Once", "The quick brown fox"], strategy({"kind": "regex", "regex": regex}, kind="beam", num_beams=3, num_return_sequences=3),
        model=tiny_model, max_new_tokens=12,
    )  # fmt: skip
    hypotheses = [h for r in results for h in r.alternatives]
    assert len(hypotheses) == 6 and all(h.finish_reason == "eos" for h in hypotheses)
    assert all(re.fullmatch(regex, h.text) for h in hypotheses)


def test_speculative_decoding_rolls_the_matchers_back(tiny_model):
    if "speculative" not in decoders.reload_registry().searches:
        pytest.skip("this decoders has no speculative search")
    regex = "(ab|cd|the ){6,12}"
    prompts = ["the the ab cd the ab", "Once upon a time the ab the"]  # prompt lookup drafts from them
    plain = decoders.generate(prompts, strategy({"kind": "regex", "regex": regex}), model=tiny_model, max_new_tokens=30)
    speculative = decoders.generate(
        prompts, strategy({"kind": "regex", "regex": regex}, kind="speculative", prompt_lookup_num_tokens=4), model=tiny_model,
        max_new_tokens=30,
    )  # fmt: skip
    assert [r.generated_ids for r in speculative] == [r.generated_ids for r in plain]  # greedy: the same tokens
    assert all(r.finish_reason == "eos" and re.fullmatch(regex, r.text) for r in speculative)
    assert sum(r.speculation.drafted - r.speculation.accepted for r in speculative) > 0  # some drafts were taken back


def test_a_batch_of_different_prompts_each_follows_the_schema(tiny_model):
    schema = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 1, "maxItems": 3}
    prompts = ["Once", "The quick brown fox jumps over", "a", "Decoding strategies choose"]
    results = decoders.generate(prompts, strategy({"kind": "json_schema", "json_schema": schema}, selector="sample"), model=tiny_model,
                                seed=3, max_new_tokens=16)  # fmt: skip
    assert all(r.finish_reason == "eos" for r in results)
    for result in results:
        jsonschema.validate(json.loads(result.text), schema)


# ---- compile once, tokenizer needed --------------------------------------------------------------------------------


def test_a_grammar_is_compiled_once_per_tokenizer(tiny_model):
    _, tokenizer = tiny_model
    grammar = regex_grammar("[a-c]{3}")
    first, _ = compiled_matcher(grammar, tokenizer, (EOS,))
    decoders.generate("Once", strategy({"kind": "regex", "regex": "[a-c]{3}"}), model=tiny_model, max_new_tokens=5)
    assert compiled_matcher(grammar, tokenizer, (EOS,))[0] is first
    assert first.is_accepting() is False  # the cached matcher is never advanced: rows get copies


def test_without_a_tokenizer_the_error_says_what_is_missing():
    chain = strategy({"kind": "regex", "regex": "a"}).build()
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        chain.reset(decoders.DecodeContext(eos_token_ids=(0,)))
    with pytest.raises(ValueError, match=r"has not been started: call chain.reset"):
        strategy({"kind": "regex", "regex": "a"}).build().process(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 8))


# ---- model.generate through ChainLogitsProcessor -------------------------------------------------------------------


def test_inside_model_generate_greedy_equals_decoders(tiny_model):
    from transformers import LogitsProcessorList

    from decoders.hf import ChainLogitsProcessor

    model, tokenizer = tiny_model
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"enum": ["x", "y"]}}, "required": ["a", "b"]}
    chosen = strategy({"kind": "json_schema", "json_schema": schema})
    ours = decoders.generate("The quick", chosen, model=tiny_model, max_new_tokens=30)
    inputs = tokenizer(["The quick"], return_tensors="pt")
    processor = ChainLogitsProcessor(chosen.build(), eos_token_ids=(EOS,), tokenizer=tokenizer)
    output = model.generate(**inputs, logits_processor=LogitsProcessorList([processor]), do_sample=False, max_new_tokens=30,
                            pad_token_id=EOS, eos_token_id=EOS)  # fmt: skip
    assert output[0, inputs["input_ids"].shape[1] :].tolist() == ours.generated_ids


def test_inside_model_generate_a_sampled_batch_stays_valid(tiny_model):
    from transformers import LogitsProcessorList

    from decoders.hf import ChainLogitsProcessor

    model, tokenizer = tiny_model
    regex = "[a-e]{2,5}(-[0-9]{1,2})?"
    chosen = strategy({"kind": "regex", "regex": regex})
    prompts = [ids(tokenizer, text) for text in ("Once", "The quick brown fox", "a")]
    width = max(map(len, prompts))
    inputs = {  # left-padded with the EOS id, as transformers pads a batch for generation
        "input_ids": torch.tensor([[EOS] * (width - len(p)) + p for p in prompts]),
        "attention_mask": torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts]),
    }
    processor = ChainLogitsProcessor(chosen.build(), eos_token_ids=(EOS,), tokenizer=tokenizer)
    torch.manual_seed(0)
    output = model.generate(**inputs, logits_processor=LogitsProcessorList([processor]), do_sample=True, max_new_tokens=12,
                            pad_token_id=EOS, eos_token_id=EOS)  # fmt: skip
    for row in output[:, inputs["input_ids"].shape[1] :].tolist():
        assert EOS in row  # every row completes (the regex is bounded) and the pads after it changed nothing
        assert re.fullmatch(regex, tokenizer.decode(row[: row.index(EOS)]))


def test_inside_model_generate_with_beams(tiny_model):
    from transformers import LogitsProcessorList

    from decoders.hf import ChainLogitsProcessor

    model, tokenizer = tiny_model
    regex = "(ab|cd){2,4}"
    processor = ChainLogitsProcessor(strategy({"kind": "regex", "regex": regex}).build(), eos_token_ids=(EOS,), tokenizer=tokenizer)
    inputs = tokenizer(["Once"], return_tensors="pt")
    output = model.generate(**inputs, logits_processor=LogitsProcessorList([processor]), num_beams=3, num_return_sequences=3,
                            do_sample=False, max_new_tokens=12, pad_token_id=EOS, eos_token_id=EOS)  # fmt: skip
    for row in output[:, inputs["input_ids"].shape[1] :].tolist():
        assert EOS in row and re.fullmatch(regex, tokenizer.decode(row[: row.index(EOS)]))


def test_inside_model_generate_rows_after_their_eos_are_not_advanced(tiny_model):
    from decoders.hf import ChainLogitsProcessor

    _, tokenizer = tiny_model
    [a], [b] = ids(tokenizer, "a"), ids(tokenizer, "b")
    processor = ChainLogitsProcessor(strategy({"kind": "regex", "regex": "(ab)+"}).build(), eos_token_ids=(EOS,), tokenizer=tokenizer)
    scores = torch.zeros(2, len(tokenizer))
    steps = [[[5], [5]], [[5, a], [5, a]], [[5, a, b], [5, a, b]], [[5, a, b, EOS], [5, a, b, a]], [[5, a, b, EOS, EOS], [5, a, b, a, b]]]
    for step in steps:  # what transformers passes: row 0 ends after "ab" and is then padded with the EOS id
        out = processor(torch.tensor(step), scores)
    assert processor.chain.context.live.tolist() == [False, True]
    assert torch.isfinite(out[0]).all()  # the finished row is left alone
    assert {tokenizer.decode([i]) if i else "<eos>" for i in torch.isfinite(out[1]).nonzero().flatten().tolist()} == {"a", "<eos>"}


# ---- bad input: a clear error when the strategy is validated ------------------------------------------------------


@pytest.mark.parametrize(
    "constraint, message",
    [
        ({"kind": "json_schema", "json_schema": {"type": "object", "properties": {"age": {"type": "intger"}}}},
         r"json_schema\.json_schema.*invalid JSON Schema at /properties/age/type: unknown type 'intger'"),
        ({"kind": "json_schema", "json_schema": {"properties": {"name": {"type": "string", "pattern": "[a-"}}}},
         r"invalid regex in pattern '\[a-' at /properties/name/pattern: unclosed character class"),
        ({"kind": "json_schema", "json_schema": {"properties": {"a": {"$ref": "#/$defs/missing"}}}},
         r"at /properties/a/\$ref: \$ref '#/\$defs/missing' points to nothing"),
        ({"kind": "json_schema", "json_schema": {"type": "array", "uniqueItems": True}},
         r"unsupported JSON Schema keyword 'uniqueItems' at /uniqueItems: llguidance does not implement it"),
        ({"kind": "json_schema", "json_schema": {"properties": {"x": {"not": {"type": "string"}}}}},
         r"unsupported JSON Schema keyword 'not' at /properties/x/not"),
        ({"kind": "regex", "regex": "[0-9]+(ab"}, r"regex\.regex.*invalid regex '\[0-9\]\+\(ab': unclosed group at character 7 \('\('\)"),
        ({"kind": "regex", "regex": "a{3,1}"}, r"invalid repetition count range.* at character 2"),
        ({"kind": "grammar", "grammar": 'start: "a" (b\nb: "x"\n'}, r"grammar\.grammar.*grammar error at line 1, column 14 .*Expected token"),
        ({"kind": "grammar", "grammar": 'start: item+\nitem: "x" | other\n'}, r"grammar error at line 2, column \d+ .*unknown name: \"other\""),
    ],
)  # fmt: skip
def test_bad_input_fails_validation_naming_the_position(constraint, message):
    with pytest.raises(ValidationError, match="(?s)" + message):
        strategy(constraint)
