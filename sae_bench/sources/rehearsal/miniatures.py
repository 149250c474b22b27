"""Miniature stand-ins for the hub models: the real HF architecture class and config fields, scaled down.

Each miniature keeps what the suite's code depends on: the architecture class, the layer count (so every hook a
case names exists), grouped-query / multi-query attention, QKV biases, tied embeddings, the vocabulary size where
a case spec names it (MetaMath's `vocab=32000` cut), and each family's tokenizer conventions: special tokens at
their real ids where they are low (Mistral's `<unk> <s> </s>`, Gemma's and Gemma 2's `<pad> <eos> <bos> <unk>` and
turn markers at 106/107), after the merges where they are high (Qwen's, Llama 3's), Qwen1.5's missing BOS, and the
real chat templates (Llama 3.1's without its default system turn), Gemma 3's five sliding-window layers to one
global layer, QK-norm and two rope bases. Widths are 64, weights random (seeded): a
rehearsal proves plumbing, never the published numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

D_MODEL = 64
"""Residual width of every miniature (so one miniature SAE width fits every hook)."""
N_HEADS, D_HEAD, D_MLP = 4, 16, 128
TOKENIZER_VOCAB = 640
"""Trained BPE entries per miniature tokenizer (the model's vocabulary may be larger, as Mistral's is)."""

MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}{% endif %}{% endfor %}"
)
"""Mistral-7B-Instruct-v0.1's template (user/assistant turns; no system role)."""
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""Qwen1.5-Chat's template, default system prompt included."""
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
"""Gemma-IT's template (Gemma 2 IT uses the same turns)."""
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\n\n' %}"
    "{% set messages = messages[1:] %}{% else %}{% set prefix = '' %}{% endif %}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + message['content'] | trim "
    "+ '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
"""Gemma 3 IT's template for text turns: Gemma 2's turns, a system message folded into the first user turn."""
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
"""Llama-3.1-Instruct's turns (the real template also writes a default system turn with the knowledge cut-off date;
the rehearsal proves plumbing, so the turns alone are kept)."""
LLAMA3_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)
"""Llama 3's special tokens, after the merges as in the real 128000+ ids."""

GEMMA_SPECIAL_TOKENS = (
    ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<2mass>", "[@BOS@]"]
    + [f"<unused{i}>" for i in range(99)]
    + ["<start_of_turn>", "<end_of_turn>"]
)
"""Gemma's first 108 ids, in the real order: <bos> is 2, <start_of_turn> 106, <end_of_turn> 107."""
GEMMA3_SPECIAL_TOKENS = (
    ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "[@BOS@]"]
    + [f"<unused{i}>" for i in range(99)]
    + ["<start_of_turn>", "<end_of_turn>"]
)
"""Gemma 3's first 107 ids, in the real order: <bos> is 2, <start_of_turn> 105, <end_of_turn> 106."""


@dataclass(frozen=True)
class TokenizerKind:
    """How a family tokenizes: the pre-tokenizer, its special tokens and which of them play which role."""

    family: str
    chat_template: str | None
    eos: str
    bos: str | None


@dataclass(frozen=True)
class Miniature:
    """One hub repo's stand-in: its HF config fields (scaled down) and its tokenizer kind."""

    repo: str
    architecture: str
    n_layers: int
    vocab_size: int
    tokenizer: TokenizerKind
    extra: tuple[tuple[str, object], ...] = ()
    """Other config fields of the real repo (kv heads, biases, tied embeddings, rope base, eps)."""

    def hf_config(self):
        from transformers import AutoConfig  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

        model_type = {
            "MistralForCausalLM": "mistral",
            "Qwen2ForCausalLM": "qwen2",
            "GemmaForCausalLM": "gemma",
            "Gemma2ForCausalLM": "gemma2",
            "Gemma3ForCausalLM": "gemma3_text",
            "LlamaForCausalLM": "llama",
        }
        fields = {
            "architectures": [self.architecture],
            "hidden_size": D_MODEL,
            "num_attention_heads": N_HEADS,
            "head_dim": D_HEAD,
            "intermediate_size": D_MLP,
            "num_hidden_layers": self.n_layers,
            "vocab_size": self.vocab_size,
            "initializer_range": 0.02,
        } | dict(self.extra)
        return AutoConfig.for_model(model_type[self.architecture], **fields)


