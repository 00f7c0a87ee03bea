"""The embedded offline default: a tiny model of the real Mistral architecture and its tokenizer.

No machine here can download the 14 GB Mistral-7B weights, so the default store holds a
``MistralForCausalLM`` built from a small ``MistralConfig`` with a byte-level BPE tokenizer trained here
on a generated newsroom corpus, and a Mistral-style ``[INST]`` chat template. It is saved with
``save_pretrained`` (safetensors) so ``AutoModelForCausalLM`` / ``AutoTokenizer`` load it exactly as they
load a published Mistral snapshot. Everything is seeded: two builds produce identical bytes.
"""

from __future__ import annotations

import random
from pathlib import Path

__all__ = ["TINY_CONFIG", "CHAT_TEMPLATE", "SPECIAL_TOKENS", "build_corpus", "build_tokenizer", "build_tiny_base"]

# Small enough to train adapters for every agent on 2 CPU cores in about a minute; deep enough (4 layers,
# GQA with 2 KV heads, SwiGLU MLP) that every code path of the 7B model is exercised.
TINY_CONFIG = dict(
    vocab_size=4096,
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    rope_theta=1_000_000.0,
    sliding_window=None,
    tie_word_embeddings=False,
)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]

# Mistral-7B-Instruct-v0.3 style: system text is folded into the first user turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\\n\\n' %}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + ns.system + message['content'] + ' [/INST]' }}"
    "{% set ns.system = '' %}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)

_WORDS = (
    "the a an of to in on for with by from at as is was are were be been has have had will would "
    "said says report reports reported according officials government minister council city police "
    "court judge election vote voters campaign policy economy market markets prices inflation rate "
    "bank banks growth jobs unemployment company companies shares investors profit loss budget tax "
    "health hospital doctors patients study scientists climate weather storm flood fire energy oil "
    "gas power school students teachers university research data survey poll percent million "
    "billion year years week month today yesterday tomorrow new old major local national global "
    "public private first last more less most least high low strong weak good bad positive negative "
    "neutral biased balanced persuasive factual claim claims evidence source sources verified false "
    "true supported refuted unverified summary article draft headline lede quote quotes editor "
    "editorial approve reject revise notes reasoning step steps conclusion because therefore however "
    "analysis sentiment bias score scores relevance relevant passage passages query candidate "
    "verdict issue issues critic fact checker journalist synthesizer analyst reranker chief "
    "team players match season win won lose lost game fans coach league"
).split()

_JSON_SNIPPETS = [
    '{"summary": "', '"}', '{"verdict": "approve", "issues": []}', '{"label": "supported"}',
    '{"sentiment": "positive", "bias": 0.2, "persuasion": 0.7}', '{"scores": [0.9, 0.1, 0.5]}',
    '{"steps": ["', '"], "conclusion": "', '{"decision": "revise", "notes": ["', '{"claims": [{"claim": "',
    '"evidence": [1, 2]', '"headline": "', '"body": "', 'true', 'false', 'null', '0.0', '1.0',
]


def build_corpus(n_sentences: int = 6000, seed: int = 0) -> list[str]:
    """Deterministic training text for the tokenizer: newsroom sentences, numbers and JSON fragments."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_sentences):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 18))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 2026)))
        sentence = " ".join(words)
        sentence = sentence[0].upper() + sentence[1:] + rng.choice([".", ".", "?", "!", ","])
        if rng.random() < 0.35:
            sentence = rng.choice(_JSON_SNIPPETS) + sentence + rng.choice(_JSON_SNIPPETS)
        lines.append(sentence)
    return lines


def build_tokenizer(vocab_size: int = TINY_CONFIG["vocab_size"], seed: int = 0):
    """Train a byte-level BPE tokenizer and wrap it as a Hugging Face ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(build_corpus(seed=seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        additional_special_tokens=["[INST]", "[/INST]"],
        model_max_length=TINY_CONFIG["max_position_embeddings"],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_base(out_dir: Path, seed: int = 0) -> Path:
    """Write the tiny Mistral base (config, safetensors weights, tokenizer) into ``out_dir``.

    Args:
        out_dir: an empty or missing directory.
        seed: seeds both the tokenizer corpus and the weight initialisation.

    Returns:
        ``out_dir``.
    """
    import torch
    from transformers import GenerationConfig, MistralConfig, MistralForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(seed=seed)
    config = MistralConfig(
        **{**TINY_CONFIG, "vocab_size": len(tokenizer)},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = MistralForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
