"""Greedy answers on the test split, batched (Sec. 3; book chapters 6-8).

Prompts are built exactly as in training (`data.build_prompt`), padded on the left so every row's last
position is its own prompt's end, and decoded greedily up to a per-profile number of new tokens. The
predictions are then scored by `metrics.score` with the paper's ROUGE/BLEU convention.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..data import encode_prompt, pad_token_id
from ..training.distributed import World, current_world, gather_objects


@torch.no_grad()
def generate_answers(model, tokenizer, records: list[dict], max_new_tokens: int = 64, batch_size: int = 8,
                     progress: bool = True, shard: bool = False) -> list[str]:
    """The model's greedy answer to each record's prompt, in order.

    `shard` under torchrun: rank r of N answers batches r, r + N, … and every rank returns all the answers, in
    order. The batches are the ones a single process makes, so the answers are the same.
    """
    if max_new_tokens <= 0 or batch_size <= 0:
        raise ValueError(f"max_new_tokens and batch_size must be positive, got {max_new_tokens}, {batch_size}")
    pad_id = pad_token_id(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    world = current_world() if shard else World()
    answers = {}
    starts = range(0, len(records), batch_size)[world.rank :: world.size]
    for start in tqdm(starts, desc="generating", disable=not progress):
        prompts = [encode_prompt(record, tokenizer) for record in records[start : start + batch_size]]
        width = max(len(ids) for ids in prompts)
        input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in prompts], device=device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=device)
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                do_sample=False, use_cache=True, pad_token_id=pad_id,
                                eos_token_id=tokenizer.eos_token_id)
        for index, row in enumerate(output, start=start):
            answers[index] = tokenizer.decode(row[width:], skip_special_tokens=True).strip()
    model.train(was_training)
    shares = gather_objects(answers) if shard else [answers]  # a collective: every rank calls it, or none
    everyone = {index: answer for share in shares for index, answer in share.items()}
    return [everyone[index] for index in range(len(records))]
