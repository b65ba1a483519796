"""Prompts of an exact token length that never hit vLLM's prefix cache.

Two ways to get an exact length:

* ``ids`` (default): the prompt is a list of token ids, which ``/v1/completions`` accepts as
  is: exact and tokenizer-free. Ids are drawn uniformly from a range that every vocabulary of
  interest holds (default 10..249, below the tiny test model's 256), independently per request
  and position, so two prompts share no leading block and the prefix cache never hits.
* ``text``: the prompt is text, built to length with the served model's tokenizer through
  vLLM's ``/detokenize`` and ``/tokenize`` endpoints (random ids are decoded to text, the text
  is re-tokenized and the id count adjusted until the text is exactly the wanted length).
  Servers without those endpoints fall back to one token per whitespace-separated word. The
  length is checked again against the usage every response reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from pdscaler.profiler.client import CompletionClient, EndpointError

PromptMode = Literal["ids", "text"]

#: Words for the whitespace fallback of text prompts (one token each on word-level servers).
FALLBACK_WORDS = (
    "time", "latency", "token", "prompt", "request", "model", "server", "queue", "batch",
    "cache", "memory", "value", "number", "first", "last", "next", "long", "short", "small",
    "large", "fast", "slow", "high", "low", "data", "answer", "question", "help",
)


@dataclass
class PromptFactory:
    """Makes distinct prompts of exact lengths; reproducible for a given seed."""

    mode: PromptMode = "ids"
    id_low: int = 10
    id_high: int = 250
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.id_low < self.id_high:
            raise ValueError(
                f"token id range {self.id_low}:{self.id_high} is empty; use LOW:HIGH, LOW < HIGH"
            )
        self._rng = np.random.default_rng(self.seed)
        self._tokenizer_ok: bool | None = None

    def ids(self, length: int) -> list[int]:
        """``length`` random token ids (a distinct prompt each call)."""
        return [int(v) for v in self._rng.integers(self.id_low, self.id_high, size=length)]

    async def make(self, client: CompletionClient, length: int) -> list[int] | str:
        """A prompt of exactly ``length`` tokens for ``client``'s model."""
        if self.mode == "ids":
            return self.ids(length)
        if self._tokenizer_ok is not False:
            try:
                text = await self._text_by_tokenizer(client, length)
                self._tokenizer_ok = True
                return text
            except EndpointError:
                if self._tokenizer_ok:
                    raise
                self._tokenizer_ok = False
        picks = self._rng.integers(0, len(FALLBACK_WORDS), size=length)
        return " ".join(FALLBACK_WORDS[int(i)] for i in picks)

    async def _text_by_tokenizer(self, client: CompletionClient, length: int) -> str:
        ids = self.ids(length)
        for _ in range(8):
            decoded = await client.post_json(
                "/detokenize", {"model": client.model, "tokens": ids}
            )
            text = str(decoded.get("prompt", ""))
            counted = await client.post_json("/tokenize", {"model": client.model, "prompt": text})
            count = int(counted.get("count", len(counted.get("tokens", []))))
            if count == length:
                return text
            if count < length:
                ids = ids + self.ids(length - count)
            else:
                ids = ids[: max(1, len(ids) - (count - length))]
        raise EndpointError(
            f"could not build a text prompt of exactly {length} tokens with the server's "
            "tokenizer; use --prompt-mode ids"
        )
