"""ChatGLM2's tokenizer without its remote code: sentencepiece, five special tokens and the `[Round k]` prompt.

The paper fine-tunes ChatGLM2-6B (Sec. 3). Its hub tokenizer is Python that ships with the checkpoint and no longer
builds under transformers 5; this class reproduces what it does, over the same `tokenizer.model`:

- ids 0..n-1 are the sentencepiece pieces; ChatGLM2's own tokens follow them: `[MASK]`=n, `[gMASK]`=n+1,
  `[sMASK]`=n+2, `sop`=n+3, `eop`=n+4. End of sequence is sentencepiece's `</s>`; padding is `<unk>` (id 0), on
  the left, so a batch of prompts ends where generation starts.
- every text encoded with special tokens starts `[gMASK] sop`, the prefix ChatGLM2 was trained behind.
- text is sentencepiece's alone: the five tokens are never parsed out of text (so "philosophy" is not split at
  "sop"); their ids are only ever added, by `build_inputs_with_special_tokens`.
- the chat format is ChatGLM2's `[Round 1]\\n\\n问：…\\n\\n答：`, as a chat template that writes no special token:
  ChatGLM2 encodes that text with the usual prefix, hence `chat_template_adds_special_tokens = False`.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from sentencepiece import SentencePieceProcessor
from transformers import PreTrainedTokenizer

SPECIAL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")  # ChatGLM2's order: their ids follow the pieces
PREFIX_TOKENS = ("[gMASK]", "sop")

# ChatGLM2's build_prompt: "[Round k]\n\n问：{query}\n\n答：{response}\n\n" per turn. The "答：" opening an
# answer belongs to the assistant's turn, so a conversation ending on a user turn gets it from add_generation_prompt.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(round=0) -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- set ns.round = ns.round + 1 -%}"
    "{{ '[Round ' ~ ns.round ~ ']\n\n问：' ~ message['content'] ~ '\n\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ '答：' ~ message['content'] ~ '\n\n' }}"
    "{%- else -%}"
    "{{ raise_exception('ChatGLM2 has user and assistant turns only, not ' ~ message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '答：' }}{%- endif -%}"
)


class ChatGLM2Tokenizer(PreTrainedTokenizer):
    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask"]
    chat_template_adds_special_tokens = False  # the template's text still takes the [gMASK] sop prefix

    def __init__(self, vocab_file: str | Path, padding_side: str = "left", **kwargs):
        # transformers' __init__ already asks for the vocabulary, so the model must be loaded before it runs.
        self.vocab_file = str(vocab_file)
        self.sp = SentencePieceProcessor(model_file=self.vocab_file)
        pieces = self.sp.get_piece_size()
        self.special_ids = {token: pieces + i for i, token in enumerate(SPECIAL_TOKENS)}
        self.special_tokens_by_id = {i: token for token, i in self.special_ids.items()}
        kwargs.setdefault("eos_token", self.sp.id_to_piece(self.sp.eos_id()))
        kwargs.setdefault("unk_token", self.sp.id_to_piece(self.sp.unk_id()))
        kwargs.setdefault("pad_token", self.sp.id_to_piece(self.sp.unk_id()))  # ChatGLM2 pads with <unk>
        kwargs.setdefault("chat_template", CHAT_TEMPLATE)
        # transformers would split </s> and <unk> out of text as well; ChatGLM2's text is sentencepiece's only.
        kwargs.setdefault("split_special_tokens", True)
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(padding_side=padding_side, **kwargs)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size() + len(SPECIAL_TOKENS)

    @property
    def prefix_ids(self) -> list[int]:
        return [self.special_ids[token] for token in PREFIX_TOKENS]

    def get_vocab(self) -> dict[str, int]:
        # A special token spelled like a piece ("sop" may be one) leaves the name to the piece: text is
        # sentencepiece's. Its id is still in `special_ids`.
        pieces = {self.sp.id_to_piece(i): i for i in range(self.sp.get_piece_size())}
        return {**self.special_ids, **pieces}

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return self.sp.encode(text, out_type=str)

    def _convert_token_to_id(self, token: str) -> int:
        piece_id = self.sp.piece_to_id(token)
        if piece_id != self.sp.unk_id() or token == self.unk_token:
            return piece_id  # a piece of the text: the id sentencepiece gives it, whatever it is spelled like
        return self.special_ids.get(token, self.sp.unk_id())

    def _convert_id_to_token(self, index: int) -> str:
        if index in self.special_tokens_by_id:
            return self.special_tokens_by_id[index]
        return self.sp.id_to_piece(index) if 0 <= index < self.sp.get_piece_size() else self.unk_token

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self._text([self._convert_token_to_id(token) for token in tokens])

    def _decode(self, token_ids, skip_special_tokens: bool = False, **kwargs) -> str:
        ids = [token_ids] if isinstance(token_ids, int) else [int(i) for i in token_ids]
        if skip_special_tokens:
            skipped = set(self.special_ids.values()) | set(self.all_special_ids)
            ids = [i for i in ids if i not in skipped]
        return self._text(ids)

    def _text(self, ids: list[int]) -> str:
        """Sentencepiece's text of the pieces, special tokens by name; ids past the vocabulary say nothing
        (ChatGLM2-6B's embedding has 65024 rows for 64794 ids: the rest are padding a model may still emit)."""
        named = {**self.special_tokens_by_id, **{i: self.sp.id_to_piece(i) for i in self.all_special_ids}}
        text, run = [], []
        for index in ids:
            if index in named:  # sentencepiece would write <unk> as " ⁇ " and </s> as nothing
                text += [self.sp.decode(run), named[index]]
                run = []
            elif 0 <= index < self.sp.get_piece_size():
                run.append(index)
        return "".join(text) + self.sp.decode(run)

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None):
        if token_ids_1 is None:
            return self.prefix_ids + token_ids_0
        return self.prefix_ids + token_ids_0 + token_ids_1 + [self.eos_token_id]  # a pair, as ChatGLM2 joins one

    def get_special_tokens_mask(self, token_ids_0: list[int], token_ids_1: list[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:
        if already_has_special_tokens:
            special = set(self.special_ids.values()) | set(self.all_special_ids)
            return [int(i in special) for i in token_ids_0 + (token_ids_1 or [])]
        mask = [1] * len(PREFIX_TOKENS) + [0] * len(token_ids_0)
        return mask if token_ids_1 is None else mask + [0] * len(token_ids_1) + [1]

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        name = f"{filename_prefix}-tokenizer.model" if filename_prefix else "tokenizer.model"
        target = Path(save_directory) / name if Path(save_directory).is_dir() else Path(save_directory)
        if target.resolve() != Path(self.vocab_file).resolve():
            shutil.copyfile(self.vocab_file, target)
        return (str(target),)
