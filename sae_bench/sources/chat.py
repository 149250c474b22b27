"""Chat data for masked cases: prompts, greedy rollouts of a chat model (cached on disk), Kissane's position masks.

A row is prompt + rollout, right-padded. `mask[b, t]` means "splice / ablate the residual at t and score the
prediction made at t" (Kissane's `loss_mask`):
- `rollout`: from the last prompt token (it predicts the first reply token) to the second-to-last reply token;
- `user-prompt`: the user's text, from just after the start-of-turn tokens to just before the end-of-turn token.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from sae_bench.cache import cache_dir
from sae_bench.engine.backends import Model, backend_of
from sae_bench.engine.token_classes import ROLES


@dataclass(frozen=True)
class ChatPrompt:
    """A tokenised chat prompt ending with the assistant's turn, and where the user's text lies in it."""

    ids: list[int]
    user_start: int
    user_stop: int


def template_prompt(tokenizer, instruction: str) -> ChatPrompt:
    """Render `instruction` with the tokenizer's chat template; the template's parts and the instruction are
    tokenised separately, so the user's span is known exactly."""
    sentinel = "\x00INSTRUCTION\x00"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": sentinel}], add_generation_prompt=True, tokenize=False
    )
    prefix, suffix = text.split(sentinel)
    encode = lambda part: tokenizer(part, add_special_tokens=False)["input_ids"]  # noqa: E731
    head, body, tail = encode(prefix), encode(instruction), encode(suffix)
    return ChatPrompt(head + body + tail, len(head), len(head) + len(body))


def stored_prompt(ids: list[int], user_token: int, end_token: int) -> ChatPrompt:
    """A prompt stored as tokens: the user's text runs from after `<user-token>\n` to the first end-of-turn."""
    if user_token not in ids or end_token not in ids:
        raise ValueError("a chat prompt lacks its user or end-of-turn token; was it built with the chat template?")
    return ChatPrompt(ids, ids.index(user_token) + 2, ids.index(end_token))


@dataclass(frozen=True)
class ChatRows:
    """Prompt + rollout rows (right-padded), the user's span and the reply start in each, and each row's length."""

    tokens: Tensor
    prompt_length: Tensor
    length: Tensor
    user_start: Tensor
    user_stop: Tensor
    rollout_stop: Tensor | None = None
    """Last position of the rollout mask; None: length − 2 (the prediction of the last token is scored)."""

    def mask(self, kind: str) -> Tensor:
        """The (rows, pos) position mask of `kind`: "rollout" or "user-prompt"."""
        positions = torch.arange(self.tokens.shape[1])[None, :]
        if kind == "rollout":
            stop = self.length - 2 if self.rollout_stop is None else self.rollout_stop
            return (positions >= self.prompt_length[:, None] - 1) & (positions <= stop[:, None])
        if kind == "user-prompt":
            return (positions >= self.user_start[:, None]) & (positions < self.user_stop[:, None])
        raise ValueError(f"unknown chat mask {kind!r}; known: rollout, user-prompt")

    def roles(self) -> Tensor:
        """(rows, pos) int8: each position's role (`token_classes.ROLES`): the user's text, the reply (from the
        first reply token to the row's end), 0 elsewhere."""
        positions = torch.arange(self.tokens.shape[1])[None, :]
        user = (positions >= self.user_start[:, None]) & (positions < self.user_stop[:, None])
        reply = (positions >= self.prompt_length[:, None]) & (positions < self.length[:, None])
        roles = torch.zeros(self.tokens.shape, dtype=torch.int8)
        roles[user], roles[reply] = ROLES["user"], ROLES["assistant"]
        return roles

    def to_tensors(self) -> dict[str, Tensor]:
        names = ("tokens", "prompt_length", "length", "user_start", "user_stop", "rollout_stop")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


@torch.inference_mode()
def greedy_rollouts(
    model: Model,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    stop_token: int,
    pad_token: int,
    context: int,
) -> ChatRows:
    """Greedy continuations, prompts of equal length batched together; each stops after its `stop_token`."""
    too_long = [i for i, p in enumerate(prompts) if len(p.ids) >= context]
    if too_long:
        raise ValueError(f"prompts {too_long[:5]} fill the whole context of {context} tokens; nothing to roll out")
    rows = torch.full((len(prompts), context), pad_token, dtype=torch.long)
    prompt_length = torch.tensor([len(p.ids) for p in prompts])
    length = prompt_length.clone()
    by_length: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt.ids), []).append(index)
    for size, indices in sorted(by_length.items()):
        batch = torch.tensor([prompts[i].ids for i in indices], device=backend_of(model).device)
        new = min(max_new_tokens, context - size)
        out = backend_of(model).generate(batch, new, stop_token, pad_token).cpu()
        for row, index in zip(out, indices, strict=True):
            reply = row[size:].tolist()
            if stop_token in reply:
                reply = reply[: reply.index(stop_token) + 1]
            full = prompts[index].ids + reply
            rows[index, : len(full)] = torch.tensor(full)
            length[index] = len(full)
    starts = torch.tensor([p.user_start for p in prompts])
    stops = torch.tensor([p.user_stop for p in prompts])
    return ChatRows(rows, prompt_length, length, starts, stops)


def cached_rollouts(key: str, make) -> ChatRows:
    """`make()` once per `key`; later calls read the saved rows (delete the cache folder to regenerate)."""

    path = cache_dir() / "rollouts" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"
    if path.is_file():
        return ChatRows(**load_file(path))
    rows = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_file(rows.to_tensors(), tmp)
    tmp.replace(path)
    return rows
