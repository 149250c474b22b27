"""Chat prompts and Kissane's masks: the rollout and user-prompt positions are exactly the documented ones."""

import torch

from sae_bench.sources.chat import ChatRows, cached_rollouts, stored_prompt, template_prompt
from sae_bench.sources.loading import load_zoo_tokenizer
from sae_bench.sources.zoo.tokenizer import END_OF_TURN, USER, chat_tokens


def test_rollout_mask_runs_from_the_last_prompt_token_to_the_second_to_last_reply_token():
    rows = ChatRows(
        tokens=torch.zeros(2, 10, dtype=torch.long),
        prompt_length=torch.tensor([4, 3]),
        length=torch.tensor([8, 10]),
        user_start=torch.tensor([1, 1]),
        user_stop=torch.tensor([3, 2]),
    )
    rollout = rows.mask("rollout")
    assert rollout[0].nonzero().flatten().tolist() == [3, 4, 5, 6]
    assert rollout[1].nonzero().flatten().tolist() == [2, 3, 4, 5, 6, 7, 8]
    user = rows.mask("user-prompt")
    assert user[0].nonzero().flatten().tolist() == [1, 2] and user[1].nonzero().flatten().tolist() == [1]
    roles = rows.roles().tolist()  # 1: the user's text, 2: the reply up to the row's end, 0: template and padding
    assert roles == [[0, 1, 1, 0, 2, 2, 2, 2, 0, 0], [0, 1, 0, 2, 2, 2, 2, 2, 2, 2]]


def test_template_prompt_marks_exactly_the_instruction_tokens():
    tokenizer = load_zoo_tokenizer()
    prompt = template_prompt(tokenizer, "What does `os.path.join` do?")
    user_text = tokenizer.decode(prompt.ids[prompt.user_start : prompt.user_stop])
    assert user_text == "What does `os.path.join` do?"
    assert prompt.ids == chat_tokens(tokenizer, "What does `os.path.join` do?")[0]


def test_stored_prompt_finds_the_same_span_as_the_template():
    tokenizer = load_zoo_tokenizer()
    prompt = template_prompt(tokenizer, "Explain `zip` briefly.")
    user, end = tokenizer.convert_tokens_to_ids(USER), tokenizer.convert_tokens_to_ids(END_OF_TURN)
    stored = stored_prompt(prompt.ids, user, end)
    assert (stored.user_start, stored.user_stop) == (prompt.user_start, prompt.user_stop)


def test_rollouts_are_made_once_per_key(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_BENCH_CACHE", str(tmp_path))
    calls = []
    rows = ChatRows(
        *(torch.arange(6).view(2, 3),),
        torch.tensor([1, 2]),
        torch.tensor([3, 3]),
        torch.tensor([0, 0]),
        torch.tensor([1, 1]),
    )

    def make():
        calls.append(1)
        return rows

    first, second = cached_rollouts("k", make), cached_rollouts("k", make)
    assert len(calls) == 1 and torch.equal(first.tokens, second.tokens) and torch.equal(second.length, rows.length)
