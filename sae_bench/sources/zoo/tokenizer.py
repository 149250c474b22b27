"""The zoo tokenizer: byte-level BPE trained on the pretraining split, with BOS/EOS/pad and chat-template tokens."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"
USER, ASSISTANT, END_OF_TURN = "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = (BOS, EOS, PAD, USER, ASSISTANT, END_OF_TURN)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A `PreTrainedTokenizerFast` (byte-level BPE, special tokens first) trained on `texts`, deterministically."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: PLC0415 - transformers loads torch, and this module stays light (sae-bench cases, the rehearsal's set-up)
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415 - transformers loads torch, and this module stays light (sae-bench cases, the rehearsal's set-up)

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[USER, ASSISTANT, END_OF_TURN],
        chat_template=CHAT_TEMPLATE,
        model_max_length=1 << 20,
    )


def load_tokenizer(directory: str | Path):
    """Load a saved zoo tokenizer: TransformerLens needs `from_pretrained` from a folder (docs/design.md §8)."""
    from transformers import AutoTokenizer  # noqa: PLC0415 - transformers loads torch, and this module stays light (sae-bench cases, the rehearsal's set-up)

    return AutoTokenizer.from_pretrained(str(directory))


def chat_tokens(tokenizer, user: str, assistant: str | None = None) -> tuple[list[int], int]:
    """Token ids of one chat exchange and the index where the assistant's reply starts."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if assistant is None:
        return prompt_ids, len(prompt_ids)
    reply_ids = tokenizer(f"{assistant}{END_OF_TURN}\n", add_special_tokens=False)["input_ids"]
    return prompt_ids + reply_ids, len(prompt_ids)
