"""Kissane et al.'s chat prompts and loss masks (`utils.py`, `alpaca_transfer_script.py`), reproduced exactly.

His templates, not the tokenizers' chat templates (those insert Qwen1.5's default system prompt and space Mistral
differently). A row is the filled template plus the decoded completion, cut before the end-of-turn token and
tokenised as one string with the tokenizer's default special tokens (Mistral and Gemma get their BOS). With `i` the
first match of his end-of-instruction tokens and `last` the row's last position:
- `user-prompt` covers positions len(soi) … i − 1 (for Gemma his soi tokens omit `<bos>`, so the span starts one
  token early, as his did);
- `rollout` covers i + len(eoi) − 1 … last − 2 (his mask drops the last two positions of each row).
"""

from __future__ import annotations

import torch

from sae_bench.sources.chat import ChatPrompt, ChatRows

TEMPLATES = {
    "mistral": " [INST] {instruction} [/INST] ",
    "qwen": "<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n",
    "gemma": "<start_of_turn>user\n{instruction}<end_of_turn>\n<start_of_turn>model\n",
}
END_OF_TURN = {"mistral": "</s>", "qwen": "<|im_end|>", "gemma": "<eos>"}
"""The text his completions are cut before."""


def _template(name: str) -> str:
    if name not in TEMPLATES:
        raise ValueError(f"no Kissane template {name!r}; known: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def markers(tokenizer, name: str) -> tuple[list[int], list[int]]:
    """His start- and end-of-instruction token ids (soi, eoi), including his "tokenization hack" for Mistral."""
    head, tail = _template(name).split("{instruction}")
    if name == "mistral":
        return tokenizer.encode(head, add_special_tokens=True)[:-1], tokenizer.encode(tail, add_special_tokens=False)[
            :-1
        ]
    special = name == "qwen"  # Qwen's `encode` default; Gemma's with add_special_tokens=False
    return tokenizer.encode(head, add_special_tokens=special), tokenizer.encode(tail, add_special_tokens=special)


def _find(ids: list[int], sub: list[int]) -> int:
    for i in range(len(ids) - len(sub) + 1):
        if ids[i : i + len(sub)] == sub:
            return i
    raise ValueError(f"the end-of-instruction tokens {sub} do not occur in the row; is this the right template?")


def prompt(tokenizer, name: str, instruction: str) -> ChatPrompt:
    """The filled template as he tokenised it, with his user span."""
    ids = tokenizer(_template(name).format(instruction=instruction))["input_ids"]
    soi, eoi = markers(tokenizer, name)
    return ChatPrompt(ids, len(soi), _find(ids, eoi))


def rows(
    generated: ChatRows, instructions: list[str], tokenizer, name: str, *, stop_token: int, context: int
) -> ChatRows:
    """His rows from greedy rollouts: decode each completion, cut it before the end of turn, re-tokenise the filled
    template plus completion as one string, and place his masks."""
    soi, eoi = markers(tokenizer, name)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_token
    tokens = torch.full((len(instructions), context), pad, dtype=torch.long)
    fields = {
        k: torch.zeros(len(instructions), dtype=torch.long)
        for k in ("prompt_length", "length", "user_start", "user_stop", "rollout_stop")
    }
    for b, instruction in enumerate(instructions):
        reply = generated.tokens[b, generated.prompt_length[b] : generated.length[b]].tolist()
        completion = tokenizer.decode(reply, skip_special_tokens=False)
        end = completion.find(END_OF_TURN[name])
        completion = completion if end == -1 else completion[:end]  # (his find == -1 case dropped a character)
        ids = tokenizer(_template(name).format(instruction=instruction) + completion)["input_ids"][:context]
        i = _find(ids, eoi)
        tokens[b, : len(ids)] = torch.tensor(ids)
        values = {
            "prompt_length": i + len(eoi),
            "length": len(ids),
            "user_start": len(soi),
            "user_stop": i,
            "rollout_stop": len(ids) - 3,
        }
        for key, value in values.items():
            fields[key][b] = value
    return ChatRows(tokens, **fields)
