"""A tiny random-weight Llama model folder, built locally with no download.

The folder holds ``config.json`` (a 2-layer Llama, head size 32), ``generation_config.json``
and a word-level tokenizer built with the ``tokenizers`` package (``tokenizer.json`` plus
``tokenizer_config.json`` and ``special_tokens_map.json`` with a chat template). vLLM serves it
with ``--load-format dummy``, which fills the weights with random values.

Tokenization is deliberately simple and exact, so that tests and the profiler can build prompts
of a known length:

* the input is split on whitespace and punctuation; each piece is one token (a word not in the
  vocabulary becomes ``<unk>``, still one token);
* no BOS token is added, so ``" ".join([PROMPT_WORD] * n)`` is exactly ``n`` prompt tokens;
* the chat template wraps each message as ``<|role|> content <|end|>`` (role and end markers are
  single special tokens) and ends with ``<|assistant|>`` when a generation prompt is asked for,
  see :func:`chat_prompt_tokens`.

Run as a script (``python tiny_model.py DEST``) to build the folder with another interpreter,
e.g. the vLLM virtualenv's, when the calling environment lacks ``tokenizers``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

MODEL_NAME = "tiny-llama"
FORMAT_VERSION = 1
"""Bumped whenever the folder's content changes, so an outdated cached folder is rebuilt."""

PROMPT_WORD = "hello"
"""A word that is exactly one token; ``n`` copies joined by spaces are ``n`` tokens."""

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>",
                  "<|end|>"]
UNK, BOS, EOS, PAD = SPECIAL_TOKENS[:4]

# Built-in text whose distinct words (in order of first appearance) form the vocabulary.
_CORPUS_TEXT = """
hello world the a an and or but if then else when while for to of in on at by with from
as is are was were be been being have has had do does did will would can could should may
might must shall this that these those it its they them their there here what which who whom
whose why how all any both each few more most other some such no nor not only own same so than
too very just one two three four five six seven eight nine ten zero
model token prompt request response server client cluster node pod queue batch cache memory
time latency throughput prefill decode instance replica scale scaling autoscaler rate load
first last next previous new old long short small large fast slow high low up down in out
i you he she we me him her us my your his our yes ok please thank thanks
tell me about write story poem code test data value number list name question answer help
"""
_CORPUS = _CORPUS_TEXT.split()
_PUNCTUATION = list(".,;:!?'\"()[]{}-_/\\*+=<>@#$%^&|~`")
_DIGITS = list("0123456789")


def vocabulary() -> dict[str, int]:
    """The tokenizer vocabulary: special tokens first, then words, punctuation and digits."""
    vocab: dict[str, int] = {}
    for token in [*SPECIAL_TOKENS, *_CORPUS, *_PUNCTUATION, *_DIGITS]:
        vocab.setdefault(token, len(vocab))
    # Pad to a multiple of 64 with filler tokens so that the embedding shape is tidy.
    filler = 0
    while len(vocab) % 64:
        vocab[f"w{filler}"] = len(vocab)
        filler += 1
    return vocab


CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|> {{ message['content'] }} <|end|> "
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def chat_prompt_tokens(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> int:
    """Number of prompt tokens the chat template yields for ``messages``.

    Exact when every content word is separated by spaces and contains no punctuation, and
    every role is one of system/user/assistant.
    """
    total = sum(2 + len(m["content"].split()) for m in messages)
    return total + (1 if add_generation_prompt else 0)


def config(vocab_size: int) -> dict[str, Any]:
    """``config.json`` of a 2-layer Llama with head size 32 (hidden 128, 4 heads)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "hidden_act": "silu",
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "vocab_size": vocab_size,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 3,
        "torch_dtype": "bfloat16",
        "use_cache": True,
    }


def _tokenizer_json() -> str:
    """Serialized ``tokenizers`` tokenizer: WordLevel, whitespace/punctuation pre-split."""
    # Only the vLLM virtualenv may have tokenizers (see build_tiny_llama).
    from tokenizers import (  # type: ignore[import-not-found, unused-ignore]
        Tokenizer,
        decoders,
        normalizers,
        pre_tokenizers,
    )
    from tokenizers.models import WordLevel  # type: ignore[import-not-found, unused-ignore]

    tok = Tokenizer(WordLevel(vocab=vocabulary(), unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.add_special_tokens(SPECIAL_TOKENS)
    return str(tok.to_str(pretty=True))


def _tokenizer_config() -> dict[str, Any]:
    vocab = vocabulary()
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 8192,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "pad_token": PAD,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(vocab[t]): {
                "content": t, "lstrip": False, "rstrip": False, "normalized": False,
                "single_word": False, "special": True,
            }
            for t in SPECIAL_TOKENS
        },
    }


def _dump(obj: object) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def _files() -> dict[str, str]:
    vocab_size = len(vocabulary())
    dump = _dump
    return {
        "config.json": dump(config(vocab_size)),
        "generation_config.json": dump(
            {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3, "do_sample": False}
        ),
        "tokenizer.json": _tokenizer_json(),
        "tokenizer_config.json": dump(_tokenizer_config()),
        "special_tokens_map.json": dump(
            {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD}
        ),
        "chat_template.jinja": CHAT_TEMPLATE + "\n",
        ".pdscaler-tiny-model": f"{MODEL_NAME} format {FORMAT_VERSION}\n",
    }


def is_built(dest: Path) -> bool:
    marker = dest / ".pdscaler-tiny-model"
    return marker.is_file() and marker.read_text() == f"{MODEL_NAME} format {FORMAT_VERSION}\n"


def build_tiny_llama(dest: Path, python: str | os.PathLike[str] | None = None) -> Path:
    """Build the model folder at ``dest`` (idempotent) and return ``dest``.

    Needs the ``tokenizers`` package: in this interpreter, or in ``python`` (another
    interpreter, e.g. the vLLM virtualenv's) which then runs this file as a script.
    """
    dest = Path(dest)
    if is_built(dest):
        return dest
    # Compare without resolving symlinks: a virtualenv's python links to its base interpreter.
    if python is not None and os.path.abspath(python) != os.path.abspath(sys.executable):
        proc = subprocess.run(
            [str(python), str(Path(__file__).resolve()), str(dest)],
            capture_output=True, text=True, timeout=120, check=False,
        )
        if proc.returncode != 0 or not is_built(dest):
            raise RuntimeError(
                f"building the tiny model with {python} failed (code {proc.returncode}):\n"
                + proc.stderr[-3000:]
            )
        return dest
    files = _files()
    dest.mkdir(parents=True, exist_ok=True)
    # Write each file atomically and the marker last, so a concurrent or interrupted build
    # never leaves a folder that looks complete.
    for name, text in files.items():
        with tempfile.NamedTemporaryFile("w", dir=dest, delete=False, suffix=".tmp") as fh:
            fh.write(text)
        os.chmod(fh.name, 0o644)
        os.replace(fh.name, dest / name)
    return dest


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: tiny_model.py DEST", file=sys.stderr)
        return 2
    print(build_tiny_llama(Path(argv[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
