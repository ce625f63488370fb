"""Throwaway test models, built locally in seconds: random Llama weights and a character-level tokenizer.

`BUILD_VERSION` is recorded with every built model; a cached model built by an older version of this file is
built again (provision.py compares them).

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

BUILD_VERSION = 3  # 2: 8192-token contexts, the Gemma-2-templated judge, byte-level BPE models; 3: a surer judge

# Gemma-2's chat template, as google/gemma-2-9b-it ships it: it raises on a system message, as the `paper`
# judge does, so the judge path is tested against the real refusal.
GEMMA2_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
CONTEXT = 8192  # tokens: a character-level judge prompt (AlpacaEval template, instruction, two answers) fits

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
    # The tiny judge: a third vocabulary, Gemma-2's chat template, and an output layer that answers with one
    # of the judge's labels ("m" or "M") nearly always, so a tiny evaluation gets verdicts (random ones).
    "judge": {
        "specials": ["<pad>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"],
        "bos": "<bos>",
        "eos": "<eos>",
        "chars": CHARS[::2] + CHARS[1::2],
        "template": GEMMA2_TEMPLATE,
        "answers": ("m", "M"),
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
        max_position_embeddings=CONTEXT,
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
        if "answers" in spec:
            # Only the two labels have output rows. A residual dimension that every embedding sets and no layer
            # writes lifts both far above every other token (which sit at 0); opposite random rows on the other
            # dimensions decide between them, differently per prompt.
            a, b = (vocab[t] for t in spec["answers"])
            lift = config.hidden_size - 1
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight[lift] = 0.0
                layer.mlp.down_proj.weight[lift] = 0.0
            model.model.embed_tokens.weight[:, lift] = 10.0
            model.model.norm.weight[lift] = 20.0  # large after the final norm, without shrinking the other dims
            row = model.lm_head.weight[a].clone()
            row[lift] = 0.0
            model.lm_head.weight.zero_()
            model.lm_head.weight[a], model.lm_head.weight[b] = row, -row
            model.lm_head.weight[a, lift] = model.lm_head.weight[b, lift] = 40.0
    model.save_pretrained(out)
    fast.save_pretrained(out)
    # The generation config would otherwise carry transformers' defaults into vLLM's sampling defaults.
    (out / "generation_config.json").unlink(missing_ok=True)
    info = {"source": "built locally", "build": "tiny", "alphabet": alphabet, "seed": seed}
    info["version"] = BUILD_VERSION
    (out / "tiny.json").write_text(json.dumps(info))
    return info


# ---------------------------------------------------------------- byte-level BPE tiny models

# Words the model may write (each one token with its leading space, as in GPT-2-style vocabularies), and the
# characters it writes split across tokens: the quirks of real BPE models that character-level ones hide.
BPE_WORDS = {
    "weak": ("the", "a", "cat", "sat", "on", "mat", "and", "then", "it", "ran", "far", "away", "bicycle", "gear",
             "works", "with", "wheel", "turns", "The", "It", "first", "point", "is", "of", "to", "in", "water"),
    "strong": ("the", "a", "dog", "sits", "by", "door", "and", "so", "it", "runs", "home", "chain", "system",
               "moves", "The", "It", "second", "step", "is", "of", "to", "for", "you", "light", "rain", "sun"),
}  # fmt: skip
BPE_PUNCT = (".", ",", ":", "!", "?", "\n")
# Characters with their canonical tokens (" é" = " \xc3" + "\xa9"); each token after the first is forced.
BPE_SPLIT = ((" \xc3", "\xa9"), (" \xe4", "\xb8", "\xad"), (" \xf0\x9f", "\x98\x80"))  # " é", " 中", " 😀"


def _byte_symbols() -> dict[int, str]:
    """GPT-2's byte -> printable character map, which byte-level BPE vocabularies are written in."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def build_tiny_bpe_model(out: Path, *, alphabet: str, seed: int) -> dict:
    """A tiny random Llama with a byte-level BPE tokenizer whose greedy text re-tokenises to the same ids.

    A random model would emit id sequences BPE merges differently, so its output is confined by construction:
    only "safe" tokens (whole words with their leading space, punctuation, the first token of a split
    character, end of sequence) have output rows, one pair of them opposite (so the best safe logit is always
    above the 0 of every other token), and each later token of a split character is forced by a residual
    dimension of its own that only the previous token writes. The build checks itself with transformers:
    greedy answers use only those tokens, split characters come out whole, and the text round-trips.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    sym = _byte_symbols()

    def spell(s: str) -> str:  # a unit string of raw bytes (latin-1 spelled) in vocabulary characters
        return "".join(sym[b] for b in s.encode("latin-1"))

    specials = ["<|pad|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for b in range(256):
        vocab.setdefault(sym[b], len(vocab))
    merges: list[tuple[str, str]] = []

    def add_chain(symbols: list[str]) -> None:  # merge left to right into one token
        acc = symbols[0]
        for s in symbols[1:]:
            if acc + s not in vocab:
                merges.append((acc, s))
                vocab[acc + s] = len(vocab)
            acc += s

    words = BPE_WORDS[alphabet]
    for w in words:
        add_chain([sym[b] for b in (" " + w).encode()])
    for unit in BPE_SPLIT:
        for tok in unit:
            if len(tok) > 1:
                add_chain([sym[b] for b in tok.encode("latin-1")])
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>")
    fast.chat_template = ALPHABETS["weak"]["template"]  # ChatML

    safe = [vocab[spell(" " + w)] for w in words] + [vocab[sym[ord(p)]] for p in BPE_PUNCT]
    safe += [vocab[spell(u[0])] for u in BPE_SPLIT] + [vocab["<|im_end|>"]]
    forced = [(vocab[spell(u[j - 1])], vocab[spell(u[j])]) for u in BPE_SPLIT for j in range(1, len(u))]

    torch.manual_seed(seed)
    hidden = 64
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=CONTEXT, initializer_range=0.5,
        tie_word_embeddings=False, eos_token_id=vocab["<|im_end|>"], pad_token_id=0, torch_dtype="float32",
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    dims = list(range(hidden - len(forced), hidden))  # one residual dimension per forced step
    with torch.no_grad():
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        for layer in model.model.layers:  # nothing but the embedding writes the reserved dimensions
            layer.self_attn.o_proj.weight[dims] = 0.0
            layer.mlp.down_proj.weight[dims] = 0.0
        emb[:, dims] = 0.0
        rows = head[safe].clone()
        rows[:, dims] = 0.0
        rows[1] = -rows[0]  # an opposite pair: max over safe rows of row . h >= |row_0 . h| > 0
        head.zero_()
        head[safe] = rows
        for d, (before, after) in zip(dims, forced, strict=True):
            emb[before, d] = 1000.0  # dominates the final norm: the next token is `after`
            head[after, d] = 10.0
    model.save_pretrained(out)
    fast.save_pretrained(out)
    (out / "generation_config.json").unlink(missing_ok=True)
    _check_bpe_model(model, fast, set(safe) | {a for _, a in forced})
    info = {"source": "built locally", "build": "tiny-bpe", "alphabet": alphabet, "seed": seed}
    info["version"] = BUILD_VERSION
    (out / "tiny.json").write_text(json.dumps(info))
    return info


def _check_bpe_model(model, tokenizer, allowed: set[int]) -> None:
    """Greedy answers to a few prompts use only the allowed tokens and their text re-tokenises to the ids."""
    import torch

    prompts = ["Write a haiku.", "Explain gravity briefly.", "List two colors, café and 中文 😀."]
    for p in prompts:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                 tokenize=False)  # fmt: skip
        ids = tokenizer.encode(rendered, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=120, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=0)  # fmt: skip
        new = out[0, len(ids) :].tolist()
        if new and new[-1] == tokenizer.eos_token_id:
            new = new[:-1]
        bad = [t for t in new if t not in allowed]
        text = tokenizer.decode(new)
        if bad or "\ufffd" in text or tokenizer.encode(text, add_special_tokens=False) != new:
            raise RuntimeError(f"tiny BPE model self-check failed on {p!r}: {text!r} (bad tokens {bad})")
