"""Language-model training for the zoo: token packing and one plain-PyTorch loop for pretraining and fine-tuning."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from sae_bench.sources.zoo.tokenizer import chat_tokens
from sae_bench.sources.zoo.training_specs import TrainingSchedule


@dataclass
class TrainingLog:
    """What a training run did: tokens seen (non-pad targets), loss at each step, wall time."""

    tokens_seen: int = 0
    losses: list[float] = field(default_factory=list)
    wall_s: float = 0.0


def pack_documents(tokenizer, texts: Sequence[str], context: int) -> torch.Tensor:
    """Rows of `context` tokens: BOS, then the next `context - 1` tokens of the EOS-joined document stream."""
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        stream.append(tokenizer.eos_token_id)
    body = context - 1
    n_rows = len(stream) // body
    rows = torch.tensor(stream[: n_rows * body], dtype=torch.long).view(n_rows, body)
    return torch.cat([torch.full((n_rows, 1), tokenizer.bos_token_id), rows], dim=1)


def pack_exchanges(tokenizer, pairs: Sequence, context: int) -> torch.Tensor:
    """Whole chat exchanges packed greedily into rows of `context` tokens, right-padded with the pad token."""
    rows: list[list[int]] = []
    current: list[int] = []
    for pair in pairs:
        ids, _ = chat_tokens(tokenizer, pair.user, pair.assistant)
        ids = ids[:context]
        if len(current) + len(ids) > context:
            rows.append(current)
            current = []
        current = current + ids
    if current:
        rows.append(current)
    packed = torch.full((len(rows), context), tokenizer.pad_token_id, dtype=torch.long)
    for index, row in enumerate(rows):
        packed[index, : len(row)] = torch.tensor(row)
    return packed


def train_causal_lm(
    model: torch.nn.Module,
    rows: torch.Tensor,
    schedule: TrainingSchedule,
    *,
    pad_token_id: int,
    on_step: Callable[[int, torch.nn.Module], None] | None = None,
    description: str = "train",
) -> TrainingLog:
    """Train an HF causal LM on `rows` (next-token loss on every non-pad target); `on_step(k, model)` after step k."""
    generator = torch.Generator().manual_seed(schedule.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay, betas=(0.9, 0.95)
    )
    log, order, cursor = TrainingLog(), torch.randperm(len(rows), generator=generator), 0
    start = time.perf_counter()
    model.train()
    for step in tqdm(range(schedule.steps), desc=description, leave=False):
        if cursor + schedule.batch_size > len(order):
            order, cursor = torch.randperm(len(rows), generator=generator), 0
        batch = rows[order[cursor : cursor + schedule.batch_size]]
        cursor += schedule.batch_size
        labels = batch.masked_fill(batch == pad_token_id, -100)
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr_at(step)
        loss = model(input_ids=batch, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        log.losses.append(loss.item())
        log.tokens_seen += int((labels[:, 1:] != -100).sum())
        if on_step is not None:
            on_step(step + 1, model)
    model.eval()
    log.wall_s = time.perf_counter() - start
    return log