_MISTRAL_TOKENS = TokenizerKind("llama", None, eos="</s>", bos="<s>")
_MISTRAL_CHAT_TOKENS = TokenizerKind("llama", MISTRAL_CHAT_TEMPLATE, eos="</s>", bos="<s>")
_QWEN_TOKENS = TokenizerKind("qwen", QWEN_CHAT_TEMPLATE, eos="<|endoftext|>", bos=None)
_QWEN_CHAT_TOKENS = TokenizerKind("qwen", QWEN_CHAT_TEMPLATE, eos="<|im_end|>", bos=None)
_GEMMA_TOKENS = TokenizerKind("gemma", None, eos="<eos>", bos="<bos>")
_GEMMA_IT_TOKENS = TokenizerKind("gemma", GEMMA_CHAT_TEMPLATE, eos="<eos>", bos="<bos>")
_GEMMA3_TOKENS = TokenizerKind("gemma3", None, eos="<eos>", bos="<bos>")
_GEMMA3_IT_TOKENS = TokenizerKind("gemma3", GEMMA3_CHAT_TEMPLATE, eos="<eos>", bos="<bos>")
_LLAMA3_TOKENS = TokenizerKind("llama3", None, eos="<|end_of_text|>", bos="<|begin_of_text|>")
_LLAMA3_CHAT_TOKENS = TokenizerKind("llama3", LLAMA3_CHAT_TEMPLATE, eos="<|eot_id|>", bos="<|begin_of_text|>")

_MISTRAL = (
    ("num_key_value_heads", 2),  # grouped-query attention, as Mistral-7B's 32 / 8
    ("max_position_embeddings", 32768),
    ("sliding_window", 4096),
    ("rope_theta", 10000.0),
    ("rms_norm_eps", 1e-5),
    ("tie_word_embeddings", False),
    ("bos_token_id", 1),
    ("eos_token_id", 2),
)
_QWEN = (
    ("num_key_value_heads", N_HEADS),
    ("max_position_embeddings", 32768),
    ("rope_theta", 1000000.0),
    ("rms_norm_eps", 1e-6),
    ("tie_word_embeddings", True),
    ("use_sliding_window", False),
)
_GEMMA = (
    ("num_key_value_heads", 1),  # multi-query attention, as Gemma-2B
    ("max_position_embeddings", 8192),
    ("rope_theta", 10000.0),
    ("rms_norm_eps", 1e-6),
    ("hidden_act", "gelu_pytorch_tanh"),
    ("hidden_activation", "gelu_pytorch_tanh"),
    ("tie_word_embeddings", True),
    ("pad_token_id", 0),
    ("eos_token_id", 1),
    ("bos_token_id", 2),
)
_GEMMA_VOCAB = len(GEMMA_SPECIAL_TOKENS) + TOKENIZER_VOCAB
_GEMMA2 = (
    ("num_key_value_heads", 2),  # grouped-query attention, as Gemma 2's 8 / 4 (2B) and 16 / 8 (9B)
    ("max_position_embeddings", 8192),
    ("rope_theta", 10000.0),
    ("rms_norm_eps", 1e-6),
    ("hidden_activation", "gelu_pytorch_tanh"),
    ("query_pre_attn_scalar", D_HEAD),  # = head_dim, as in 2B and 9B
    ("sliding_window", 4096),
    ("final_logit_softcapping", 30.0),
    ("attn_logit_softcapping", 50.0),
    ("tie_word_embeddings", True),
    ("pad_token_id", 0),
    ("eos_token_id", 1),
    ("bos_token_id", 2),
)
GEMMA3_SLIDING_WINDOW = 24
"""The miniatures' local attention window: shorter than a rehearsed row (the real 512 is longer than all of them), so
the rehearsal exercises the local layers' masks."""


def _gemma3_layer_types(n_layers: int) -> list[str]:
    """Gemma 3's pattern: five sliding-window layers, then one global layer."""
    return ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n_layers)]


def _gemma3(n_layers: int, eos: int | list[int]) -> tuple[tuple[str, object], ...]:
    return (
        ("num_key_value_heads", 1),  # multi-query attention, as 270M and 1B
        ("max_position_embeddings", 32768),
        (
            "rope_parameters",
            {
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            },
        ),
        ("rms_norm_eps", 1e-6),
        ("hidden_activation", "gelu_pytorch_tanh"),
        ("query_pre_attn_scalar", D_HEAD),  # = head_dim, as in 270M and 1B
        ("sliding_window", GEMMA3_SLIDING_WINDOW),
        ("layer_types", _gemma3_layer_types(n_layers)),
        ("tie_word_embeddings", True),
        ("pad_token_id", 0),
        ("eos_token_id", eos),
        ("bos_token_id", 2),
    )


