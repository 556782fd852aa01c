"""Generation without a kernel: thinking split, sampling defaults, messages, seeded runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen3_jupyter.engines.eager import EagerEngine
from qwen3_jupyter.generation import GenerationOptions, build_messages, split_thinking


@pytest.mark.parametrize(
    ("text", "think", "expected"),
    [
        ("<think>\nstep 1\n</think>\n\nThe answer.", True, ("step 1", "The answer.", True)),
        ("step 1\n</think>\n\nThe answer.", True, ("step 1", "The answer.", True)),
        ("still thinking", True, ("still thinking", "", False)),
        ("<think>\n\n</think>\n\nDirect.", True, ("", "Direct.", True)),
        ("Plain answer", False, ("", "Plain answer", True)),
        ("a </think> b </think> c", True, ("a", "b </think> c", True)),
    ],
)
def test_split_thinking(text: str, think: bool, expected: tuple[str, str, bool]) -> None:
    assert split_thinking(text, think) == expected


def test_sampling_defaults_follow_qwen3_recommendations() -> None:
    assert GenerationOptions(think=True).sampling() == {
        "do_sample": True,
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 20,
    }
    assert GenerationOptions(think=False).sampling() == {
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 20,
    }
    assert GenerationOptions(think=False, temperature=1.1, top_k=5).sampling()["temperature"] == 1.1
    assert GenerationOptions(greedy=True).sampling() == {"do_sample": False}


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (
            {"temperature": -1},
            "temperature=-1: must be > 0 (greedy=True decodes deterministically)",
        ),
        ({"temperature": 0.0}, "temperature=0.0: must be > 0"),
        ({"top_p": 1.5}, "top_p=1.5: must be in (0, 1]"),
        ({"top_p": 0}, "top_p=0: must be in (0, 1]"),
        ({"top_k": 0}, "top_k=0: must be >= 1"),
        ({"max_new_tokens": 0}, "max_new_tokens=0: must be >= 1"),
    ],
)
def test_values_no_decoder_can_use_are_refused_in_words(options: dict, said: str) -> None:
    """The Python API (inference(), generate_batch) gets what the magic's flags get: the value
    and the rule, before a model is touched, not transformers' error from inside generate."""
    with pytest.raises(ValueError) as info:
        GenerationOptions(**options)
    assert str(info.value).startswith(said)


def test_messages_put_system_first_and_keep_history() -> None:
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    messages = build_messages("c", GenerationOptions(system="sys"), history)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[-1]["content"] == "c"


def test_generate_is_deterministic_for_a_seed_and_frees_tensors(model_cache: Path) -> None:
    import dataclasses

    from qwen3_jupyter.models import ModelChoice, ModelHolder

    holder = ModelHolder()
    loaded = holder.get(ModelChoice("tiny", "cpu", "float32"))
    options = GenerationOptions(think=False, max_new_tokens=12, seed=11, ignore_eos=True)
    engine = EagerEngine(loaded)
    first = engine.generate("Hi", options)
    second = engine.generate("Hi", options)
    assert first.answer == second.answer and first.completion_tokens == 12
    assert first.token_ids == second.token_ids and len(first.token_ids) == 12
    assert all(isinstance(t, int) for t in first.token_ids)
    assert first.time_to_first_token_s is not None and first.time_to_first_token_s > 0
    assert first.stop_reason == "length"
    values = dataclasses.asdict(first).values()
    plain = (str, int, float, bool, type(None))
    assert all(
        isinstance(v, plain) or (isinstance(v, tuple) and all(isinstance(i, int) for i in v))
        for v in values
    )
    assert holder.unload()


def test_the_position_limit_follows_a_rope_scaling_the_user_configured() -> None:
    """Qwen3's model card extends the context with YaRN (factor 4 over 32,768 positions) and
    leaves max_position_embeddings at 40,960: the length check must allow 131,072 then."""
    from transformers import Qwen3Config

    from qwen3_jupyter.engines.local import position_limit

    assert position_limit(Qwen3Config(max_position_embeddings=40960)) == 40960
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert position_limit(Qwen3Config(max_position_embeddings=40960, rope_scaling=yarn)) == 131072
    assert position_limit(None) == 0, "unknown: no check"
