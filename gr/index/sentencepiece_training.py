"""Training a sentencepiece model with T5's ids (PAD 0, EOS 1, UNK 2).

Deterministic (seeded, a fixed thread count), digits split, long lines cut
at words so that sentencepiece does not drop them; the model file is written
atomically. gr/index/vocab.py's `Vocabulary` adds docid tokens after its
pieces.
"""

import io
from typing import Iterable, Iterator

import sentencepiece as spm

from gr import atomic_io
from gr.index import vocab as vocab_lib


def _training_sentences(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
  """Yields the non-empty lines of `texts`, cut at words to <= max_bytes.

  sentencepiece silently drops sentences longer than its
  `max_sentence_length`, so long document bodies are cut into pieces.
  """
  for text in texts:
    for line in text.splitlines():
      chunk, size = [], 0
      for word in line.split():
        word_bytes = len(word.encode("utf-8")) + 1
        if chunk and size + word_bytes > max_bytes:
          yield " ".join(chunk)
          chunk, size = [], 0
        chunk.append(word)
        size += word_bytes
      if chunk:
        yield " ".join(chunk)


def train_sentencepiece(
  texts: Iterable[str],
  model_prefix: str,
  *,
  vocab_size: int = 8000,
  seed: int = 0,
  character_coverage: float = 1.0,
  input_sentence_size: int = 0,
  max_sentence_bytes: int = 4000,
  num_threads: int = 16,
) -> str:
  """Trains a unigram sentencepiece model (T5 ids) on `texts`.

  Deterministic: the same texts and arguments give a byte-identical model
  (the random generator is seeded and the thread count is fixed, not taken
  from the machine). Digits are split, so a number is several pieces.
  `vocab_size` is a soft limit: a tiny corpus gives a smaller vocabulary
  instead of an error.

  Args:
    texts: training text (the caller picks: document bodies, train queries).
    model_prefix: the model is written to `model_prefix + ".model"`.
    vocab_size: number of pieces, including PAD, EOS and UNK.
    seed: seeds sentencepiece's sampling when `input_sentence_size` > 0.
    character_coverage: fraction of characters the model covers.
    input_sentence_size: if > 0, train on this many sampled sentences.
    max_sentence_bytes: longer lines are cut at words into several sentences.
    num_threads: training threads (part of what makes the model reproducible).

  Returns:
    The path of the written model file.
  """
  spm.set_random_generator_seed(seed)
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=_training_sentences(texts, max_sentence_bytes),
    model_writer=model,
    model_type="unigram",
    vocab_size=vocab_size,
    hard_vocab_limit=False,
    character_coverage=character_coverage,
    split_digits=True,
    pad_id=vocab_lib.PAD_ID,
    eos_id=vocab_lib.EOS_ID,
    unk_id=vocab_lib.UNK_ID,
    bos_id=-1,
    input_sentence_size=input_sentence_size,
    shuffle_input_sentence=True,
    max_sentence_length=max_sentence_bytes + 64,
    num_threads=num_threads,
    minloglevel=2,
  )
  path = model_prefix + ".model"
  atomic_io.write_bytes(path, model.getvalue())
  return path