_GEMMA3_VOCAB = len(GEMMA3_SPECIAL_TOKENS) + TOKENIZER_VOCAB
_LLAMA3 = (
    ("num_key_value_heads", 2),  # grouped-query attention, as Llama 3.1 8B's 32 / 8
    ("max_position_embeddings", 131072),
    ("rope_theta", 500000.0),
    (
        "rope_scaling",
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    ),
    ("rms_norm_eps", 1e-5),
    ("hidden_act", "silu"),
    ("tie_word_embeddings", False),
    ("bos_token_id", TOKENIZER_VOCAB),
    ("eos_token_id", TOKENIZER_VOCAB + 1),
)
_LLAMA3_VOCAB = TOKENIZER_VOCAB + len(LLAMA3_SPECIAL_TOKENS)

MINIATURES: dict[str, Miniature] = {
    m.repo: m
    for m in (
        Miniature("mistralai/Mistral-7B-v0.1", "MistralForCausalLM", 32, 32000, _MISTRAL_TOKENS, _MISTRAL),
        Miniature(
            "mistralai/Mistral-7B-Instruct-v0.1", "MistralForCausalLM", 32, 32000, _MISTRAL_CHAT_TOKENS, _MISTRAL
        ),
        # MetaMath added a [PAD] token: 32001 rows, which the case cuts back to 32000 (`vocab=32000`)
        Miniature("meta-math/MetaMath-Mistral-7B", "MistralForCausalLM", 32, 32001, _MISTRAL_TOKENS, _MISTRAL),
        Miniature("Qwen/Qwen1.5-0.5B", "Qwen2ForCausalLM", 24, TOKENIZER_VOCAB + 3, _QWEN_TOKENS, _QWEN),
        Miniature("Qwen/Qwen1.5-0.5B-Chat", "Qwen2ForCausalLM", 24, TOKENIZER_VOCAB + 3, _QWEN_CHAT_TOKENS, _QWEN),
        Miniature("google/gemma-2b", "GemmaForCausalLM", 18, _GEMMA_VOCAB, _GEMMA_TOKENS, _GEMMA),
        Miniature("google/gemma-2b-it", "GemmaForCausalLM", 18, _GEMMA_VOCAB, _GEMMA_IT_TOKENS, _GEMMA),
        Miniature(
            "shahdishank/gemma-2b-it-finetune-python-codes",
            "GemmaForCausalLM",
            18,
            _GEMMA_VOCAB,
            _GEMMA_IT_TOKENS,
            _GEMMA,
        ),
        Miniature("google/gemma-2-2b", "Gemma2ForCausalLM", 26, _GEMMA_VOCAB, _GEMMA_TOKENS, _GEMMA2),
        Miniature("google/gemma-2-2b-it", "Gemma2ForCausalLM", 26, _GEMMA_VOCAB, _GEMMA_IT_TOKENS, _GEMMA2),
        Miniature("google/gemma-2-9b", "Gemma2ForCausalLM", 42, _GEMMA_VOCAB, _GEMMA_TOKENS, _GEMMA2),
        Miniature("google/gemma-2-9b-it", "Gemma2ForCausalLM", 42, _GEMMA_VOCAB, _GEMMA_IT_TOKENS, _GEMMA2),
        # Gemma 3 270M and 1B: 18 and 26 layers; the IT models' generation ends at <end_of_turn> (106) too
        Miniature("google/gemma-3-270m", "Gemma3ForCausalLM", 18, _GEMMA3_VOCAB, _GEMMA3_TOKENS, _gemma3(18, 1)),
        Miniature(
            "google/gemma-3-270m-it", "Gemma3ForCausalLM", 18, _GEMMA3_VOCAB, _GEMMA3_IT_TOKENS, _gemma3(18, [1, 106])
        ),
        Miniature("google/gemma-3-1b-pt", "Gemma3ForCausalLM", 26, _GEMMA3_VOCAB, _GEMMA3_TOKENS, _gemma3(26, 1)),
        Miniature(
            "google/gemma-3-1b-it", "Gemma3ForCausalLM", 26, _GEMMA3_VOCAB, _GEMMA3_IT_TOKENS, _gemma3(26, [1, 106])
        ),
        Miniature("meta-llama/Llama-3.1-8B", "LlamaForCausalLM", 32, _LLAMA3_VOCAB, _LLAMA3_TOKENS, _LLAMA3),
        Miniature(
            "meta-llama/Llama-3.1-8B-Instruct", "LlamaForCausalLM", 32, _LLAMA3_VOCAB, _LLAMA3_CHAT_TOKENS, _LLAMA3
        ),
    )
}
"""Every hub repo a case names, by repo id. A case naming another repo makes the rehearsal fail with that name."""


