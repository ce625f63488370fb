"""Throwaway test models, built locally in seconds: random Llama weights and a character-level tokenizer.

Why character-level: the engine's exactness across strong spans needs span text to re-tokenise to the ids
the model generated. A random model emits arbitrary id sequences, which a BPE vocabulary would merge
differently on re-tokenisation; with one token per character every id sequence round-trips. The two
alphabets hold the same characters under different ids and different special tokens, so weak and strong
remain a genuine cross-tokenizer pair.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

# Printable ASCII without the rarely useful vertical tab / form feed / carriage return.
CHARS = [c for c in string.printable if c not in "\x0b\x0c\r"]

ALPHABETS = {
    "weak": {
        "specials": ["<|pad|>", "<|im_start|>", "<|im_end|>"],
        "bos": None,
        "eos": "<|im_end|>",
        "chars": CHARS,
        "template": (
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        ),
    },
    "strong": {
        "specials": ["<pad>", "<s>", "</s>"],
        "bos": "<s>",
        "eos": "</s>",
        "chars": list(reversed(CHARS)),
        "template": (
            "{% for m in messages %}<s>[{{ m['role'] }}] {{ m['content'] }}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<s>[assistant] {% endif %}"
        ),
    },
}


def build_tiny_model(out: Path, *, alphabet: str, seed: int) -> dict:
    """Write a tiny random Llama model with a character-level tokenizer to `out`; return its provenance."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    spec = ALPHABETS[alphabet]
    vocab = {tok: i for i, tok in enumerate(spec["specials"] + spec["chars"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=spec["specials"][0]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(spec["specials"])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=spec["specials"][0],
        bos_token=spec["bos"],
        eos_token=spec["eos"],
        unk_token=spec["specials"][0],
    )
    fast.chat_template = spec["template"]

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 32: the smallest vLLM's CPU attention kernel supports
        num_key_value_heads=1,
        max_position_embeddings=1024,
        # Large init so next-token distributions are peaked: greedy choices then do not flip under the
        # tiny numeric differences between batch compositions.
        initializer_range=0.5,
        tie_word_embeddings=False,
        bos_token_id=vocab[spec["bos"]] if spec["bos"] else None,
        eos_token_id=vocab[spec["eos"]],
        pad_token_id=0,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    # Special tokens other than EOS get a zero output row (logit 0, far below the best character's): a random
    # model that emitted <pad> mid-answer would write something no text interface can hand over.
    with torch.no_grad():
        for tok in spec["specials"]:
            if tok != spec["eos"]:
                model.lm_head.weight[vocab[tok]] = 0.0
    model.save_pretrained(out)
    fast.save_pretrained(out)
    # The generation config would otherwise carry transformers' defaults into vLLM's sampling defaults.
    (out / "generation_config.json").unlink(missing_ok=True)
    info = {"source": "built locally", "build": "tiny", "alphabet": alphabet, "seed": seed}
    (out / "tiny.json").write_text(json.dumps(info))
    return info