def miniature(repo: str) -> Miniature:
    if repo not in MINIATURES:
        raise KeyError(
            f"no rehearsal miniature for the hub repo {repo!r}: add one to sae_bench/sources/rehearsal/miniatures.py "
            f"(known: {', '.join(sorted(MINIATURES))})"
        )
    return MINIATURES[repo]


def training_texts() -> Iterator[str]:
    """Text every CPython carries (pydoc's topic help), sorted, for the miniature tokenizers and datasets."""
    from pydoc_data.topics import topics  # noqa: PLC0415 - a megabyte of text, read only to train a tokenizer

    for name in sorted(topics):
        yield topics[name]


def build_tokenizer(kind: TokenizerKind, vocab_size: int | None = None):
    """A `PreTrainedTokenizerFast` of the family's kind, trained deterministically on `training_texts()`; with
    `vocab_size`, filled up to it with ordinary tokens `<filler_N>`, so that every id the model can emit decodes
    to text that encodes back to it (as in the real tokenizers, whose vocabulary is the model's)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

    if kind.family in ("qwen", "llama3"):  # byte-level BPE; special tokens after the merges (Qwen's 151643+,
        tokenizer = Tokenizer(models.BPE())  # Llama 3's 128000+)
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=TOKENIZER_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        tokenizer.train_from_iterator(training_texts(), trainer=trainer)
        if kind.family == "qwen":
            tokenizer.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
            special = {"eos_token": kind.eos, "pad_token": "<|endoftext|>", "bos_token": None}
        else:  # Llama 3 prepends <|begin_of_text|> to every text
            tokenizer.add_special_tokens(list(LLAMA3_SPECIAL_TOKENS))
            bos_id = tokenizer.token_to_id(kind.bos)
            tokenizer.post_processor = processors.TemplateProcessing(
                single=f"{kind.bos} $A", pair=f"{kind.bos} $A {kind.bos} $B", special_tokens=[(kind.bos, bos_id)]
            )
            special = {"eos_token": kind.eos, "bos_token": kind.bos}
    else:  # SentencePiece-style BPE: spaces as "▁", byte fallback, special tokens at the real low ids
        specials = {"llama": ["<unk>", "<s>", "</s>"], "gemma": GEMMA_SPECIAL_TOKENS, "gemma3": GEMMA3_SPECIAL_TOKENS}[
            kind.family
        ]
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        # newlines never merge with text (SentencePiece keeps "\n" apart: Llama as a byte, Gemma as its own token)
        newline = pre_tokenizers.Split("\n", behavior="isolated")
        if kind.family == "llama":
            metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
            tokenizer.pre_tokenizer = pre_tokenizers.Sequence([newline, metaspace])
            tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        else:  # Gemma (1, 2 and 3): spaces become "▁" that start the next piece, no prefix space
            tokenizer.normalizer = normalizers.Replace(" ", "▁")
            word_starts = pre_tokenizers.Split("▁", behavior="merged_with_next")
            tokenizer.pre_tokenizer = pre_tokenizers.Sequence([newline, word_starts])
            tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback()])
        trainer = trainers.BpeTrainer(
            vocab_size=len(specials) + TOKENIZER_VOCAB, special_tokens=list(specials), show_progress=False
        )
        tokenizer.train_from_iterator(training_texts(), trainer=trainer)
        bos_id = tokenizer.token_to_id(kind.bos)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{kind.bos} $A", pair=f"{kind.bos} $A {kind.bos} $B", special_tokens=[(kind.bos, bos_id)]
        )
        special = {"eos_token": kind.eos, "bos_token": kind.bos, "unk_token": "<unk>"}
        special |= {"pad_token": "<pad>"} if kind.family.startswith("gemma") else {}
    if vocab_size is not None and vocab_size > tokenizer.get_vocab_size():
        from tokenizers import AddedToken  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

        fillers = range(tokenizer.get_vocab_size(), vocab_size)
        tokenizer.add_tokens([AddedToken(f"<filler_{i}>", normalized=False, special=False) for i in fillers])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, chat_template=kind.chat_template, model_max_length=1 << 20, **special
    )


def save_miniature(spec: Miniature, directory: Path, *, seed: int) -> None:
    """Save the miniature's weights (random, seeded), config and tokenizer as `save_pretrained` writes them."""
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(spec.hf_config(), dtype=torch.float32)
    model.save_pretrained(directory)
    build_tokenizer(spec.tokenizer, spec.vocab_size).save_pretrained(directory)
